"""The model's shape: the parameter counts the memory and time models need.

Input: `model.base` of the spec: a local folder's `config.json`, or a Dream 7B hub id (shape
shipped here, dream.md §2/§4: 7,615,616,512 parameters). Output: `ModelShape`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dream_job.errors import BudgetError
from dream_job.spec import JobSpec


@dataclass(frozen=True)
class ModelShape:
    """A Qwen2-style decoder (Dream): q/k/v with bias, o without, SwiGLU MLP, untied lm_head."""

    hidden: int
    intermediate: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab: int
    tied_embeddings: bool = False

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.num_heads * self.num_kv_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """Return (in, out) features of each linear of one decoder layer, by module name."""
        d, i, kv = self.hidden, self.intermediate, self.kv_dim
        return {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
                "gate_proj": (d, i), "up_proj": (d, i), "down_proj": (i, d)}

    @property
    def layer_params(self) -> int:
        """Weights + biases (q, k, v) + two RMSNorm weights of one decoder layer."""
        weights = sum(a * b for a, b in self.linear_shapes().values())
        return weights + self.hidden + 2 * self.kv_dim + 2 * self.hidden

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def root_params(self) -> int:
        """The FSDP root unit: embedding, final norm and (untied) lm_head."""
        return self.embed_params * (1 if self.tied_embeddings else 2) + self.hidden

    @property
    def num_params(self) -> int:
        return self.num_layers * self.layer_params + self.root_params

    @property
    def forward_matmul_params(self) -> int:
        """Weights a forward multiplies per token when the lm_head runs at every position."""
        return self.num_layers * sum(a * b for a, b in self.linear_shapes().values()) + self.embed_params

    def lora_params(self, rank: int, targets: list[str]) -> int:
        """Adapter parameters: rank x (in + out) per targeted linear per layer."""
        shapes = self.linear_shapes()
        return self.num_layers * sum(rank * sum(shapes[t]) for t in targets if t in shapes)

    def lora_input_features(self, targets: list[str]) -> int:
        """Sum of in-features of the targeted linears of one layer (each gets its own dropout copy)."""
        shapes = self.linear_shapes()
        return sum(shapes[t][0] for t in targets if t in shapes)


# dream.md §2 (config.json of Dream-v0-*-7B): 3584 hidden, 18944 MLP, 28 layers, 28/4 heads, 152,064 vocab.
DREAM_7B = ModelShape(hidden=3584, intermediate=18944, num_layers=28, num_heads=28, num_kv_heads=4, vocab=152064)
KNOWN = {"dream-org/dream-v0-base-7b": DREAM_7B, "dream-org/dream-v0-instruct-7b": DREAM_7B}


def model_shape(spec: JobSpec) -> ModelShape:
    """Return the shape of `model.base`: its local `config.json`, or the shipped Dream 7B shape.

    Raises:
        BudgetError: `model.base` is neither a local folder with `config.json` nor a known hub id.
    """
    base = spec.model.base
    folder = Path(base).expanduser()
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return ModelShape(
            hidden=config["hidden_size"], intermediate=config["intermediate_size"],
            num_layers=config["num_hidden_layers"], num_heads=config["num_attention_heads"],
            num_kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
            vocab=config["vocab_size"], tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    if base.lower() in KNOWN:
        return KNOWN[base.lower()]
    raise BudgetError(
        f"the estimate does not know the shape of `model.base` `{base}`",
        hint="use a Dream 7B hub id (`Dream-org/Dream-v0-Base-7B`) or a local folder with its `config.json`",
    )
