"""The train stage: resume or start training (in this process or under torchrun) and record it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from dream_job import rundir, stopping
from dream_job.errors import CheckpointError, InputError, StageError, child_exit_code
from dream_job.pipeline.records import StageOutcome, can_skip, finish_record, is_rank0, recording, skipped_outcome
from dream_job.rundir import DONE, STOPPED_BY_BUDGET, StageRecord, digest, export_digest, read_stage_record
from dream_job.spec import JobSpec

logger = logging.getLogger(__name__)

# Train settings that do not change what a step computes: a run may continue (resume from its
# checkpoints) after they change. Any other train/model setting needs a new run dir.
TRAIN_CONTINUATION_KEYS = frozenset({
    "epochs", "max_steps", "save_every_steps", "keep_checkpoints", "log_every_steps", "device", "compile",
    "activation_checkpointing", "on_memory_mismatch", "eval_every_steps", "report_to", "async_save",
})


def _data_digest(run_dir: Path) -> str:
    from dream_job.data.prep import read_report

    report = read_report(run_dir / rundir.DATA_DIR)
    if report is None:
        raise InputError(f"no prepared data in `{run_dir / rundir.DATA_DIR}`", path=run_dir / rundir.DATA_DIR,
                         hint="run `dream-job prep` with the same job file and `--set` options first")
    return str(report["inputs_hash"])


def train_inputs(spec: JobSpec, data_digest: str) -> dict[str, Any]:
    """Return what training reads: the model and train settings and the prepared data's digest."""
    return {"spec": {"model": spec.model.model_dump(mode="json"), "train": spec.train.model_dump(mode="json")},
            "upstream": data_digest}


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def _check_continuable(run_dir: Path, previous: StageRecord | None, inputs: dict[str, Any]) -> None:
    """Refuse to resume checkpoints written with settings that change what a step computes."""
    if previous is None or "spec" not in previous.inputs:
        return
    changed = [k for k in _changed_keys(previous.inputs["spec"], inputs["spec"])
               if k.removeprefix("train.") not in TRAIN_CONTINUATION_KEYS]
    has_checkpoints = bool(rundir.complete_checkpoints(run_dir / rundir.CHECKPOINTS_DIR))
    if changed and has_checkpoints:
        shown = ", ".join(f"`{k}`" for k in changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise CheckpointError(
            f"the checkpoints in `{run_dir / rundir.CHECKPOINTS_DIR}` were trained with other settings: {shown} changed",
            path=run_dir / rundir.CHECKPOINTS_DIR,
            hint=f"use a new run dir (`--set artifacts.run_dir={run_dir}-2`), or go back to the settings of "
                 f"`{rundir.stage_record_path(run_dir, 'train')}`",
        )


def train_stage(spec: JobSpec, *, verb: str, spec_path: Path | None = None, overrides: list[str] | None = None,
                skip_done: bool = True) -> tuple[Any, StageOutcome]:
    """Train (resuming from the newest checkpoint) unless done on the same fingerprint; record the outcome.

    In one process (or as a torchrun worker) it runs the loop here; `dream-job run` on several
    GPUs starts torchrun, whose workers write the record.

    Args:
        spec: The job spec.
        verb: The command, recorded for `status`.
        spec_path, overrides: How the spec was given (for torchrun).
        skip_done: Skip when done on the same fingerprint (the `train` verb always resumes instead).

    Returns:
        The `TrainResult` (None when skipped or run under torchrun) and the outcome.
    """
    run_dir = spec.run_dir()
    inputs = train_inputs(spec, _data_digest(run_dir))
    fingerprint = digest(inputs)
    previous = read_stage_record(run_dir, "train")
    if (skip_done and can_skip(previous, fingerprint)
            and export_digest(run_dir / rundir.EXPORT_DIR) == previous.output_digest):
        return None, skipped_outcome(previous)
    _check_continuable(run_dir, previous, inputs)
    logger.info("stage train: running")
    gpus = num_gpus() if spec.train.device != "cpu" else 0
    nodes = int(os.environ.get("SKYPILOT_NUM_NODES", "1"))
    if "RANK" not in os.environ and (gpus > 1 or nodes > 1):
        with recording(run_dir, "train", fingerprint, inputs, verb):
            _train_under_torchrun(spec, spec_path or Path("jobs/smoke.yaml"), overrides or [], gpus, nodes)
        if os.environ.get("SKYPILOT_NODE_RANK", "0") != "0":  # global rank 0, on the head node, records it
            return None, StageOutcome("train", False, {})
        record = read_stage_record(run_dir, "train")
        if record is None or record.outcome not in (DONE, STOPPED_BY_BUDGET):
            raise StageError("training under torchrun ended without recording its outcome",
                             hint="see the log above; run the same command again to resume")
        return None, StageOutcome("train", False, record.summary or {}, record.outcome, record.reason)
    from dream_job.train.loop import train
    from dream_job.train_hooks import train_hooks

    write = is_rank0()
    with recording(run_dir, "train", fingerprint, inputs, verb, write=write) as rec:
        result = train(spec, hooks=train_hooks(spec))
        summary = {"steps": result.steps, "total_steps": result.total_steps, "final_loss": result.final_loss}
        outcome = STOPPED_BY_BUDGET if result.stopped_early else DONE
        finish_record(run_dir, rec["base"], outcome=outcome, output_digest=export_digest(result.export_dir),
                summary=summary, reason=result.stopped_early, write=write)
    return result, StageOutcome("train", False, summary, outcome, result.stopped_early)


def _train_under_torchrun(spec: JobSpec, spec_path: Path, overrides: list[str], gpus: int, nodes: int) -> None:
    ips = os.environ.get("SKYPILOT_NODE_IPS", "127.0.0.1").split()
    command = [
        # One process per GPU, one per CPU-only node; the port is free on the head node (a test may pick another).
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc_per_node={max(gpus, 1)}",
        f"--node_rank={os.environ.get('SKYPILOT_NODE_RANK', '0')}", f"--master_addr={ips[0]}",
        f"--master_port={os.environ.get('DREAM_JOB_MASTER_PORT', '8008')}", "-m", "dream_job", "train", str(spec_path),
        *(arg for override in overrides for arg in ("--set", override)),
    ]
    logger.info("training on %d node(s) x %d GPU(s): %s", nodes, gpus, " ".join(command))
    process = subprocess.Popen(command)
    # A stop goes on to torchrun (which passes it to its workers: they save at the step boundary);
    # this process waits for them rather than leave them training.
    with stopping.forwarding(process.send_signal):
        returncode = process.wait()
    stopping.check()
    if returncode != 0:
        raise StageError(f"training under torchrun exited with code {returncode}",
                         hint="see the log above; run the same command again to resume",
                         exit_code=child_exit_code(returncode))


def num_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
