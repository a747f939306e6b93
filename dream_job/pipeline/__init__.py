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

Modules: `records` (stage records and outcomes), `stage_prep`, `stage_train`, `stage_eval`,
`stage_publish` (one stage each), `status`; `run_pipeline` (the whole job) is here, and every
public name is re-exported, so callers import `dream_job.pipeline`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from dream_job import rundir, stopping
from dream_job.pipeline.records import STAGES, StageOutcome  # noqa: F401
from dream_job.pipeline.stage_eval import eval_inputs, eval_stage, evaluate_models  # noqa: F401
from dream_job.pipeline.stage_prep import prep_stage  # noqa: F401
from dream_job.pipeline.stage_publish import publish_stage  # noqa: F401
from dream_job.pipeline.stage_train import TRAIN_CONTINUATION_KEYS, train_inputs, train_stage  # noqa: F401
from dream_job.pipeline.status import run_status  # noqa: F401
from dream_job.rundir import run_id
from dream_job.spec import JobSpec


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
