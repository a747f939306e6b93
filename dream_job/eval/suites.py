"""Load the items of an evaluation suite: id, question and gold answer.

Suites and their default sources (data-and-eval.md §1, §8, §9):

| suite | default source | question | gold |
|---|---|---|---|
| `s1k_holdout` | `<run_dir>/data/holdout.jsonl` (written by `dream-job prep`) | `question` | `solution` |
| `gsm8k` | hub `openai/gsm8k`, config `main`, split `test` | `question` | `answer` after `####`, no commas |
| `math500` | hub `HuggingFaceH4/MATH-500`, split `test` | `problem` | `answer` |

`eval.sources.<suite>` replaces the default with a local file (or folder of files) in the same
schema, or another hub dataset id. `eval.limit` keeps a subsample chosen by `eval.seed` alone,
so the base and the fine-tuned model see the same items.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dream_job.data.source import read_local_dataset
from dream_job.data.tokenizer import is_local
from dream_job.errors import DataError
from dream_job.rundir import DATA_DIR, HOLDOUT_NAME
from dream_job.spec import EvalSpec



@dataclass(frozen=True)
class EvalItem:
    """One question to answer; `id` is unique within its suite and stable across runs."""

    id: str
    question: str
    gold: str


@dataclass(frozen=True)
class SuiteFormat:
    """Where a suite's rows come from by default and which columns hold what."""

    hub_id: str | None  # None: the run's own hold-out file
    hub_config: str | None
    question: str
    gold: str
    id_column: str | None  # None: the row's position in the split
    schema_name: str


SUITE_FORMATS: dict[str, SuiteFormat] = {
    "s1k_holdout": SuiteFormat(None, None, "question", "solution", "row_index", "s1K-1.1 hold-out"),
    "gsm8k": SuiteFormat("openai/gsm8k", "main", "question", "answer", None, "GSM8K"),
    "math500": SuiteFormat("HuggingFaceH4/MATH-500", None, "problem", "answer", "unique_id", "MATH-500"),
}
HOLDOUT_PATH = Path(DATA_DIR) / HOLDOUT_NAME
SPLIT = "test"


def gsm8k_gold(answer: str) -> str | None:
    """Return the final answer of a GSM8K solution: the text after `####`, commas removed.

    Returns None when the solution has no `####` line.
    """
    _, sep, tail = answer.rpartition("####")
    return tail.strip().replace(",", "") if sep else None


def default_source(suite: str, run_dir: Path) -> str:
    """Return where `suite` is read from when `eval.sources` does not name it."""
    fmt = SUITE_FORMATS[suite]
    return fmt.hub_id if fmt.hub_id is not None else str(run_dir / HOLDOUT_PATH)


def load_suite(suite: str, eval_spec: EvalSpec, run_dir: Path) -> list[EvalItem]:
    """Load a suite's items, subsampled to `eval.limit` by `eval.seed`.

    Args:
        suite: `s1k_holdout`, `gsm8k` or `math500`.
        eval_spec: The `eval` section (`sources`, `limit`, `seed`).
        run_dir: The run directory (for the hold-out file).

    Returns:
        The items in source order (the subsample keeps that order).

    Raises:
        DataError: The source cannot be read, has no rows, lacks a needed column, or (GSM8K)
            a row's answer has no `####` line.
    """
    fmt = SUITE_FORMATS[suite]
    source = eval_spec.sources.get(suite) or default_source(suite, run_dir)
    rows = _read_rows(suite, source, fmt)
    columns = set(rows.column_names)
    for column in (fmt.question, fmt.gold):
        if column not in columns:
            raise DataError(
                f"eval suite `{suite}` source `{source}` has no column `{column}`",
                hint=f"it has {', '.join(f'`{c}`' for c in sorted(columns))}; point `eval.sources.{suite}` at data "
                f"in the {fmt.schema_name} schema (`{fmt.question}`, `{fmt.gold}`)",
            )
    if len(rows) == 0:
        raise DataError(f"eval suite `{suite}` source `{source}` has no rows", hint=_fix_hint(suite))
    has_ids = fmt.id_column is not None and fmt.id_column in columns
    ids = [str(v) for v in rows[fmt.id_column]] if has_ids else [str(i) for i in range(len(rows))]
    if len(set(ids)) != len(ids):  # ids key resumed items; fall back to positions
        ids = [str(i) for i in range(len(rows))]
    items = []
    for position, (item_id, question, gold) in enumerate(zip(ids, rows[fmt.question], rows[fmt.gold], strict=True)):
        gold_text = str(gold)
        if suite == "gsm8k":
            parsed = gsm8k_gold(gold_text)
            if parsed is None:
                raise DataError(
                    f"eval suite `gsm8k` source `{source}`: row {position} has no `####` line in `answer`",
                    hint="GSM8K answers end with `#### <number>`; check the source",
                )
            gold_text = parsed
        items.append(EvalItem(id=f"{suite}-{item_id}", question=str(question), gold=gold_text))
    return subsample(items, eval_spec.limit, eval_spec.seed)


def subsample(items: list[EvalItem], limit: int | None, seed: int) -> list[EvalItem]:
    """Keep `limit` items chosen by `seed` (in their original order); all when `limit` is None or larger."""
    if limit is None or limit >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def _fix_hint(suite: str) -> str:
    if suite == "s1k_holdout":
        return "run `dream-job prep` (it writes `<run_dir>/data/holdout.jsonl`) or set `eval.sources.s1k_holdout`"
    return f"check `eval.sources.{suite}` (a local file or a hub id)"


def _read_rows(suite: str, source: str, fmt: SuiteFormat) -> Any:
    """Open `source` as a `datasets.Dataset`: a local file or folder, or a hub dataset's test split."""
    import datasets

    try:
        if not is_local(source):
            config = fmt.hub_config if source == fmt.hub_id else None
            return datasets.load_dataset(source, config, split=SPLIT)
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"eval suite `{suite}` source `{source}` does not exist", hint=_fix_hint(suite))
        local = read_local_dataset(path, SPLIT)
        if local is None:
            raise DataError(
                f"eval suite `{suite}` source `{source}` holds no single kind of data file",
                hint="use one .jsonl, .json, .parquet or .arrow file (or a folder of one kind)",
            )
        return local[0]
    except DataError:
        raise
    except (FileNotFoundError, ValueError, OSError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise DataError(
            f"cannot load eval suite `{suite}` from `{source}` (split `{SPLIT}`)",
            caused_by=[str(exc).splitlines()[0] if str(exc) else type(exc).__name__],
            hint=_fix_hint(suite) + "; gated datasets need `HF_TOKEN` in the environment",
        ) from None
