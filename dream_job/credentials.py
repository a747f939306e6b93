"""Which secrets a job needs: one rule for the laptop's launch check and the container's preflight.

A `hf://` destination needs `HF_TOKEN`; an `s3://` one needs AWS keys. The launcher passes them to
the job by name (`--secret NAME`), so on the laptop they must be in the environment; inside the
container, any credential boto3 finds (keys, a profile, an instance role) serves for S3.
Values are never read here beyond presence, and never shown.
"""

from __future__ import annotations

from collections.abc import Iterable

HF_TOKEN = "HF_TOKEN"
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def required_secrets(destinations: Iterable[str], extra: Iterable[str] = ()) -> dict[str, str]:
    """Return {secret name: why} the job cannot run without: its destinations' and the `extra` names.

    Args:
        destinations: `artifacts.destinations` of the spec.
        extra: More names the user asked for (`dream-job launch --secret NAME`).
    """
    needed = {name: "asked for with `--secret`" for name in extra}
    for destination in destinations:
        if destination.startswith("hf://"):
            needed.setdefault(HF_TOKEN, f"for the `{destination}` destination")
        if destination.startswith("s3://"):
            for name in AWS_KEYS:
                needed.setdefault(name, f"for the `{destination}` destination")
    return needed
