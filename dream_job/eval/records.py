"""The files evaluation writes under `<run_dir>/eval/`, and how they resume.

    items-<label>-<suite>.jsonl   one JSON object per item (see `ITEM_KEYS`), in suite order
    summary.json                  {label: {suite: stats}} for every model and suite evaluated

Items are appended batch by batch while a suite runs (each batch flushed and fsynced), so a
killed run loses at most the batch in flight; when the suite finishes the file is rewritten in
suite order (temp file, then rename). An item is reused on a re-run only when its `key` (sampler
settings, prompt settings, model) and its gold answer are unchanged. `summary.json` is always
replaced whole (temp file, then rename), merged with the labels and suites already in it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dream_job.rundir import EVAL_SUMMARY_NAME, write_json_atomically, write_text_atomically

logger = logging.getLogger(__name__)

ITEM_KEYS = ("id", "key", "prompt", "output", "extracted", "gold", "correct", "tokens", "seconds")


def items_name(label: str, suite: str) -> str:
    """Return the file name of a model's items for a suite."""
    return f"items-{label}-{suite}.jsonl"


def read_items(path: Path, *, key: str, golds: dict[str, str], repair: bool = True) -> dict[str, dict[str, Any]]:
    """Return the reusable items of `path` by id: same `key`, an id in `golds` with the same gold.

    A torn last line (a run killed mid-write) is skipped; of an id written twice, the last record
    counts. When anything was skipped and `repair` is on, the file is rewritten (atomically) with
    only the reusable items, so new items are appended to clean data (processes that share an
    evaluation only read: their parent repairs).
    """
    if not path.is_file():
        return {}
    kept: dict[str, dict[str, Any]] = {}
    num_lines = 0
    # Bytes, not text: a line torn inside a UTF-8 character must not make the whole file unreadable.
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        num_lines += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("skipping a torn line in `%s`", path)
            continue
        if record.get("key") == key and golds.get(record.get("id")) == record.get("gold"):
            kept[record["id"]] = record
    if len(kept) != num_lines and repair:
        logger.info("`%s`: reusing %d of %d items (the others have other settings or gold)", path, len(kept), num_lines)
        write_items(path, kept.values())
    return kept


def read_item_file(path: Path) -> list[dict[str, Any]]:
    """Return every record of an item file in file order, skipping torn lines; [] when it is missing."""
    if not path.is_file():
        return []
    records = []
    # Bytes, not text: a line torn inside a UTF-8 character must not make the whole file unreadable.
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # blank, or torn by a kill mid-write; `read_items` repairs the file on the next run
    return records


def append_items(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records to `path` and fsync, so they survive the process being killed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def write_items(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace `path` with `records`, atomically."""
    write_text_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def suite_stats(records: list[dict[str, Any]], gen_length: int) -> dict[str, Any]:
    """Return n, correct, accuracy, generated tokens, seconds, tokens/s and tokens per forward of a suite.

    `tokens_per_forward` is the parallel-decoding rate: generated slots (`gen_length` per item,
    EOS fill included) per forward pass of the item's batch, over all items; 1.0 means one token
    per step. None when an item was written before the passes were recorded.
    """
    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    num_tokens = sum(int(r["tokens"]) for r in records)
    seconds = sum(float(r["seconds"]) for r in records)
    passes = [r.get("forward_passes") for r in records]
    total_passes = sum(passes) if passes and None not in passes else 0
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "num_tokens": num_tokens,
        "seconds": seconds,
        "tokens_per_second": num_tokens / seconds if seconds > 0 else None,
        "tokens_per_forward": gen_length * n / total_passes if total_passes else None,
    }


def read_summary(eval_dir: Path) -> dict[str, dict[str, Any]]:
    """Return `summary.json` of `eval_dir` ({label: {suite: stats}}), or {} when there is none."""
    path = eval_dir / EVAL_SUMMARY_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def update_summary(eval_dir: Path, label: str, suite: str, entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Set `summary[label][suite] = entry` in `summary.json`, keeping every other entry; atomic.

    Returns:
        The whole summary as written.
    """
    summary = read_summary(eval_dir)
    summary.setdefault(label, {})[suite] = entry
    write_json_atomically(eval_dir / EVAL_SUMMARY_NAME, summary, ensure_ascii=False)
    return summary
