"""The held-out rows as token sequences, for the trainer's validation loss.

Prep writes the held-out rows as text (`<run_dir>/data/holdout.jsonl`, also read by the
`s1k_holdout` eval suite) next to the tokenizer it used (`<run_dir>/data/tokenizer/`). This
module encodes them exactly like the training rows (`encode.encode_row` with the job's `data`
settings), so the validation loss is the training objective on rows the model never trains on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dream_job.data.encode import KEPT, encode_row
from dream_job.data.tokenizer import load_tokenizer
from dream_job.rundir import HOLDOUT_NAME, TOKENIZER_NAME
from dream_job.spec import DataSpec


@dataclass(frozen=True)
class HoldoutRow:
    """One encoded held-out row: its tokens and where the response starts."""

    row_index: int
    input_ids: list[int]
    prompt_length: int


def read_holdout_tokens(data_dir: Path, spec: DataSpec) -> list[HoldoutRow]:
    """Encode `<data_dir>/holdout.jsonl` with the prepared tokenizer, as prep encodes training rows.

    Rows the encoding drops (prompt too long, `truncation: drop`) are left out, like in training.

    Args:
        data_dir: `<run_dir>/data`, written by `dream-job prep`.
        spec: The job's data settings (system prompt, `max_length`, truncation).

    Returns:
        The rows in file order; empty when prep held none out (`data.holdout_size: 0`) or the
        file is missing (data prepared by an older version).
    """
    path = Path(data_dir) / HOLDOUT_NAME
    if not path.is_file():
        return []
    texts = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        return []
    tokenizer = load_tokenizer(str(Path(data_dir) / TOKENIZER_NAME), key="data")
    rows = []
    for text in texts:
        encoded = encode_row(tokenizer, text["question"], text["trace"], text["attempt"],
                             system_prompt=spec.system_prompt, max_length=spec.max_length,
                             truncation=spec.truncation, marker=spec.truncation_marker)
        if encoded.status == KEPT:
            rows.append(HoldoutRow(int(text["row_index"]), list(encoded.input_ids), int(encoded.prompt_length)))
    return rows
