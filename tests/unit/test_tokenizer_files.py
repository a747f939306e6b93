"""The export's tokenizer config: what transformers 5 saved, rewritten so 4.46.2 reads it too.

The loading itself, under both versions, is tested in `tests/integration/test_export_tokenizer.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

from dream_job.data.tokenizer import load_tokenizer
from dream_job.model.tokenizer_files import (
    CHAT_TEMPLATE_NAME,
    TOKENIZER_CONFIG_NAME,
    portable_tokenizer_config,
    tokenizer_sources,
    write_tokenizer_files,
)

from tests.conftest import TINY_DREAM

# What transformers 5 saves for Dream's hub folder loaded as `Qwen2Tokenizer` (remote auto_map kept).
SAVED_BY_5 = {
    "add_prefix_space": False, "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
    "backend": "tokenizers", "bos_token": "<|beginoftext|>", "clean_up_tokenization_spaces": False,
    "eos_token": "<|endoftext|>", "errors": "replace", "extra_special_tokens": ["<|beginoftext|>", "<|mask|>"],
    "is_local": True, "mask_token": "<|mask|>", "model_max_length": 131072, "pad_token": "<|endoftext|>",
    "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
}


def test_portable_config_names_the_fast_class_and_keeps_the_special_tokens() -> None:
    assert portable_tokenizer_config(SAVED_BY_5, "{{ x }}") == {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": None, "pad_token": "<|endoftext|>", "mask_token": "<|mask|>", "model_max_length": 131072,
        "clean_up_tokenization_spaces": False, "split_special_tokens": False,
        "additional_special_tokens": ["<|beginoftext|>", "<|mask|>"], "chat_template": "{{ x }}",
    }
    named = portable_tokenizer_config({"extra_special_tokens": {"think": "<think>"}}, None)
    assert named == {"tokenizer_class": "PreTrainedTokenizerFast", "additional_special_tokens": ["<think>"]}


def test_written_files_keep_the_tokenizer_and_put_the_template_in_both_places(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    load_tokenizer(str(TINY_DREAM)).save_pretrained(saved)  # as prep saves it
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")  # the export's own: never replaced
    write_tokenizer_files(tokenizer_sources(saved, None, base_tokenizer=False) + [TINY_DREAM / "config.json"], out)
    assert (out / "config.json").read_text() == "{}"
    assert (out / "tokenizer.json").read_bytes() == (saved / "tokenizer.json").read_bytes()
    config = json.loads((out / TOKENIZER_CONFIG_NAME).read_text())
    assert config["chat_template"] == (out / CHAT_TEMPLATE_NAME).read_text() == (saved / CHAT_TEMPLATE_NAME).read_text()
