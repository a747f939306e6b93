"""Evaluation split over several processes: which batches each one decodes, and its part files.

The items of a suite still to decode are sorted by prompt length and cut into batches of
`eval.batch_size`, exactly as one process cuts them; process `i` of `n` decodes batches `i`,
`i + n`, `i + 2n`, ... (neighbouring batches have similar lengths, so the shares take similar
time) and appends them to its own part file, `eval/parts/items-<label>-<suite>.<i>.jsonl`. The
parent folds every part into the suite's items file before it starts the processes and after they
end, so a run killed anywhere keeps every batch that was written, whatever the next run's `n`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dream_job.eval.records import append_items, read_item_file

T = TypeVar("T")

PARTS_DIR = "parts"  # under `<run_dir>/eval/`
_SHARD = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class Shard:
    """Process `index` (from 0) of `count` that share an evaluation."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Read `i/n` (0 <= i < n).

        Raises:
            ValueError: The text is not of that form.
        """
        match = _SHARD.match(text.strip())
        if not match or not 0 <= int(match[1]) < int(match[2]):
            raise ValueError(f"`{text}` is not `i/n` with 0 <= i < n")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_batches(pending: Sequence[T], batch_size: int, shard: Shard | None) -> list[list[T]]:
    """Cut `pending` (already in decoding order) into batches and return those of `shard` (all for None)."""
    batches = [list(pending[start : start + batch_size]) for start in range(0, len(pending), batch_size)]
    return batches if shard is None else batches[shard.index :: shard.count]


def part_path(items_path: Path, index: int) -> Path:
    """Return the part file that process `index` writes for the items file `items_path`."""
    return items_path.parent / PARTS_DIR / f"{items_path.stem}.{index}{items_path.suffix}"


def merge_parts(items_path: Path) -> int:
    """Append the records of every part file of `items_path` to it, then delete those parts.

    Safe to repeat after a kill at any point: a record appended twice is read once (the items
    file keeps the last record of an id; see `records.read_items`).

    Returns:
        How many records were moved.
    """
    folder = items_path.parent / PARTS_DIR
    parts = sorted(folder.glob(f"{items_path.stem}.*{items_path.suffix}")) if folder.is_dir() else []
    moved = 0
    for part in parts:
        if not re.fullmatch(rf"{re.escape(items_path.stem)}\.\d+{re.escape(items_path.suffix)}", part.name):
            continue  # another suite whose name extends this one's
        records = read_item_file(part)
        if records:
            append_items(items_path, records)
        part.unlink()
        moved += len(records)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return moved
