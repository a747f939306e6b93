"""The eval stage: evaluate every model of `eval.models` (items already decoded are reused) and record it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dream_job import rundir, stopping
from dream_job.pipeline.records import StageOutcome, can_skip, finish_record, recording, skipped_outcome
from dream_job.rundir import digest, export_digest, read_stage_record
from dream_job.spec import JobSpec

logger = logging.getLogger(__name__)


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
    if can_skip(previous, fingerprint):
        return skipped_outcome(previous)
    logger.info("stage eval: running")
    with recording(run_dir, "eval", fingerprint, inputs, verb) as rec:
        labels = [(label, run_dir / rundir.EXPORT_DIR if label == "final" else None) for label in spec.eval.models]
        report = evaluate_models(spec, labels)
        summary_path = run_dir / rundir.EVAL_DIR / rundir.EVAL_SUMMARY_NAME
        output = digest(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
        summary = {"labels": list(spec.eval.models), "report": str(report)}
        finish_record(run_dir, rec["base"], output_digest=output, summary=summary)
    return StageOutcome("eval", False, summary)
