"""Container preflight: check, before any work, that this machine and environment can run the job.

Checks, in order, each failing with one sentence and its fix: a GPU when the spec asks for CUDA;
the secrets the destinations need; every destination (known scheme, credentials, and a tiny
write and delete); the base model (a local folder with `config.json`, in the local cache, or
reachable on the Hub within ~30 s); the GPU memory plan; free disk for the base model,
checkpoints and export. Nothing is written to the run dir.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from dream_job.credentials import AWS_KEYS, required_secrets
from dream_job.errors import InputError, SpecError, TransientError
from dream_job.rundir import CHECKPOINTS_DIR, EXPORT_DIR
from dream_job.spec import JobSpec
from dream_job.stopping import pause_point

logger = logging.getLogger(__name__)


def preflight(spec: JobSpec) -> dict[str, Any]:
    """Check that this machine can run the job; return what was found.

    Secrets are checked for presence only and never logged.

    Returns:
        `{"gpus", "free_gib", "needed_gib", "method", "destinations"}`; `method` is the one to
        train with (another one only under `train.on_memory_mismatch: switch`).

    Raises:
        InputError, SpecError, TransientError: What is missing, in one sentence, with the fix (exit 3 for an
            unreachable network).
    """
    pause_point("preflight")
    gpus = _num_gpus()
    if spec.train.device == "cuda" and gpus == 0:
        raise SpecError("`train.device` is `cuda` but this machine has no visible GPU",
                        key="train.device", value="cuda",
                        hint="launch on a GPU offer (see `dream-job estimate`) or `--set train.device=cpu`")
    if spec.eval.suites:
        from dream_job.eval.processes import eval_processes

        eval_processes(spec)  # `eval.processes` beyond the GPUs here fails now, not after training
    _check_secrets(spec)
    run_dir = spec.run_dir()
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"run dir `{run_dir}` is a file, not a folder", key="artifacts.run_dir", path=run_dir,
                         hint="point `artifacts.run_dir` at a folder (or remove the file)")
    _check_destinations(spec)
    _check_base_model(spec)
    method = check_gpu_memory(spec, gpus) if gpus else spec.train.method
    existing = next(p for p in (run_dir.absolute(), *run_dir.absolute().parents) if p.exists())
    free_gib = _free_gib(existing)
    needed_gib = _disk_needed_gib(spec)
    if free_gib < needed_gib:
        raise InputError(
            f"only {free_gib:.0f} GiB free under `{existing}`, the job needs about {needed_gib:.0f} GiB "
            "(base model, checkpoints, export)", path=existing,
            hint="launch with a larger `disk_size` in sky.yaml, or lower `train.keep_checkpoints`",
        )
    return {"gpus": gpus, "free_gib": round(free_gib, 1), "needed_gib": round(needed_gib, 1), "method": method,
            "destinations": len(spec.artifacts.destinations)}


def _check_secrets(spec: JobSpec) -> None:
    """Name every secret the destinations need that this machine lacks (`dream_job.credentials`)."""
    have_aws = None  # asked once, and only when an S3 key is missing from the environment
    missing: dict[str, str] = {}
    for name, why in required_secrets(spec.artifacts.destinations).items():
        if os.environ.get(name):
            continue
        if name in AWS_KEYS:  # in the container, any credential boto3 finds serves (a profile, a role)
            have_aws = _have_aws_credentials() if have_aws is None else have_aws
            if have_aws:
                continue
        missing[name] = why
    if missing:
        raise InputError(
            f"missing secret {', '.join(f'`{name}` ({why})' for name, why in missing.items())} in the environment",
            hint=f"pass them at launch: `sky launch {' '.join(f'--secret {name}' for name in missing)} sky.yaml`",
        )


def _check_destinations(spec: JobSpec) -> None:
    """Probe every destination with a tiny write and delete, so a bad one fails before training."""
    if not spec.artifacts.destinations:
        return
    from dream_job.artifacts import check_destination

    for destination in spec.artifacts.destinations:
        check_destination(destination, s3_endpoint_url=spec.artifacts.s3_endpoint_url)


def _check_base_model(spec: JobSpec) -> None:
    """The base model must be a local folder with `config.json`, cached, or reachable on the Hub."""
    from dream_job.data.source import check_hub_repo, hub_offline
    from dream_job.data.tokenizer import is_local

    base = spec.model.base
    if is_local(base):
        folder = Path(base).expanduser()
        if not (folder / "config.json").is_file():
            raise InputError(
                f"`model.base` points to `{base}`, which is not a model folder with `config.json`", key="model.base",
                path=folder,
                hint="set `model.base` to a Dream folder or a hub id such as `Dream-org/Dream-v0-Base-7B`",
            )
        return
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(base, "config.json", revision=spec.model.revision)
    if isinstance(cached, str):
        return
    if hub_offline():
        raise TransientError(  # exit 3: the same command works where the network is allowed
            f"`model.base` `{base}` is not in the local Hugging Face cache and `HF_HUB_OFFLINE` is set, so it "
            "cannot be downloaded", key="model.base", value=base,
            hint="unset `HF_HUB_OFFLINE` on a machine with network, or set `model.base` to a local folder",
        )
    check_hub_repo(base, spec.model.revision, repo_type="model", key="model.base")


def _num_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpu_memory(spec: JobSpec, gpus: int) -> str:
    """Check the plan against the GPUs this machine has; return the method to train with.

    The GPU's name and memory are what CUDA reports for device 0; under
    `train.on_memory_mismatch: switch` the first of `budget.fallback_methods` that fits is returned.

    Raises:
        SpecError: The method does not fit and `train.on_memory_mismatch` is `refuse`, or none fits.
    """
    import torch

    from budget import fallback_methods, plan_memory
    from budget.tokens import PROFILE_DATASET

    # Peak memory depends on `data.max_length`, not on the rows; before the first prep a local
    # dataset has no length profile, so the shipped s1K-1.1 one stands in (it would raise otherwise).
    if spec.data.dataset != PROFILE_DATASET:
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"dataset": PROFILE_DATASET})})
    name = torch.cuda.get_device_name(0)
    have_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    method = spec.train.method
    need_gib = plan_memory(spec, method, gpus).peak_gib
    if need_gib <= have_gib:
        return method
    fitting = [m for m in fallback_methods(method) if plan_memory(spec, m, gpus).peak_gib <= have_gib]
    where = f"this machine's {gpus}x {name} ({have_gib:.0f} GiB each)"
    if spec.train.on_memory_mismatch == "switch" and fitting:
        logger.warning("`train.method` `%s` needs about %.0f GiB per GPU on %s: training with `%s` instead",
                       method, need_gib, where, fitting[0])
        return fitting[0]
    raise SpecError(
        f"`train.method` `{method}` needs about {need_gib:.0f} GiB per GPU on {where}",
        key="train.method", value=method,
        hint=(f"`--set train.method={fitting[0]}` fits (or `--set train.on_memory_mismatch=switch`); "
              if fitting else "") + "`dream-job estimate` lists the GPUs that fit",
    )


def _have_aws_credentials() -> bool:
    try:
        import boto3
        from botocore.exceptions import ProfileNotFound
    except ImportError:
        return bool(os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"))
    try:
        return boto3.Session().get_credentials() is not None
    except ProfileNotFound:
        raise InputError(
            f"`AWS_PROFILE` names the profile `{os.environ.get('AWS_PROFILE', '')}`, which is not in the AWS config "
            "files", key="AWS_PROFILE",
            hint="unset `AWS_PROFILE`, or pass `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` instead",
        ) from None


def _free_gib(path: Path) -> float:
    import shutil

    return shutil.disk_usage(path).free / 2**30


def _disk_needed_gib(spec: JobSpec) -> float:
    """Disk still needed (`budget.disk_need_bytes`) less what the run's checkpoints and export already take, GiB."""
    from budget import disk_need_bytes
    from budget.shape import DREAM_7B, model_shape
    from dream_job.data.tokenizer import is_local
    from dream_job.errors import BudgetError

    try:
        shape = model_shape(spec)
    except BudgetError:  # a hub model the estimate does not know: Dream 7B's size until its config is read
        shape = DREAM_7B
    downloads_base = spec.model.init == "pretrained" and not is_local(spec.model.base)
    # A resumed run's checkpoints and export already take their share of the need (seen on the 7B
    # rehearsal: with one 31 GB checkpoint on disk the resume was refused for 89 GiB against 71 free).
    run_dir = spec.run_dir()
    present = sum(p.stat().st_size for folder in (run_dir / CHECKPOINTS_DIR, run_dir / EXPORT_DIR)
                  if folder.is_dir() for p in folder.rglob("*") if p.is_file())
    return max(disk_need_bytes(spec, shape, downloads_base=downloads_base) - present, 0) / 2**30 + 1
