"""Which image a launched task runs: the user's own dream-job image, or the cloud's default image plus `setup`.

`sky.yaml` names no image: no public one exists. A user who built and pushed theirs (`make image
REGISTRY=ghcr.io/you`, see docs/image.md) sets `DREAM_JOB_IMAGE=ghcr.io/you/dream-job:<version>` in the
launching shell, or writes `resources.image_id` into their copy of the template; the derived task
file then carries it. Without one, the cloud's default image runs and sky.yaml's `setup` installs
the project from the synced workdir. Both paths run the same `dream-job task`.
"""

from __future__ import annotations

import copy
from typing import Any

IMAGE_ENV = "DREAM_JOB_IMAGE"
DOCKER_PREFIX = "docker:"


def image_id(image: str) -> str:
    """Return SkyPilot's `image_id` for an image reference: `docker:<registry>/<name>:<tag>`."""
    image = image.strip()
    return image if image.startswith(DOCKER_PREFIX) else DOCKER_PREFIX + image


def with_image(template: dict[str, Any], image: str | None) -> dict[str, Any]:
    """Return `template` with `resources.image_id` set to `image` (unchanged when `image` is empty)."""
    if not image or not image.strip():
        return template
    body = copy.deepcopy(template)
    body.setdefault("resources", {})["image_id"] = image_id(image)
    return body


def describe_image(image: str | None) -> str:
    """Return the plan's `image` row: which image runs and what `setup` does there."""
    if image:
        return f"`{image}` (dependencies baked in; `setup` installs nothing)"
    return (f"none: the cloud's own, and `setup` installs the project (yours: `make image`, then `{IMAGE_ENV}`; "
            "docs/image.md)")
