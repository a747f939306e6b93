"""Write `image/requirements.txt`: the `container` extra's resolved versions, minus torch.

The pins come from an environment where the extra is installed and tested (the dev `.venv`,
set up by `make setup`). The script walks the dependency graph from `dream-job[container]`
using the installed distributions' metadata (markers evaluated for that environment, extras
followed), and stops at `torch`: the CUDA base image brings torch and its own dependencies
(nvidia-*, triton, sympy's torch-only users, ...). Dev and test packages are never reached, so
they are not pinned. Packages that torch shares with others (filelock, fsspec, ...) are pinned.

Usage, from the repository root:

    .venv/bin/python tests/tools/freeze_image_requirements.py > image/requirements.txt
    .venv/bin/python tests/tools/freeze_image_requirements.py --check   # exit 1 when stale
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "image" / "requirements.txt"
EXTRA = "container"
# The base image's torch stack: never pinned, never walked into.
SKIP = {"torch", "triton", "dream-job"}
SKIP_PREFIXES = ("nvidia-",)
HEADER = """\
# Pinned dependencies of the image: `dream-job[{extra}]` minus torch (the CUDA base image
# brings torch, triton and nvidia-*). Generated from the tested dev environment with
#   .venv/bin/python tests/tools/freeze_image_requirements.py > image/requirements.txt
# ({python}, {platform}); do not edit by hand.
"""


def _skipped(name: str) -> bool:
    return name in SKIP or name.startswith(SKIP_PREFIXES)


def _requirements_of(dist: metadata.Distribution, extras: set[str]) -> list[Requirement]:
    """Return `dist`'s requirements that apply here with `extras` requested."""
    env = default_environment()
    wanted: list[Requirement] = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in extras | {""}):
            wanted.append(req)
    return wanted


def resolve_pins() -> dict[str, str]:
    """Return `{distribution name: installed version}` for the container extra's closure, minus torch."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    roots = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"][EXTRA]]
    installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    pins: dict[str, str] = {}
    todo: list[Requirement] = list(roots)
    seen_extras: dict[str, set[str]] = {}
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if _skipped(name):
            continue
        extras = {canonicalize_name(e) for e in req.extras}
        if name in seen_extras and extras <= seen_extras[name]:
            continue
        seen_extras.setdefault(name, set()).update(extras)
        dist = installed.get(name)
        if dist is None:
            raise SystemExit(f"error: `{req}` is required but not installed in {sys.prefix}\n\n"
                             "hint: run `make setup` first")
        if not req.specifier.contains(dist.version, prereleases=True):
            raise SystemExit(f"error: installed `{name}=={dist.version}` does not satisfy `{req}`")
        pins[dist.metadata["Name"]] = dist.version
        todo.extend(_requirements_of(dist, seen_extras[name]))
    return pins


def render(pins: dict[str, str]) -> str:
    """Return the requirements file text: the header, then one `name==version` per line, sorted."""
    env = default_environment()
    header = HEADER.format(extra=EXTRA, python=f"Python {env['python_full_version']}",
                           platform=env["sys_platform"] + "/" + env["platform_machine"])
    lines = [f"{name}=={version}\n" for name, version in sorted(pins.items(), key=lambda kv: kv[0].lower())]
    return header + "".join(lines)


def main() -> None:
    """Print the pins, or with `--check` compare them with the committed file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when image/requirements.txt differs")
    args = parser.parse_args()
    text = render(resolve_pins())
    if not args.check:
        sys.stdout.write(text)
        return
    if REQUIREMENTS.read_text(encoding="utf-8") != text:
        sys.stderr.write(f"error: `{REQUIREMENTS.relative_to(REPO)}` is stale\n\nhint: run "
                         "`.venv/bin/python tests/tools/freeze_image_requirements.py > image/requirements.txt`\n")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
