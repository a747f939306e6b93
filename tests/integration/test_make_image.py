"""`make image REGISTRY=...`: the build and push it runs, and its refusal without a registry.

No image registry is reachable from CI, so `make -n` shows the commands and the Docker build
itself is `tests/integration/test_image.py`'s (slow); the missing-registry case runs for real.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib

import pytest

from dream_job import __version__
from tests.conftest import REPO


def _make(*args: str, dry: bool) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        pytest.skip("no `make` on PATH")
    return subprocess.run(["make", *(["-n"] if dry else []), "image", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)


def test_make_image_builds_the_dockerfile_and_pushes_the_versioned_tag() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert version == __version__
    lines = _make("REGISTRY=ghcr.io/you", "BUILD_ARGS=--build-arg BASE_IMAGE=local/base", dry=True).stdout
    assert (f"DOCKER_BUILDKIT=1 docker build --platform linux/amd64 --build-arg BASE_IMAGE=local/base "
            f"-t ghcr.io/you/dream-job:{version} .") in lines.splitlines()
    assert f"docker push ghcr.io/you/dream-job:{version}" in lines.splitlines()
    assert f"export DREAM_JOB_IMAGE=ghcr.io/you/dream-job:{version}" in lines


def test_make_image_without_a_registry_is_refused() -> None:
    result = _make(dry=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no registry to push to: pass one, e.g. `make image "
                                    "REGISTRY=ghcr.io/you`\n")
