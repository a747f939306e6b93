"""`dream-job prep`: s1K-1.1 rows -> hold-out split -> token sequences -> `<run_dir>/data/`.

Writes, atomically (a temporary folder renamed into place):

    <run_dir>/data/train/            tokenized training rows (datasets `save_to_disk`):
                                     input_ids, prompt_length, num_tokens, truncated, row_index
    <run_dir>/data/holdout.jsonl     held-out rows for evaluation (question, solution, ...)
    <run_dir>/data/tokenizer/        the tokenizer used, for later stages
    <run_dir>/data/data_report.json  counts and length statistics (see `report.py`)

The output is keyed by `inputs_hash` (data spec, tokenizer, dataset content, format version);
a re-run with the same inputs reuses it, a run with other inputs replaces it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dream_job.data.encode import KEPT, PROMPT_TOO_LONG, encode_row
from dream_job.data.layout import read_row, required_columns
from dream_job.data.report import build_report
from dream_job.data.source import load_rows
from dream_job.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from dream_job.errors import DataError
from dream_job.rundir import (
    DATA_DIR, DATA_REPORT_NAME, HOLDOUT_NAME, TOKENIZER_NAME, TRAIN_ROWS_DIR, read_json, write_dir_atomically,
)
from dream_job.spec import DataSpec, JobSpec
from dream_job.stopping import pause_point

logger = logging.getLogger(__name__)

# Bump when the layout, encoding or output format changes: old prepared data is rebuilt.
PREP_FORMAT_VERSION = 1


@dataclass(frozen=True)
class PrepResult:
    """Where the prepared data is and what it holds.

    Attributes:
        data_dir: `<run_dir>/data`.
        report: The data report (`inputs_hash` is the fingerprint of everything prep read).
        reused: True when data prepared earlier from the same inputs was kept.
        dataset_digest: Digest of the dataset's content (local files' sha256, or hub id, revision, fingerprint).
    """

    data_dir: Path
    report: dict[str, Any]
    reused: bool
    dataset_digest: str = ""


def inputs_hash(spec: DataSpec, tokenizer_fp: str, dataset_fp: str) -> str:
    """Return the sha256 keying the prepared data: everything that changes the output."""
    payload = {
        "version": PREP_FORMAT_VERSION,
        "data": spec.model_dump(exclude={"num_proc"}),
        "tokenizer": tokenizer_fp,
        "dataset": dataset_fp,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# What to do about damaged prepared data: prep writes the same bytes again from the same inputs
# (its digest is unchanged, so checkpoints trained on it still resume).
PREP_AGAIN_FIX = "delete `{data_dir}` and run `dream-job prep` with the same job file and `--set` options again"


def read_report(data_dir: Path) -> dict[str, Any] | None:
    """Return the report of prepared data in `data_dir`, or None when there is none."""
    path = data_dir / DATA_REPORT_NAME
    if not path.is_file() or not (data_dir / TRAIN_ROWS_DIR).is_dir():
        return None
    report = read_json(path, fix=PREP_AGAIN_FIX.format(data_dir=data_dir))
    if not isinstance(report.get("inputs_hash"), str):
        raise DataError(f"`{path}` is damaged: it has no `inputs_hash`", path=path,
                        hint=PREP_AGAIN_FIX.format(data_dir=data_dir))
    return report


def _read_batch(batch: dict[str, list[Any]], trace_source: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"question": [], "trace": [], "attempt": [], "solution": [], "skip": []}
    num_rows = len(batch["question"])
    for i in range(num_rows):
        text, reason = read_row({key: values[i] for key, values in batch.items()}, trace_source)  # type: ignore[arg-type]
        out["skip"].append(reason)
        out["question"].append(text.question if text else "")
        out["trace"].append(text.trace if text else "")
        out["attempt"].append(text.attempt if text else "")
        out["solution"].append(text.solution if text else "")
    return out


def _encode_batch(batch: dict[str, list[Any]], tokenizer: Any, spec: DataSpec) -> dict[str, list[Any]]:
    rows = [
        encode_row(
            tokenizer,
            question,
            trace,
            attempt,
            system_prompt=spec.system_prompt,
            max_length=spec.max_length,
            truncation=spec.truncation,
            marker=spec.truncation_marker,
        )
        for question, trace, attempt in zip(batch["question"], batch["trace"], batch["attempt"], strict=True)
    ]
    return {
        "input_ids": [r.input_ids for r in rows],
        "prompt_length": [r.prompt_length for r in rows],
        "num_tokens": [len(r.input_ids) for r in rows],
        "prompt_tokens": [r.prompt_tokens for r in rows],
        "trace_tokens": [r.trace_tokens for r in rows],
        "answer_tokens": [r.answer_tokens for r in rows],
        "truncated": [r.truncated for r in rows],
        "status": [r.status for r in rows],
    }


def _processes(spec: DataSpec) -> int | None:
    # None, not 1: `datasets` runs even one process through a pool, whose clean-up turns Ctrl-C
    # into a TimeoutError; in-process mapping stops cleanly.
    return spec.num_proc if spec.num_proc > 1 else None


def _check_columns(dataset: Any, spec: DataSpec) -> None:
    missing = [c for c in required_columns(spec.trace_source) if c not in dataset.column_names]
    if missing:
        other = "gemini" if spec.trace_source == "deepseek" else "deepseek"
        raise DataError(
            f"the dataset `{spec.dataset}` has no column {', '.join(f'`{c}`' for c in missing)} "
            f"(it has {', '.join(f'`{c}`' for c in dataset.column_names)})",
            hint=f"use data in the s1K-1.1 schema, or `--set data.trace_source={other}` if that trace is present",
        )


def _check_bad_rows(skipped: Counter[str], rows_read: int, spec: DataSpec) -> None:
    num_skipped = sum(skipped.values())
    if rows_read and num_skipped / rows_read <= spec.max_bad_row_fraction:
        return
    fix = (
        f"raise `data.max_length` (now {spec.max_length})"
        if skipped.get(PROMPT_TOO_LONG)
        else "fix the rows in the dataset"
    )
    raise DataError(
        f"{num_skipped} of {rows_read} rows of `{spec.dataset}` were skipped, more than "
        f"`data.max_bad_row_fraction` = {spec.max_bad_row_fraction}",
        caused_by=[f"{count} rows: {reason}" for reason, count in skipped.most_common()],
        hint=f"{fix}, or allow more with `--set data.max_bad_row_fraction=...`",
    )


def _check_duplicates(questions: list[Any], valid: list[int], holdout: list[int], spec: DataSpec) -> int:
    """Count the usable rows whose question repeats an earlier one; refuse a hold-out that training would see.

    Returns:
        How many usable rows repeat an earlier row's question (reported, and warned about once).

    Raises:
        DataError: A held-out question is also a training row's (the hold-out would measure memory).
    """
    def key(index: int) -> str:
        return " ".join(str(questions[index]).split())

    counts = Counter(key(i) for i in valid)
    num_duplicates = sum(count - 1 for count in counts.values())
    if not num_duplicates:
        return 0
    logger.warning("%d of the %d usable rows of `%s` repeat an earlier row's question", num_duplicates, len(valid),
                   spec.dataset)
    held = Counter(key(i) for i in holdout)
    leaked = sum(1 for question, count in held.items() if counts[question] > count)  # some copy is trained on
    if leaked:
        raise DataError(
            f"{leaked} of the {len(holdout)} held-out questions of `{spec.dataset}` are also training rows: "
            f"{num_duplicates} of its {len(valid)} usable rows repeat an earlier row's question",
            key="data.dataset", value=spec.dataset,
            hint="remove the repeated rows from the dataset, or train without a hold-out (`--set data.holdout_size=0`)",
        )
    return num_duplicates


def prepare_data(spec: JobSpec, *, before_write: Callable[[str], None] | None = None) -> PrepResult:
    """Prepare the training data of a job, or reuse it when the inputs have not changed.

    Args:
        spec: The validated job spec.
        before_write: Called with the new inputs hash before anything is (re)written; it may
            raise to keep the run dir as it is (the pipeline refuses to replace data a model was
            trained on).

    Returns:
        Where the data is, its report, and whether an earlier run's output was reused.

    Raises:
        DataError: Tokenizer or dataset missing or malformed, or too many bad rows. Earlier
            prepared data is left untouched.
    """
    data_spec = spec.data
    data_dir = spec.run_dir() / DATA_DIR
    tokenizer_name = spec.model.tokenizer or spec.model.base
    tokenizer = load_tokenizer(
        tokenizer_name, spec.model.revision, key="model.tokenizer" if spec.model.tokenizer else "model.base"
    )
    dataset, dataset_fp = load_rows(data_spec)
    pause_point("prep:rows")
    key = inputs_hash(data_spec, tokenizer_fingerprint(tokenizer), dataset_fp)
    existing = read_report(data_dir)
    if existing is not None and existing.get("inputs_hash") == key:
        logger.info("reusing prepared data in %s (inputs unchanged)", data_dir)
        return PrepResult(data_dir, existing, reused=True, dataset_digest=dataset_fp)
    if before_write is not None:
        before_write(key)

    _check_columns(dataset, data_spec)
    rows_read = len(dataset)
    texts = dataset.map(
        _read_batch,
        batched=True,
        fn_kwargs={"trace_source": data_spec.trace_source},
        remove_columns=dataset.column_names,
        num_proc=_processes(data_spec),
        keep_in_memory=True,
        desc="reading rows",
    )
    texts = texts.add_column("row_index", list(range(rows_read)))
    skip_reasons = texts["skip"]
    skipped: Counter[str] = Counter(reason for reason in skip_reasons if reason)
    valid = [i for i, reason in enumerate(skip_reasons) if not reason]
    _check_bad_rows(skipped, rows_read, data_spec)
    if data_spec.holdout_size >= len(valid):
        raise DataError(
            f"`data.holdout_size` ({data_spec.holdout_size}) leaves no training rows: `{data_spec.dataset}` has "
            f"{len(valid)} usable rows",
            hint=f"set `--set data.holdout_size=N` with N below {len(valid)}",
        )
    holdout = sorted(random.Random(data_spec.seed).sample(valid, min(data_spec.holdout_size, len(valid))))
    holdout_set = set(holdout)
    num_duplicates = _check_duplicates(read_column(texts, "question"), valid, holdout, data_spec)
    train_rows = texts.select([i for i in valid if i not in holdout_set], keep_in_memory=True)
    encoded = train_rows.map(
        _encode_batch,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "spec": data_spec},
        num_proc=_processes(data_spec),
        keep_in_memory=True,
        desc="tokenizing",
    )
    statuses = read_column(encoded, "status")
    skipped.update(s for s in statuses if s == PROMPT_TOO_LONG)
    _check_bad_rows(skipped, rows_read, data_spec)
    dropped = Counter(s for s in statuses if s not in (KEPT, PROMPT_TOO_LONG))
    kept = encoded.filter(lambda status: status == KEPT, input_columns="status", keep_in_memory=True)
    if len(kept) == 0:
        raise DataError(
            f"no training rows of `{data_spec.dataset}` are left after the hold-out and truncation",
            hint="lower `data.holdout_size`, raise `data.max_length` or use `--set data.truncation=keep_answer`",
        )
    measured = [i for i, s in enumerate(statuses) if s != PROMPT_TOO_LONG]
    columns = {part: read_column(encoded, f"{part}_tokens") for part in ("prompt", "trace", "answer")}
    lengths = {part: [values[i] for i in measured] for part, values in columns.items()}
    lengths["total"] = [sum(parts) for parts in zip(*lengths.values(), strict=True)]
    report = build_report(
        rows_read=rows_read,
        rows_holdout=len(holdout),
        skipped=dict(skipped),
        dropped=dict(dropped),
        rows_truncated=sum(read_column(kept, "truncated")),
        max_length=data_spec.max_length,
        lengths=lengths,
        kept_lengths=read_column(kept, "num_tokens"),
        extra={
            "inputs_hash": key,
            "rows_duplicate": num_duplicates,
            "dataset": data_spec.dataset,
            "split": data_spec.split,
            "trace_source": data_spec.trace_source,
            "truncation": data_spec.truncation,
            "tokenizer": tokenizer_name,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    kept = kept.select_columns(["input_ids", "prompt_length", "num_tokens", "truncated", "row_index"])
    holdout_rows = texts.select(holdout).select_columns(["row_index", "question", "solution", "trace", "attempt"])
    _write_atomically(data_dir, kept, holdout_rows, tokenizer, report)
    return PrepResult(data_dir, report, reused=False, dataset_digest=dataset_fp)


def read_column(dataset: Any, name: str) -> list[Any]:
    """Return one column of a `datasets.Dataset` as a Python list, in one Arrow read.

    Indexing the lazy column row by row takes minutes at 100k rows.
    """
    return dataset.with_format("arrow")[name].to_pylist()


def _write_atomically(data_dir: Path, kept: Any, holdout_rows: Any, tokenizer: Any, report: dict[str, Any]) -> None:
    """Write everything to a sibling temp folder, then swap it in for `data_dir` (`rundir.write_dir_atomically`)."""
    def write(folder: Path) -> None:
        kept.save_to_disk(str(folder / TRAIN_ROWS_DIR))
        pause_point("prep:write")  # a stop here leaves the earlier data as it was (the swap never ran)
        with (folder / HOLDOUT_NAME).open("w", encoding="utf-8") as f:
            for row in holdout_rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tokenizer.save_pretrained(str(folder / TOKENIZER_NAME))
        (folder / DATA_REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    write_dir_atomically(data_dir, write)
