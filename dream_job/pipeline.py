"""`dream-job run`: preflight -> prep -> train -> eval -> publish, resumable stage by stage.

Each finished stage writes `<run_dir>/stages/<stage>.done` (JSON: the hash of its inputs, when
it finished, a short summary). A re-run skips a stage whose marker holds the same inputs hash
and redoes it (and everything after it) when its inputs changed; training resumes from its
newest checkpoint either way. Preflight always runs: after a spot recovery the machine is new.
The run id is `DREAM_JOB_RUN_ID` (set by `dream-job launch`), else `SKYPILOT_TASK_ID` when set
(stable across recoveries of a managed job), else the job name; it is recorded in `<run_dir>/run.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dream_job.errors import DreamJobError
from dream_job.files import write_text_atomically
from dream_job.spec import JobSpec

logger = logging.getLogger(__name__)

STAGES = ("preflight", "prep", "train", "eval", "publish")


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one stage in this invocation."""

    stage: str
    skipped: bool
    summary: dict[str, Any]


def run_id(spec: JobSpec) -> str:
    """Return the run id: `DREAM_JOB_RUN_ID` (set by `dream-job launch`), else `SKYPILOT_TASK_ID` when set
    (same across recoveries), else the job name."""
    return os.environ.get("DREAM_JOB_RUN_ID") or os.environ.get("SKYPILOT_TASK_ID") or spec.name


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def marker_path(run_dir: Path, stage: str) -> Path:
    """Return the marker file of `stage`."""
    return run_dir / "stages" / f"{stage}.done"


def read_marker(run_dir: Path, stage: str) -> dict[str, Any] | None:
    """Return a stage's marker, or None when the stage has not finished."""
    path = marker_path(run_dir, stage)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_marker(run_dir: Path, stage: str, inputs_hash: str, summary: dict[str, Any]) -> None:
    """Record that `stage` finished with these inputs (atomic: temp file, then rename)."""
    body = {"stage": stage, "inputs_hash": inputs_hash, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
            time.gmtime()), "summary": summary}
    write_text_atomically(marker_path(run_dir, stage), json.dumps(body, indent=2) + "\n")


def _num_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def preflight(spec: JobSpec) -> dict[str, Any]:
    """Check, before any download, that this machine and environment can run the job.

    Checks: a GPU when the spec asks for CUDA, free disk for the model and checkpoints, and the
    secrets the destinations need (`HF_TOKEN` for `hf://`, AWS credentials for `s3://`).
    Secrets are checked for presence only and never logged.

    Raises:
        DreamJobError: What is missing, in one sentence, with the fix.
    """
    gpus = _num_gpus()
    if spec.train.device == "cuda" and gpus == 0:
        raise DreamJobError("`train.device` is `cuda` but this machine has no visible GPU",
                            hint="launch on a GPU offer (see `dream-job estimate`) or `--set train.device=cpu`")
    missing = []
    if any(d.startswith("hf://") for d in spec.artifacts.destinations) and not os.environ.get("HF_TOKEN"):
        missing.append("`HF_TOKEN` (for the `hf://` destination)")
    if any(d.startswith("s3://") for d in spec.artifacts.destinations) and not _have_aws_credentials():
        missing.append("AWS credentials `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (for the `s3://` destination)")
    if missing:
        raise DreamJobError(
            f"missing secret {' and '.join(missing)} in the environment",
            hint="pass them at launch: `sky launch --secret HF_TOKEN --secret AWS_ACCESS_KEY_ID "
            "--secret AWS_SECRET_ACCESS_KEY sky.yaml`",
        )
    method = _check_gpu_memory(spec, gpus) if gpus else spec.train.method
    run_dir = spec.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    free_gib = _free_gib(run_dir)
    needed_gib = _disk_needed_gib(spec)
    if free_gib < needed_gib:
        raise DreamJobError(
            f"only {free_gib:.0f} GiB free under `{run_dir}`, the job needs about {needed_gib:.0f} GiB "
            "(base model, checkpoints, export)",
            hint="launch with a larger `disk_size` in sky.yaml, or lower `train.keep_checkpoints`",
        )
    return {"gpus": gpus, "free_gib": round(free_gib, 1), "needed_gib": round(needed_gib, 1), "method": method}


# Fallbacks when the planned method does not fit, the same training recipe first.
_FALLBACKS = {"full": ["full_offload", "full_8bit", "lora"], "full_offload": ["full_8bit", "lora"],
              "full_8bit": ["lora"], "lora": []}


def _check_gpu_memory(spec: JobSpec, gpus: int) -> str:
    """Check the plan against the GPUs this machine has; return the method to train with.

    Raises:
        DreamJobError: The method does not fit and `train.on_memory_mismatch` is `refuse`, or none fits.
    """
    import torch

    from budget import plan_memory

    name = torch.cuda.get_device_name(0)
    have_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    method = spec.train.method
    need_gib = plan_memory(spec, method, gpus).peak_gib
    if need_gib <= have_gib:
        return method
    fitting = [m for m in _FALLBACKS[method] if plan_memory(spec, m, gpus).peak_gib <= have_gib]
    where = f"this machine's {gpus}x {name} ({have_gib:.0f} GiB each)"
    if spec.train.on_memory_mismatch == "switch" and fitting:
        logger.warning("`train.method` `%s` needs about %.0f GiB per GPU on %s: training with `%s` instead",
                       method, need_gib, where, fitting[0])
        return fitting[0]
    raise DreamJobError(
        f"`train.method` `{method}` needs about {need_gib:.0f} GiB per GPU on {where}",
        hint=(f"`--set train.method={fitting[0]}` fits (or `--set train.on_memory_mismatch=switch`); "
              if fitting else "") + "`dream-job estimate` lists the GPUs that fit",
    )


def _have_aws_credentials() -> bool:
    try:
        import boto3
    except ImportError:
        return bool(os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"))
    return boto3.Session().get_credentials() is not None


def _free_gib(path: Path) -> float:
    import shutil

    return shutil.disk_usage(path).free / 2**30


def _disk_needed_gib(spec: JobSpec) -> float:
    """Rough disk need: base weights + the export + kept checkpoints (weights and optimizer state)."""
    from dream_job.data.tokenizer import is_local
    from dream_job.model.dream import DreamConfig
    from dream_job.train.build import resolve_base_dir

    if is_local(spec.model.base):
        params = DreamConfig.from_pretrained_dir(resolve_base_dir(spec)).num_parameters()
    else:
        params = 7_615_616_512  # Dream-v0-Base-7B (dream.md §4); its config is not downloaded yet
    bytes_per_checkpoint = {"full": 16, "full_offload": 16, "full_8bit": 4.2, "lora": 0.2}[spec.train.method] * params
    weights = 2 * params
    return (weights * 2 + bytes_per_checkpoint * (spec.train.keep_checkpoints + 1)) / 2**30 + 1


def _train_stage(spec: JobSpec, spec_path: Path, overrides: list[str]) -> dict[str, Any]:
    """Train in this process on one device, or under torchrun on every GPU of every node."""
    gpus = _num_gpus() if spec.train.device != "cpu" else 0
    nodes = int(os.environ.get("SKYPILOT_NUM_NODES", "1"))
    if gpus <= 1 and nodes == 1:
        from dream_job.train.loop import train

        result = train(spec)
        return {"steps": result.steps, "final_loss": result.final_loss, "export_dir": str(result.export_dir)}
    ips = os.environ.get("SKYPILOT_NODE_IPS", "127.0.0.1").split()
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc_per_node={gpus}",
        f"--node_rank={os.environ.get('SKYPILOT_NODE_RANK', '0')}", f"--master_addr={ips[0]}",
        "--master_port=8008", "-m", "dream_job", "train", str(spec_path),
        *(arg for override in overrides for arg in ("--set", override)),
    ]
    logger.info("training on %d node(s) x %d GPU(s): %s", nodes, gpus, " ".join(command))
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise DreamJobError(f"training under torchrun exited with code {completed.returncode}",
                            hint="see the log above; run the same command again to resume",
                            exit_code=completed.returncode if completed.returncode in (1, 3) else 1)
    return {"torchrun": True, "export_dir": str(spec.run_dir() / "export")}


def _eval_stage(spec: JobSpec) -> dict[str, Any]:
    from dream_job.eval.report import write_report
    from dream_job.eval.run import evaluate

    run_dir = spec.run_dir()
    summaries = {}
    for label in spec.eval.models:
        model_dir = run_dir / "export" if label == "final" else None
        summaries[label] = evaluate(spec, model_label=label, model_dir=model_dir)
    write_report(run_dir)
    return {"labels": list(summaries)}


def _publish_stage(spec: JobSpec, force: bool) -> dict[str, Any]:
    """Publish the export (with the model card for `hf://`) to every destination."""
    import yaml

    from dream_job.artifacts import S3Settings, model_card_inputs, publish_folder

    run_dir = spec.run_dir()
    card = model_card_inputs(run_dir, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    published = []
    for destination in spec.artifacts.destinations:
        s3 = S3Settings(endpoint_url=spec.artifacts.s3_endpoint_url) if destination.startswith("s3://") else None
        result = publish_folder(run_dir / "export", destination, run_id=run_id(spec), force=force, s3=s3,
                                model_card=card)
        logger.info("published %d files to %s (%d uploaded, %d already there)", result.num_files, destination,
                    result.num_uploaded, result.num_skipped)
        published.append(destination)
    return {"destinations": published}


def run_pipeline(
    spec: JobSpec,
    *,
    spec_path: Path,
    overrides: list[str],
    force: bool = False,
    on_stage: Callable[[StageOutcome], None] | None = None,
) -> list[StageOutcome]:
    """Run every stage of the job, skipping those already finished with the same inputs.

    Args:
        spec: The validated spec.
        spec_path, overrides: How the spec was given (passed on to torchrun for multi-GPU training).
        force: Publish even where the destination holds another run.
        on_stage: Called after each stage (for progress output).

    Returns:
        One outcome per stage, in order.

    Raises:
        DreamJobError: The stage that failed says why; earlier stages' results are kept.
    """
    from dream_job.data.prep import prepare_data

    run_dir = spec.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"run_id": run_id(spec), "job": spec.name}) + "\n")
    is_head = os.environ.get("SKYPILOT_NODE_RANK", "0") == "0"
    outcomes: list[StageOutcome] = []
    previous = ""

    def stage(name: str, inputs: Any, work: Callable[[], dict[str, Any]], *, always: bool = False) -> None:
        nonlocal previous
        inputs_hash = _hash(name, inputs, previous)
        marker = read_marker(run_dir, name)
        if not always and marker is not None and marker["inputs_hash"] == inputs_hash:
            outcome = StageOutcome(name, True, marker["summary"])
        else:
            logger.info("stage %s: running", name)
            summary = work()
            write_marker(run_dir, name, inputs_hash, summary)
            outcome = StageOutcome(name, False, summary)
        previous = inputs_hash
        outcomes.append(outcome)
        if on_stage is not None:
            on_stage(outcome)

    stage("preflight", spec.model_dump(), lambda: preflight(spec), always=True)
    previous = ""  # preflight results do not change what later stages compute
    method = outcomes[-1].summary["method"]
    if method != spec.train.method:  # `train.on_memory_mismatch: switch` picked a method that fits
        overrides = [*overrides, f"train.method={method}"]
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"method": method})})
    stage("prep", spec.data.model_dump(), lambda: {"rows_kept": prepare_data(spec).report["rows_kept"]})
    stage("train", [spec.model.model_dump(), spec.train.model_dump()], lambda: _train_stage(spec, spec_path, overrides))
    if not is_head:
        return outcomes  # evaluation and publishing run once, on the head node
    stage("eval", spec.eval.model_dump(), lambda: _eval_stage(spec))
    stage("publish", spec.artifacts.destinations, lambda: _publish_stage(spec, force))
    return outcomes


def run_status(spec: JobSpec) -> dict[str, Any]:
    """Collect a run's state from its run dir: stages, last logged step, checkpoints, spend, destinations."""
    run_dir = spec.run_dir()
    stages = {name: read_marker(run_dir, name) for name in STAGES}
    last: dict[str, Any] = {}
    metrics = run_dir / "logs" / "metrics.jsonl"
    if metrics.is_file():
        lines = metrics.read_text(encoding="utf-8").splitlines()
        last = json.loads(lines[-1]) if lines else {}
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*") if (p / "COMPLETE").exists())
    run_info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    return {
        "run_dir": str(run_dir),
        "run_id": run_info.get("run_id"),
        "stages": {name: (m["finished_at"] if m else None) for name, m in stages.items()},
        "step": last.get("step"),
        "loss": last.get("train/loss"),
        "spent_yuan": last.get("cost/spent_yuan"),
        "latest_checkpoint": checkpoints[-1] if checkpoints else None,
        "destinations": list(spec.artifacts.destinations),
    }
