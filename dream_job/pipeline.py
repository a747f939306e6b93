"""`dream-job run`: preflight, then the stages prep -> train -> eval -> publish, each skipped only when done.

Each stage has a fingerprint of its inputs (the spec fields it reads, the dataset's content
digest, the digest of the upstream stage's output) and writes its record to
`<run_dir>/stages/<stage>.done` (`dream_job.rundir.StageRecord`) when it starts and when it ends,
with its outcome: `done`, `stopped_by_budget`, `interrupted` or `failed`. A stage is skipped only
when its record says `done` with today's fingerprint (and, for training, the export it recorded is
still there), so an edited dataset, a larger budget or a model trained by hand with
`dream-job train` re-run exactly the stages they affect. The verbs `prep`, `train` and `eval`
write the same records through the functions here, and `run_status` reads them.

Preflight runs first on every invocation (after a spot recovery the machine is new), before the
run dir is touched: GPU, secrets, destinations (a tiny write and delete), the base model (local,
cached, or reachable within ~30 s) and free disk. The whole run holds the run dir's lock.
The run id is `DREAM_JOB_RUN_ID` (set by `dream-job launch`), else `SKYPILOT_TASK_ID` (stable
across recoveries of a managed job), else the job name; it is recorded in `<run_dir>/run.json`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dream_job import rundir, stopping
from dream_job.errors import (
    EXIT_INTERRUPTED, EXIT_TRANSIENT, CheckpointError, DataError, DreamJobError, InputError, StageError,
    child_exit_code,
)
from dream_job.rundir import (
    DONE, FAILED, INTERRUPTED, RUNNING, STOPPED_BY_BUDGET, StageRecord, digest, export_digest, read_stage_record,
    run_id,
)
from dream_job.spec import JobSpec

logger = logging.getLogger(__name__)

STAGES = ("prep", "train", "eval", "publish")
# Train settings that do not change what a step computes: a run may continue (resume from its
# checkpoints) after they change. Any other train/model setting needs a new run dir.
TRAIN_CONTINUATION_KEYS = frozenset({
    "epochs", "max_steps", "save_every_steps", "keep_checkpoints", "log_every_steps", "device", "compile",
    "activation_checkpointing", "on_memory_mismatch", "eval_every_steps", "report_to",
})


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one stage in this invocation.

    Attributes:
        stage: The stage name (or `preflight`).
        skipped: True when it had finished before on the same fingerprint.
        summary: Small facts for the status line.
        outcome: The record's outcome (`done`, `stopped_by_budget`, ...).
        reason: Why it stopped early, when it did.
    """

    stage: str
    skipped: bool
    summary: dict[str, Any]
    outcome: str = DONE
    reason: str | None = None


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


# --- stage records ---------------------------------------------------------------------------


@contextmanager
def _recording(run_dir: Path, stage: str, fingerprint: str, inputs: dict[str, Any], verb: str,
               *, write: bool = True) -> Iterator[dict[str, Any]]:
    """Write `running` now and `failed`/`interrupted` if the body raises; the body writes the end itself."""
    started = rundir.now_utc()
    base = StageRecord(stage=stage, fingerprint=fingerprint, inputs=inputs, outcome=RUNNING, verb=verb,
                       started_at=started)
    if write:
        rundir.write_stage_record(run_dir, base)
    try:
        yield {"base": base}
    except BaseException as exc:
        if write:
            interrupted = isinstance(exc, KeyboardInterrupt) or getattr(exc, "exit_code", None) in (
                EXIT_TRANSIENT, EXIT_INTERRUPTED)
            reason = exc.message if isinstance(exc, DreamJobError) else (
                "stopped by Ctrl-C" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}")
            try:
                rundir.write_stage_record(run_dir, replace(base, outcome=INTERRUPTED if interrupted else FAILED,
                                                           reason=reason, finished_at=rundir.now_utc()))
            except DreamJobError:
                pass  # the disk may be full: the original error says more
        raise


def _finish(run_dir: Path, base: StageRecord, *, outcome: str = DONE, output_digest: str | None,
            summary: dict[str, Any], reason: str | None = None, write: bool = True) -> StageRecord:
    record = replace(base, outcome=outcome, output_digest=output_digest, summary=summary, reason=reason,
                     finished_at=rundir.now_utc())
    if write:
        rundir.write_stage_record(run_dir, record)
    return record


def _can_skip(record: StageRecord | None, fingerprint: str) -> bool:
    return record is not None and record.is_done and record.fingerprint == fingerprint


def _skipped(record: StageRecord) -> StageOutcome:
    return StageOutcome(record.stage, True, record.summary or {}, record.outcome, record.reason)


# --- prep ------------------------------------------------------------------------------------


def _trained_on(run_dir: Path) -> str | None:
    """Return the data digest the run dir's checkpoints or export were trained on ("" when unknown), or None."""
    has_training = (export_digest(run_dir / rundir.EXPORT_DIR) is not None
                    or bool(rundir.complete_checkpoints(run_dir / rundir.CHECKPOINTS_DIR)))
    if not has_training:
        return None
    record = read_stage_record(run_dir, "train")
    return str(record.inputs.get("upstream", "")) if record is not None else ""


def prep_stage(spec: JobSpec, *, verb: str) -> tuple[Any, StageOutcome]:
    """Prepare the data (or reuse it when the dataset content and settings are unchanged) and record it.

    Refuses, before writing anything, to replace data a model in this run dir was trained on.

    Returns:
        The `PrepResult` and the stage outcome.

    Raises:
        DataError: The dataset or tokenizer is missing or malformed.
        DataError: The data changed under a trained run (exit 1, names the fix).
    """
    from dream_job.data.prep import prepare_data

    run_dir = spec.run_dir()

    def refuse_if_trained(new_key: str) -> None:
        trained = _trained_on(run_dir)
        if trained is not None and trained != new_key:
            raise DataError(
                f"the data of `data.dataset` `{spec.data.dataset}` (or the `data`/tokenizer settings) changed since "
                f"the model in `{run_dir}` was trained on it", key="data.dataset", value=spec.data.dataset,
                hint=f"train on the new data in a new run dir (`--set artifacts.run_dir={run_dir}-2`), or delete "
                     f"`{run_dir / rundir.CHECKPOINTS_DIR}` and `{run_dir / rundir.EXPORT_DIR}` to retrain here",
            )

    previous = read_stage_record(run_dir, "prep")
    logger.info("stage prep: running")  # prep itself finds out whether the data can be reused
    result = prepare_data(spec, before_write=refuse_if_trained)
    key = result.report["inputs_hash"]
    inputs = {"spec": spec.data.model_dump(mode="json", exclude={"num_proc"}),
              "tokenizer": spec.model.tokenizer or spec.model.base, "dataset": result.dataset_digest}
    summary = {"rows_kept": result.report["rows_kept"], "rows_read": result.report["rows_read"]}
    skipped = result.reused and _can_skip(previous, key)
    if skipped and previous is not None:
        return result, _skipped(previous)
    with _recording(run_dir, "prep", key, inputs, verb) as rec:
        _finish(run_dir, rec["base"], output_digest=key, summary=summary)
    return result, StageOutcome("prep", result.reused, summary)


# --- train -----------------------------------------------------------------------------------


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
    if (skip_done and _can_skip(previous, fingerprint) and previous is not None
            and export_digest(run_dir / rundir.EXPORT_DIR) == previous.output_digest):
        return None, _skipped(previous)
    _check_continuable(run_dir, previous, inputs)
    logger.info("stage train: running")
    gpus = _num_gpus() if spec.train.device != "cpu" else 0
    nodes = int(os.environ.get("SKYPILOT_NUM_NODES", "1"))
    if "RANK" not in os.environ and (gpus > 1 or nodes > 1):
        with _recording(run_dir, "train", fingerprint, inputs, verb):
            _train_under_torchrun(spec, spec_path or Path("jobs/smoke.yaml"), overrides or [], gpus, nodes)
        record = read_stage_record(run_dir, "train")
        if record is None or record.outcome not in (DONE, STOPPED_BY_BUDGET):
            raise StageError("training under torchrun ended without recording its outcome",
                             hint="see the log above; run the same command again to resume")
        return None, StageOutcome("train", False, record.summary or {}, record.outcome, record.reason)
    from dream_job.train.loop import train
    from dream_job.train_hooks import train_hooks

    write = _is_rank0()
    with _recording(run_dir, "train", fingerprint, inputs, verb, write=write) as rec:
        result = train(spec, hooks=train_hooks(spec))
        summary = {"steps": result.steps, "total_steps": result.total_steps, "final_loss": result.final_loss}
        outcome = STOPPED_BY_BUDGET if result.stopped_early else DONE
        _finish(run_dir, rec["base"], outcome=outcome, output_digest=export_digest(result.export_dir),
                summary=summary, reason=result.stopped_early, write=write)
    return result, StageOutcome("train", False, summary, outcome, result.stopped_early)


def _train_under_torchrun(spec: JobSpec, spec_path: Path, overrides: list[str], gpus: int, nodes: int) -> None:
    ips = os.environ.get("SKYPILOT_NODE_IPS", "127.0.0.1").split()
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc_per_node={gpus}",
        f"--node_rank={os.environ.get('SKYPILOT_NODE_RANK', '0')}", f"--master_addr={ips[0]}",
        "--master_port=8008", "-m", "dream_job", "train", str(spec_path),
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


# --- eval ------------------------------------------------------------------------------------


def eval_inputs(spec: JobSpec, run_dir: Path) -> dict[str, Any]:
    """Return what evaluation reads: eval, prompt and model settings, the export and the held-out rows."""
    from dream_job.data.prep import read_report

    report = read_report(run_dir / rundir.DATA_DIR)
    return {
        # Not `eval.processes`: how many processes decode does not change what they decode.
        "spec": {"eval": spec.eval.model_dump(mode="json", exclude={"processes"}), "system_prompt": spec.data.system_prompt,
                 "model": spec.model.model_dump(mode="json"), "seed": spec.train.seed, "device": spec.train.device},
        "upstream": {"export": export_digest(run_dir / rundir.EXPORT_DIR) if "final" in spec.eval.models else None,
                     "data": report["inputs_hash"] if report else None},
    }


def evaluate_models(spec: JobSpec, labels: list[tuple[str, Path | None]], *,
                    progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Evaluate each (label, folder), then write the report; a stop keeps the items done (SIGTERM: exit 3).

    With several GPUs (`eval.processes`) each model's pending batches are decoded by one process
    per GPU (`eval/processes.py`); this process then folds their items together and writes the summary.

    Returns:
        The report path.

    Raises:
        StopRequested: Stopped by SIGTERM (exit 3) or Ctrl-C (130); items decoded so far are kept and reused.
        StageError: An evaluation process failed.
    """
    from dream_job.eval.processes import eval_processes, evaluate_in_processes
    from dream_job.eval.report import write_report
    from dream_job.eval.run import evaluate, plan_evaluation

    count = eval_processes(spec)
    try:
        for label, folder in labels:
            if count > 1:
                plan = plan_evaluation(spec, model_label=label, model_dir=folder)
                needed = min(count, plan.most_batches(spec.eval.batch_size))
                if needed > 1:  # else this process decodes the one batch (or nothing) itself
                    evaluate_in_processes(spec, model_label=label, model_dir=folder, count=needed)
            with rundir.writing_to(spec.run_dir() / rundir.EVAL_DIR):  # a full disk names the eval folder
                evaluate(spec, model_label=label, model_dir=folder, progress=progress)
    except stopping.StopRequested:
        if stopping.requested() != stopping.SIGTERM:
            raise
        raise stopping.stop_error(stopping.SIGTERM, "evaluation stopped by SIGTERM; the items decoded so far are saved",
                                  hint="run the same command again to decode only the rest") from None
    return write_report(spec.run_dir())


def eval_stage(spec: JobSpec, *, verb: str) -> StageOutcome:
    """Evaluate every model of `eval.models` unless done on the same fingerprint; record the outcome."""
    run_dir = spec.run_dir()
    inputs = eval_inputs(spec, run_dir)
    fingerprint = digest(inputs)
    previous = read_stage_record(run_dir, "eval")
    if _can_skip(previous, fingerprint) and previous is not None:
        return _skipped(previous)
    logger.info("stage eval: running")
    with _recording(run_dir, "eval", fingerprint, inputs, verb) as rec:
        labels = [(label, run_dir / rundir.EXPORT_DIR if label == "final" else None) for label in spec.eval.models]
        report = evaluate_models(spec, labels)
        summary_path = run_dir / rundir.EVAL_DIR / rundir.EVAL_SUMMARY_NAME
        output = digest(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
        summary = {"labels": list(spec.eval.models), "report": str(report)}
        _finish(run_dir, rec["base"], output_digest=output, summary=summary)
    return StageOutcome("eval", False, summary)


# --- publish ---------------------------------------------------------------------------------


def publish_stage(spec: JobSpec, *, verb: str, force: bool) -> StageOutcome:
    """Publish the export (with the model card for `hf://`) unless published before from the same export."""
    run_dir = spec.run_dir()
    eval_record = read_stage_record(run_dir, "eval")
    inputs = {"spec": {"destinations": list(spec.artifacts.destinations), "run_id": run_id(spec),
                       "s3_endpoint_url": spec.artifacts.s3_endpoint_url},
              "upstream": {"export": export_digest(run_dir / rundir.EXPORT_DIR),
                           "eval": eval_record.output_digest if eval_record else None}}
    fingerprint = digest(inputs)
    previous = read_stage_record(run_dir, "publish")
    if _can_skip(previous, fingerprint) and previous is not None:
        return _skipped(previous)
    logger.info("stage publish: running")
    with _recording(run_dir, "publish", fingerprint, inputs, verb) as rec:
        summary = _publish(spec, force)
        _finish(run_dir, rec["base"], output_digest=inputs["upstream"]["export"], summary=summary)
    return StageOutcome("publish", False, summary)


def _publish(spec: JobSpec, force: bool) -> dict[str, Any]:
    import yaml

    from dream_job.artifacts import S3Settings, model_card_inputs, publish_folder

    run_dir = spec.run_dir()
    card = model_card_inputs(run_dir, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    published = []
    for destination in spec.artifacts.destinations:
        s3 = S3Settings(endpoint_url=spec.artifacts.s3_endpoint_url) if destination.startswith("s3://") else None
        result = publish_folder(run_dir / rundir.EXPORT_DIR, destination, run_id=run_id(spec), force=force, s3=s3,
                                model_card=card)
        logger.info("published %d files to %s (%d uploaded, %d already there)", result.num_files, destination,
                    result.num_uploaded, result.num_skipped)
        published.append(destination)
    return {"destinations": published}


# --- the whole job ---------------------------------------------------------------------------


def _num_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_pipeline(
    spec: JobSpec,
    *,
    spec_path: Path,
    overrides: list[str],
    force: bool = False,
    on_stage: Callable[[StageOutcome], None] | None = None,
) -> list[StageOutcome]:
    """Run preflight, then every stage not done on today's inputs, holding the run dir's lock.

    Args:
        spec: The validated spec.
        spec_path, overrides: How the spec was given (passed on to torchrun for multi-GPU training).
        force: Publish even where the destination holds another run.
        on_stage: Called after each stage (for progress output).

    Returns:
        One outcome per stage run or skipped, preflight first.

    Raises:
        DreamJobError: The stage that failed says why; earlier stages' results are kept.
        RunDirBusyError: Another process works in the run dir.
    """
    from dream_job.preflight import preflight

    outcomes: list[StageOutcome] = []

    def note(outcome: StageOutcome) -> None:
        outcomes.append(outcome)
        if on_stage is not None:
            on_stage(outcome)

    checks = preflight(spec)
    note(StageOutcome("preflight", False, checks))
    stopping.boundary("after:preflight")
    run_dir = spec.run_dir()
    with rundir.locked_run_dir(run_dir, verb="dream-job run"):
        rundir.write_json_atomically(run_dir / rundir.RUN_INFO_NAME, {"run_id": run_id(spec), "job": spec.name},
                                     indent=None)
        method = checks["method"]
        if method != spec.train.method:  # `train.on_memory_mismatch: switch` picked a method that fits
            overrides = [*overrides, f"train.method={method}"]
            spec = spec.model_copy(update={"train": spec.train.model_copy(update={"method": method})})
        verb = "dream-job run"
        # Every boundary reads the stop request: after a stop nothing downstream starts.
        note(prep_stage(spec, verb=verb)[1])
        stopping.boundary("after:prep")
        note(train_stage(spec, verb=verb, spec_path=spec_path, overrides=overrides)[1])
        stopping.boundary("after:train")
        if os.environ.get("SKYPILOT_NODE_RANK", "0") != "0":
            return outcomes  # evaluation and publishing run once, on the head node
        note(eval_stage(spec, verb=verb))
        stopping.boundary("after:eval")
        note(publish_stage(spec, verb=verb, force=force))
    return outcomes


# --- status ----------------------------------------------------------------------------------


def run_status(spec: JobSpec, *, must_exist: bool = True) -> dict[str, Any]:
    """Collect a run's state from its run dir: stage records, last logged step, checkpoints, spend.

    Reads only (no lock, no repair): a torn last line of `metrics.jsonl` is skipped.

    Args:
        must_exist: Refuse a run dir that does not exist (False: a launched run, whose dir is remote).

    Raises:
        InputError: The run dir is a file, or (with `must_exist`) does not exist.
    """
    run_dir = spec.run_dir()
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"run dir `{run_dir}` is a file, not a folder", key="artifacts.run_dir", path=run_dir,
                         hint="point `artifacts.run_dir` at the run's folder")
    if must_exist and not run_dir.exists():
        raise InputError(f"run dir `{run_dir}` does not exist: nothing of job `{spec.name}` has run there",
                         key="artifacts.run_dir", path=run_dir,
                         hint="check `artifacts.run_dir` (and the `--set` options the run used), or start the run "
                              "with `dream-job run`")
    holder = rundir.lock_holder(run_dir) if run_dir.is_dir() else None
    stages: dict[str, dict[str, Any] | None] = {}
    for name in STAGES:
        record = read_stage_record(run_dir, name)
        if record is None:
            stages[name] = None
            continue
        outcome = record.outcome
        if outcome == RUNNING and holder is None:
            outcome = INTERRUPTED  # nobody holds the lock: the process that ran it is gone
        stages[name] = {"outcome": outcome, "finished_at": record.finished_at, "started_at": record.started_at,
                        "reason": record.reason or ("its process ended without finishing" if outcome == INTERRUPTED
                                                    and record.outcome == RUNNING else None),
                        "verb": record.verb, "summary": record.summary or {}}
    metrics = rundir.read_jsonl(run_dir / rundir.LOGS_DIR / rundir.METRICS_NAME)
    last = metrics[-1] if metrics else {}
    checkpoints = [path.name for _, path in rundir.complete_checkpoints(run_dir / rundir.CHECKPOINTS_DIR)]
    info_path = run_dir / rundir.RUN_INFO_NAME
    run_info = rundir.read_json(info_path, fix=f"delete `{info_path}`: `dream-job run` writes it again"
                                ) if info_path.is_file() else {}
    return {
        "run_dir": str(run_dir),
        "run_id": run_info.get("run_id") or run_id(spec),
        "in_use_by": holder,
        "stages": stages,
        "stopped": _why_stopped(stages),
        "step": last.get("step"),
        "loss": last.get("train/loss"),
        "spent_yuan": last.get("cost/spent_yuan"),
        "latest_checkpoint": checkpoints[-1] if checkpoints else None,
        "destinations": list(spec.artifacts.destinations),
    }


def _why_stopped(stages: dict[str, dict[str, Any] | None]) -> str | None:
    """Return why the run is not finished, from the first stage that did not end `done`."""
    for name, stage in stages.items():
        if stage is None:
            return f"stage {name} has not run yet"
        if stage["outcome"] != DONE:
            what = stage["outcome"].replace("_", " ")
            return f"stage {name} {what}" + (f": {stage['reason']}" if stage.get("reason") else "")
    return None
