"""The run directory's names: files, folders, markers, the step regex, stage outcomes, the run id.

One home for every name a stage writes or reads (`architecture.md`); re-exported by `dream_job.rundir`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from dream_job.spec import RUN_NAME_RE, JobSpec  # noqa: F401  RUN_NAME_RE: re-exported (the spec checks job names with it)

LOCK_NAME = ".lock"
STAGES_DIR = "stages"
DATA_DIR = "data"
CHECKPOINTS_DIR = "checkpoints"
EXPORT_DIR = "export"
EVAL_DIR = "eval"
LOGS_DIR = "logs"
METRICS_NAME = "metrics.jsonl"
TRAIN_LOG_NAME = "train.log"
RUN_INFO_NAME = "run.json"
COST_NAME = "cost.json"
EVAL_SUMMARY_NAME = "summary.json"  # in `eval/`: {label: {suite: stats}}
LOSS_PLOT_NAME = "loss.png"  # in `logs/`: the training curves
# In `data/` (written by prep, one folder swapped in whole): the tokenized training rows
# (`datasets.save_to_disk`), the held-out rows as text, the tokenizer, the report.
TRAIN_ROWS_DIR = "train"
HOLDOUT_NAME = "holdout.jsonl"
TOKENIZER_NAME = "tokenizer"
DATA_REPORT_NAME = "data_report.json"  # counts, length statistics, `inputs_hash`
TOKENIZER_DIR = f"{DATA_DIR}/{TOKENIZER_NAME}"  # relative to the run dir
# The export's own description (dtype, files, `exported_at`), written by `train/export.py` last.
EXPORT_INFO_NAME = "dream_job_export.json"
# A published folder's (and a synced checkpoint's) file list: `<sha256>  <relative path>` lines.
MANIFEST_NAME = "MANIFEST.sha256"
# Which run owns a destination root (`{"run_id": ...}`), so a second run does not overwrite it.
RUN_MARKER_NAME = "dream_job_run.json"
# What to do about a damaged export: the checkpoints it came from make it again.
EXPORT_FIX = "delete `{export}` and run `dream-job train` with the same job file again: it exports from the last checkpoint"
# A checkpoint counts only when this marker is in its folder; it is written last.
COMPLETE_NAME = "COMPLETE"
STEP_RE = re.compile(r"step-(\d+)")  # a checkpoint folder name; `checkpoint_name` writes it
PARTIAL_STEP_RE = re.compile(r"\.step-\d+\.partial")  # a checkpoint being saved (torn if left behind)
# Every file being written into place ends with this (never listed in a manifest, removed when stale).
TMP_SUFFIX = ".tmp-dream-job"
# The mode of every file written into place: readable by all, whatever wrote it (safetensors
# writes its files 0600; a copy keeps its source's mode).
FILE_MODE = 0o644
# The environment variables that name the run (`run_id`).
RUN_ID_ENV = "DREAM_JOB_RUN_ID"  # set by `dream-job launch`
SKYPILOT_TASK_ID_ENV = "SKYPILOT_TASK_ID"  # the same across the recoveries of a managed job
# Outcomes of a stage record; only `done` lets a later run skip the stage.
DONE, STOPPED_BY_BUDGET, INTERRUPTED, FAILED, RUNNING = "done", "stopped_by_budget", "interrupted", "failed", "running"
RECORD_VERSION = 2
# Set for child processes (torchrun workers) of the process that holds the lock: they work under it.
LOCK_ENV = "DREAM_JOB_RUN_DIR_LOCKED"


def checkpoint_name(step: int) -> str:
    """Return the folder name of checkpoint `step` (`step-000120`)."""
    return f"step-{step:06d}"


def partial_checkpoint_name(step: int) -> str:
    """Return the hidden folder a checkpoint of `step` is saved into before it is renamed (`.step-000120.partial`)."""
    return f".{checkpoint_name(step)}.partial"


def complete_checkpoints(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """Return (step, folder) of every checkpoint in `checkpoints_dir` with its `COMPLETE` marker, oldest first."""
    root = Path(checkpoints_dir)
    found = []
    for path in root.iterdir() if root.is_dir() else ():
        if (m := STEP_RE.fullmatch(path.name)) and (path / COMPLETE_NAME).is_file():
            found.append((int(m[1]), path))
    return sorted(found)


def run_id(spec: JobSpec) -> str:
    """Return the run id: `DREAM_JOB_RUN_ID` (set by `dream-job launch`), else `SKYPILOT_TASK_ID`
    (the same across recoveries), else the job name."""
    return os.environ.get(RUN_ID_ENV) or os.environ.get(SKYPILOT_TASK_ID_ENV) or spec.name


def stage_record_path(run_dir: Path, stage: str) -> Path:
    """Return the record file of `stage` (`<run_dir>/stages/<stage>.done`)."""
    return Path(run_dir) / STAGES_DIR / f"{stage}.done"


def now_utc() -> str:
    """Return the time as `2026-12-05T13:07:45Z` (stage records, logs)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def digest(*parts: Any) -> str:
    """Return the sha256 of `parts` as canonical JSON (the fingerprint of a stage's inputs)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
