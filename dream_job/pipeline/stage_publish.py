"""The publish stage: send the export (and the model card) to every destination and record it."""

from __future__ import annotations

import logging
from typing import Any

from dream_job import rundir
from dream_job.pipeline.records import StageOutcome, can_skip, finish_record, recording, skipped_outcome
from dream_job.rundir import digest, export_digest, read_stage_record, run_id
from dream_job.spec import JobSpec

logger = logging.getLogger(__name__)


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
    if can_skip(previous, fingerprint):
        return skipped_outcome(previous)
    logger.info("stage publish: running")
    with recording(run_dir, "publish", fingerprint, inputs, verb) as rec:
        summary = _publish(spec, force)
        finish_record(run_dir, rec["base"], output_digest=inputs["upstream"]["export"], summary=summary)
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
