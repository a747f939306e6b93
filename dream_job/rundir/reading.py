"""Reading the run dir: the one validated JSON reader, JSONL with torn tails, stage records, the export digest.

A damaged file is named with its fix (`read_json`, exit 1), never a decoder's traceback.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dream_job.errors import InputError
from dream_job.rundir.names import (
    DONE, EXPORT_FIX, EXPORT_INFO_NAME, RECORD_VERSION, digest, stage_record_path,
)
from dream_job.rundir.writing import os_error, write_json_atomically

logger = logging.getLogger(__name__)


def read_json(path: Path, *, fix: str, kind: type = dict) -> Any:
    """Read a JSON file of the run dir (or of a model folder it holds), refusing a damaged one in one sentence.

    The one reader of the JSON files dream-job writes (`cost.json`, `run.json`, `data_report.json`,
    the export's `dream_job_export.json`, `eval/summary.json`): a file cut short, overwritten with
    garbage or of the wrong shape is named with its fix, never a `JSONDecodeError` (a bug report).

    Args:
        path: The file (it must exist; callers decide what a missing file means).
        fix: What the user should do, e.g. "delete it and run `dream-job prep` again".
        kind: The JSON type the top level must have (`dict` or `list`).

    Raises:
        InputError: The file cannot be read, is not UTF-8 JSON, or its top level is not `kind` (exit 1).
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read `{path}`: {exc.strerror or exc}", path=path, hint=fix) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"`{path}` is damaged: it is not JSON", path=path, caused_by=[str(exc)], hint=fix) from None
    if not isinstance(value, kind):
        raise InputError(f"`{path}` is damaged: it holds a JSON {type(value).__name__}, not a "
                         f"{'mapping' if kind is dict else kind.__name__}", path=path, hint=fix)
    return value


def read_jsonl(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Return the JSON objects of a JSONL file, skipping torn or undecodable lines.

    A process killed mid-write leaves a last line without its newline, possibly cut inside a
    UTF-8 character. Such lines (and any line that is not a JSON object) are skipped with one
    warning. With `repair`, a torn tail is cut off the file (the caller must own the file, e.g.
    hold the run-dir lock), so later appends start on a fresh line.

    Args:
        path: The file; a missing file reads as empty.
        repair: Truncate a torn last line in place.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    num_bad = 0
    end = data.rfind(b"\n") + 1  # bytes after the last newline are a torn line
    for raw in data[:end].split(b"\n"):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            num_bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            num_bad += 1
    torn = data[end:]
    if torn.strip():
        try:  # a complete record missing only its newline is kept
            record = json.loads(torn.decode("utf-8"))
            if isinstance(record, dict):
                records.append(record)
                torn = b""
        except (UnicodeDecodeError, json.JSONDecodeError):
            num_bad += 1
    if num_bad:
        logger.warning("skipped %d torn or unreadable line(s) in `%s`", num_bad, path)
    if repair and torn:
        try:
            with path.open("r+b") as f:
                f.truncate(end)
        except OSError as exc:
            raise os_error(exc, path) from None
        logger.info("cut a torn last line off `%s`", path)
    return records


def append_line(path: Path, text: str) -> None:
    """Append one line (with its newline) to `path`, starting a new line if the file ends torn."""
    path = Path(path)
    try:
        with path.open("ab+") as f:
            size = f.seek(0, os.SEEK_END)
            prefix = b""
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    prefix = b"\n"
            f.write(prefix + text.encode("utf-8"))
    except OSError as exc:
        raise os_error(exc, path) from None


@dataclass(frozen=True)
class StageRecord:
    """What `stages/<stage>.done` says about one stage.

    Attributes:
        stage: `prep`, `train`, `eval` or `publish`.
        fingerprint: Digest of everything the stage read (spec fields, dataset digest, upstream digest).
        inputs: The parts of the fingerprint, for messages (`spec` fields, `dataset`, `upstream`).
        outcome: `running`, `done`, `stopped_by_budget`, `interrupted` or `failed`.
        output_digest: Digest of what the stage produced (downstream fingerprints include it).
        reason: Why it stopped, for every outcome but `done`.
        summary: Small facts for status lines (`rows_kept`, `steps`, ...).
        verb: The command that ran it (`dream-job train`, `dream-job run`).
        started_at, finished_at: UTC times.
    """

    stage: str
    fingerprint: str
    inputs: dict[str, Any]
    outcome: str
    output_digest: str | None = None
    reason: str | None = None
    summary: dict[str, Any] | None = None
    verb: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def is_done(self) -> bool:
        return self.outcome == DONE

    def to_json(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, **self.__dict__}


def read_stage_record(run_dir: Path, stage: str) -> StageRecord | None:
    """Return the record of `stage`, or None when there is none (or it is of an older layout)."""
    path = stage_record_path(run_dir, stage)
    if not path.exists():
        return None
    try:
        body = read_json(path, fix="")
    except InputError:
        # A record is dream-job's own bookkeeping, rewritten whenever the stage runs: a damaged one
        # only means the stage runs again (its own reuse keeps that cheap).
        logger.warning("ignoring unreadable stage record `%s`: stage %s runs again", path, stage)
        return None
    if body.get("version") != RECORD_VERSION:
        return None  # a record of an older dream-job: the stage runs again (its own reuse keeps it cheap)
    fields = StageRecord.__dataclass_fields__
    return StageRecord(**{k: v for k, v in body.items() if k in fields})


def write_stage_record(run_dir: Path, record: StageRecord) -> None:
    """Write a stage record atomically."""
    write_json_atomically(stage_record_path(run_dir, record.stage), record.to_json())


def export_digest(export_dir: Path) -> str | None:
    """Return a digest that changes whenever the export is rewritten, or None without a complete export.

    Cheap on a 15 GB export: the export's own `dream_job_export.json` (which carries `exported_at`
    and is written last) plus the name and size of every file, not the weights' bytes.
    """
    info = Path(export_dir) / EXPORT_INFO_NAME
    if not info.is_file():
        return None
    files = sorted((p.relative_to(export_dir).as_posix(), p.stat().st_size)
                   for p in Path(export_dir).rglob("*") if p.is_file())
    read_json(info, fix=EXPORT_FIX.format(export=export_dir))  # a damaged one is named, not digested
    return digest(info.read_text(encoding="utf-8"), files)
