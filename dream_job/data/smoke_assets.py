"""Write the smoke job's committed assets: s1K-1.1-schema rows and a tiny Dream model folder.

    python -m dream_job.data.smoke_assets jobs/assets

writes `smoke/s1k-smoke.jsonl` (300 synthetic addition word problems with a prose trace, the
tests' rows) and `tiny-dream/` (`config.json` of a 2-layer Dream-architecture model whose token
ids match the tiny tokenizer, plus that tokenizer), and the smoke job's inputs:
`smoke/one-digit-no-carry.jsonl` (what its base is pre-trained on), `smoke/one-digit-carry.jsonl`
(what `jobs/smoke.yaml` fine-tunes on) and `smoke-base-init/` (the base's 4-layer config and the
same tokenizer, the random start of the pre-training). The output is deterministic; a test
regenerates it and compares with the committed files. The pre-trained base itself,
`smoke-base/`, comes from training: `python -m dream_job.smoke_base` (see there).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dream_job.data.layout import response_text
from dream_job.data.synthetic import generate_rows, one_digit_rows, write_jsonl
from dream_job.data.tokenizer import EOS_TOKEN, MASK_TOKEN, build_tiny_tokenizer

NUM_SMOKE_ROWS = 300
TINY_VOCAB_SIZE = 512  # padded like Dream's 152064 > 151667 used ids
# The smoke base's size: the smallest tried that learns the carry sums in a few hundred steps
# (4 x 128, 0.92 M parameters, 1.8 MB in bf16).
SMOKE_BASE_SHAPE = {"hidden_size": 128, "num_hidden_layers": 4, "max_window_layers": 4, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "intermediate_size": 384}


def tiny_dream_config(tokenizer: Any) -> dict[str, Any]:
    """Return a Dream `config.json` dict at tiny scale with the tokenizer's special ids."""
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    return {
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": eos,  # Dream's config uses the EOS id as bos_token_id too
        "eos_token_id": eos,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 176,
        "mask_token_id": tokenizer.convert_tokens_to_ids(MASK_TOKEN),
        "max_position_embeddings": 4096,
        "max_window_layers": 2,
        "model_type": "Dream",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pad_token_id": eos,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": False,
        "use_mrope": False,
        "use_sliding_window": False,
        "vocab_size": TINY_VOCAB_SIZE,
    }


def write_smoke_assets(out: Path) -> None:
    """Write `out/smoke/*.jsonl`, `out/tiny-dream/` and `out/smoke-base-init/` (config + tokenizer)."""
    rows = generate_rows(NUM_SMOKE_ROWS, seed=0)
    write_jsonl(rows, out / "smoke" / "s1k-smoke.jsonl")
    corpus = [r["question"] + "\n" + response_text(r["deepseek_thinking_trajectory"], r["deepseek_attempt"]) for r in rows]
    tokenizer = build_tiny_tokenizer(corpus)
    model_dir = out / "tiny-dream"
    tokenizer.save_pretrained(str(model_dir))
    config = tiny_dream_config(tokenizer)
    (model_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_jsonl(one_digit_rows(carry=False), out / "smoke" / "one-digit-no-carry.jsonl")
    write_jsonl(one_digit_rows(carry=True), out / "smoke" / "one-digit-carry.jsonl")
    init_dir = out / "smoke-base-init"
    tokenizer.save_pretrained(str(init_dir))
    init_config = {**config, **SMOKE_BASE_SHAPE}
    (init_dir / "config.json").write_text(json.dumps(init_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    write_smoke_assets(parser.parse_args().out)


if __name__ == "__main__":
    main()
