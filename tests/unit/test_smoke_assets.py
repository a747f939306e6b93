"""The committed smoke assets are exactly what their generator writes."""

from __future__ import annotations

from pathlib import Path

from dream_job.data.smoke_assets import write_smoke_assets
from dream_job.data.synthetic import addition_trace, generate_rows, one_digit_rows
from tests.conftest import REPO

# Not written by `write_smoke_assets`: the pre-training job (hand-written) and the base it trains
# (`python -m dream_job.smoke_base`, minutes of training; checked below and by the smoke run).
TRAINED = ("smoke-base.yaml", "smoke-base")


def test_committed_assets_are_reproducible(tmp_path: Path) -> None:
    write_smoke_assets(tmp_path)
    committed = REPO / "jobs" / "assets"
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated == sorted(p.relative_to(committed) for p in committed.rglob("*")
                               if p.is_file() and p.relative_to(committed).parts[0] not in TRAINED)
    for relative in generated:
        assert (tmp_path / relative).read_bytes() == (committed / relative).read_bytes(), relative


def test_rows_are_correct_additions_in_the_s1k_schema() -> None:
    rows = generate_rows(50, seed=7)
    assert rows == generate_rows(50, seed=7) != generate_rows(50, seed=8)
    for row in rows:
        meta = eval(row["metadata"])  # s1K-1.1 stores metadata as a Python repr
        assert row["solution"] == str(meta["a"] + meta["b"])
        assert f"\\boxed{{{row['solution']}}}" in row["deepseek_attempt"]
        assert row["deepseek_thinking_trajectory"].endswith("Correct.")


def test_trace_carries() -> None:
    trace = addition_trace(95, 17)
    assert "ones: 5 + 7 = 12, write 2, carry 1." in trace
    assert "tens: 9 + 1 plus carry 1 = 11, write 1, carry 1." in trace
    assert "So 95 + 17 = 112." in trace


def test_one_digit_rows_split_the_sums_at_the_carry() -> None:
    carry, no_carry = one_digit_rows(carry=True), one_digit_rows(carry=False)
    assert (len(carry), len(no_carry)) == (180, 220)  # 45 and 55 of the 100 pairs, 4 phrasings each
    assert [r["question"] for r in carry[:4]] == [
        "What is 1 + 9?", "What is 1 plus 9?", "Add 1 and 9.", "Compute 1 + 9."]
    assert (carry[0]["deepseek_thinking_trajectory"], carry[0]["deepseek_attempt"], carry[0]["solution"]) == (
        "1+9+0=10", "10", "10")
    assert (no_carry[-1]["question"], no_carry[-1]["deepseek_thinking_trajectory"], no_carry[-1]["solution"]) == (
        "Compute 9 + 0.", "9+0+0=09", "9")
    carry_sums = sorted(a + b for a in range(10) for b in range(10) if a + b >= 10)
    assert sorted(int(r["solution"]) for r in carry[::4]) == carry_sums
    assert max(int(r["solution"]) for r in no_carry) == 9
    assert len({r["question"] for r in carry + no_carry}) == 400


def test_committed_smoke_base_is_the_init_config_with_weights() -> None:
    import json

    from safetensors import safe_open

    init, base = REPO / "jobs" / "assets" / "smoke-base-init", REPO / "jobs" / "assets" / "smoke-base"
    for name in ("tokenizer.json", "chat_template.jinja"):  # tokenizer_config.json gains load-time keys
        assert (base / name).read_bytes() == (init / name).read_bytes(), name
    shape = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")
    init_config, base_config = (json.loads((d / "config.json").read_text()) for d in (init, base))
    assert [base_config[k] for k in shape] == [init_config[k] for k in shape] == [128, 4, 4, 2, 384]
    with safe_open(str(base / "model.safetensors"), framework="pt") as weights:
        assert weights.get_tensor("model.embed_tokens.weight").shape == (512, 128)
