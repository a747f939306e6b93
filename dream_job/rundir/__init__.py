"""The run-directory contract: names, stage records, the atomic writer, the lock, JSONL reading.

Every stage imports this module and nothing here imports a stage. Layout (architecture.md):

    <run_dir>/.lock                      OS file lock held by the one process working here (PID, host inside)
    <run_dir>/stages/<stage>.done        JSON stage record: fingerprint of its inputs, outcome, output digest
    <run_dir>/run.json                   the run id and job name (`run_id`)
    <run_dir>/data/                      prepared data, `data_report.json`, `tokenizer/`
    <run_dir>/checkpoints/step-000120/   DCP shards, then the `COMPLETE` marker (torn ones have none)
    <run_dir>/export/                    HF folder; `dream_job_export.json` is written last
    <run_dir>/eval/ logs/ cost.json

A published folder (the export, at a destination) also holds `MANIFEST.sha256` and
`dream_job_run.json`; a checkpoint synced to a destination holds `MANIFEST.sha256` too.

A stage record is written when a stage starts (`running`) and when it ends (`done`,
`stopped_by_budget`, `interrupted` or `failed`), by whichever verb ran it, so `dream-job status`
and `dream-job run` read the same truth. The lock is `fcntl.flock` on `.lock`: the kernel
releases it when the process dies, so a `kill -9` never leaves a stale lock behind.

Modules: `names` (file and folder names, markers, outcomes, the run id), `writing` (the atomic
writers, OS errors), `reading` (the validated JSON reader, JSONL, stage records), `lock`. Every
public name is re-exported here, so stages import `dream_job.rundir`.
"""

from __future__ import annotations

from dream_job.rundir.names import (  # noqa: F401
    CHECKPOINTS_DIR, COMPLETE_NAME, COST_NAME, DATA_DIR, DATA_REPORT_NAME, DONE, EVAL_DIR, EVAL_SUMMARY_NAME,
    EXPORT_DIR, EXPORT_FIX, EXPORT_INFO_NAME, FAILED, FILE_MODE, HOLDOUT_NAME, INTERRUPTED, LOCK_ENV, LOCK_NAME, LOGS_DIR,
    LOSS_PLOT_NAME, MANIFEST_NAME, METRICS_NAME, PARTIAL_STEP_RE, RECORD_VERSION, RUNNING, RUN_ID_ENV,
    RUN_INFO_NAME, RUN_MARKER_NAME, RUN_NAME_RE, SKYPILOT_TASK_ID_ENV, STAGES_DIR, STEP_RE, STOPPED_BY_BUDGET,
    TMP_SUFFIX, TOKENIZER_DIR, TOKENIZER_NAME, TRAIN_LOG_NAME, TRAIN_ROWS_DIR, checkpoint_name,
    complete_checkpoints, digest, now_utc, partial_checkpoint_name, run_id, stage_record_path,
)
from dream_job.rundir.writing import (  # noqa: F401
    disk_full_path, fsync_path, is_disk_full, os_error, set_file_modes, temp_path, write_atomically, write_bytes_atomically,
    write_dir_atomically, write_json_atomically, write_text_atomically, writing_to,
)
from dream_job.rundir.reading import (  # noqa: F401
    StageRecord, append_line, export_digest, read_json, read_jsonl, read_stage_record, write_stage_record,
)
from dream_job.rundir.lock import (  # noqa: F401
    lock_holder, locked_run_dir,
)
