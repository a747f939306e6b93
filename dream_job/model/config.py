"""Dream 7B's architecture hyper-parameters and its HF `config.json`, read and written.

`DreamConfig` defaults to Dream 7B's published config.json (dream.md §2); `from_dict` refuses keys
that would ask for maths `dream.py` does not have, and keeps the others so `to_hf_dict` writes
them back unchanged and the export loads with the official remote code (dream.md §18).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# Keys of Dream's published config.json that this implementation does not read; written back
# as-is by `to_hf_dict` so the export loads with the official remote code (dream.md §18).
_HF_DEFAULTS: dict[str, Any] = {
    "architectures": ["DreamModel"],
    "attention_dropout": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_dream.DreamConfig",
        "AutoModel": "modeling_dream.DreamModel",
    },
    "hidden_act": "silu",
    "model_type": "Dream",
    "rope_scaling": None,
    "sliding_window": None,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.2",  # the version the remote code is pinned to (dream.md §1)
    "use_cache": True,
    "use_mrope": False,
    "use_sliding_window": False,
}
# HF keys whose other values would change the maths below; a config asking for them is refused.
_FIXED_HF_KEYS = ("hidden_act", "rope_scaling", "use_sliding_window", "use_mrope", "attention_dropout")


@dataclass(frozen=True)
class DreamConfig:
    """Architecture hyper-parameters; the defaults are Dream 7B's published config.json."""

    vocab_size: int = 152064  # ids used only up to 151666; Qwen pads the table for GPU-friendly shapes
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28  # head dim 3584 / 28 = 128
    num_key_value_heads: int = 4  # GQA 7:1, so k/v project to 4 * 128 = 512
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 131072  # advertised; Dream is trained on 2048 tokens
    initializer_range: float = 0.02
    mask_token_id: int = 151666
    pad_token_id: int = 151643
    eos_token_id: int = 151643
    bos_token_id: int = 151643  # config value; the tokenizer's bos is 151665 (dream.md §3)
    tie_word_embeddings: bool = False
    # Unused HF keys of the file this was loaded from (auto_map, _name_or_path, ...), kept so
    # `to_hf_dict` writes them back unchanged.
    hf_extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.tie_word_embeddings:
            raise ValueError("`tie_word_embeddings` must be `false` for Dream (separate lm_head), got `true`")
        H, K = self.num_attention_heads, self.num_key_value_heads
        if self.hidden_size % H or H % K:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` ({H}), "
                f"and that by `num_key_value_heads` ({K})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DreamConfig:
        """Build a config from an HF config dict, keeping the keys it does not use in `hf_extra`.

        Raises:
            ValueError: A key asks for maths this implementation does not have (e.g. a
                `hidden_act` other than `silu`, RoPE scaling, sliding window), or tied embeddings.
        """
        for key in _FIXED_HF_KEYS:
            if key in d and d[key] != (allowed := _HF_DEFAULTS[key]):
                raise ValueError(f"config key `{key}` must be `{allowed!r}` for Dream, got `{d[key]!r}`")
        names = {f.name for f in fields(cls)} - {"hf_extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: copy.deepcopy(v) for k, v in d.items() if k not in names}
        config = cls(**known, hf_extra=extra)
        if (head_dim := extra.get("head_dim", config.head_dim)) != config.head_dim:
            raise ValueError(f"config key `head_dim` must be `{config.head_dim}` (hidden/heads), got `{head_dim}`")
        return config

    @classmethod
    def from_json_file(cls, path: str | Path) -> DreamConfig:
        """Read an HF `config.json` (see `from_dict`)."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_pretrained_dir(cls, path: str | Path) -> DreamConfig:
        """Read `config.json` from an HF model folder (see `from_dict`)."""
        return cls.from_json_file(Path(path) / "config.json")

    def to_hf_dict(self, *, torch_dtype: str | None = None) -> dict[str, Any]:
        """Return a config.json dict shaped like Dream's published one, keys sorted as HF writes them.

        Args:
            torch_dtype: Overrides the `torch_dtype` entry (e.g. `"float32"`); default keeps the
                loaded file's value, or `"bfloat16"`.
        """
        out = {**copy.deepcopy(_HF_DEFAULTS), "max_window_layers": self.num_hidden_layers}
        out.update(copy.deepcopy(self.hf_extra))
        out.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "hf_extra"})
        if torch_dtype is not None:
            out["torch_dtype"] = torch_dtype
        return dict(sorted(out.items()))

    def num_parameters(self) -> int:
        """Count parameters from the shapes alone (7,615,616,512 for Dream 7B, dream.md §4)."""
        D, I, V = self.hidden_size, self.intermediate_size, self.vocab_size
        KE = self.num_key_value_heads * self.head_dim
        attention = (D * D + D) + 2 * (D * KE + KE) + D * D  # q (bias), k and v (bias), o (no bias)
        per_layer = attention + 3 * D * I + 2 * D  # gate/up/down + two norms
        return self.num_hidden_layers * per_layer + V * D + D + V * D  # embed, final norm, lm_head
