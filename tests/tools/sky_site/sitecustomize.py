"""Make the seeded clouds pass SkyPilot's credential check, in every process of the sky venv.

On `PYTHONPATH` of the SkyPilot CLI (and so of the local API server it starts, whose request
workers inherit the environment), for `tests/integration/test_sky_server.py`. When
`DREAM_JOB_TEST_SKY_CLOUDS` names clouds (`aws,lambda,runpod,vast`), `Cloud.check_credentials`
answers "enabled" for them without calling the clouds: the server's own `sky check` (it runs one
at boot and whenever its cache is empty) then records them as enabled, and everything after it,
validation, the optimizer, storage checks, runs unpatched. Other clouds keep the real check.
Nothing happens (and `sky` is not imported early) when the variable is unset.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType
from typing import Any

CLOUDS_ENV = "DREAM_JOB_TEST_SKY_CLOUDS"
_TARGET = "sky.clouds.cloud"


def _patch(module: ModuleType, names: frozenset[str]) -> None:
    cloud_cls = module.Cloud
    original = cloud_cls.check_credentials.__func__

    def check_credentials(cls: Any, cloud_capability: Any) -> tuple[bool, Any]:
        if cls.canonical_name() not in names:
            return original(cls, cloud_capability)
        # A capability the cloud has no check for is unsupported (the base raises NotSupportedError).
        check = f"_check_{cloud_capability.value}_credentials"
        if getattr(cls, check).__func__ is getattr(cloud_cls, check).__func__:
            return original(cls, cloud_capability)
        return True, None

    cloud_cls.check_credentials = classmethod(check_credentials)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patch `sky.clouds.cloud` right after it is executed, whoever imports it first."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader, names = spec.loader, self.names
        exec_module = loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            _patch(module, names)

        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


if _names := frozenset(n.strip().lower() for n in os.environ.get(CLOUDS_ENV, "").split(",") if n.strip()):
    sys.meta_path.insert(0, _PatchOnImport(_names))
