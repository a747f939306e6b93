"""The prep stage: prepare (or reuse) the data, refusing to replace data a model was trained on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dream_job import rundir
from dream_job.errors import DataError
from dream_job.pipeline.records import StageOutcome, can_skip, finish_record, recording, skipped_outcome
from dream_job.rundir import export_digest, read_stage_record
from dream_job.spec import JobSpec

logger = logging.getLogger(__name__)


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
    if result.reused and can_skip(previous, key):
        return result, skipped_outcome(previous)
    with recording(run_dir, "prep", key, inputs, verb) as rec:
        finish_record(run_dir, rec["base"], output_digest=key, summary=summary)
    return result, StageOutcome("prep", result.reused, summary)
