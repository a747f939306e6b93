"""Dream 7B: Qwen2 blocks with bidirectional attention and the LM (the config is `config.py`).

Dream (`Dream-org/Dream-v0-Base-7B`, arXiv 2508.15487) is Qwen2.5-7B continually pretrained as
a masked-diffusion LM; its only architectural change is that the causal mask is removed. The
references are the hub's remote code `modeling_dream.py` and transformers'
`models/qwen2/modeling_qwen2.py`; facts are in `reference/dream.md` §2, §4–6. Everything below is
inherited from Qwen2.5:

- pre-norm residual blocks: x + attn(norm(x)), then x + mlp(norm(x)); final norm; untied lm_head;
- RMSNorm computed in fp32 and cast back before the gain (as Qwen2 does, so bf16 runs match);
- RoPE rotate-half, inv_freq = theta^(-2j/E), cos/sin built in fp32 then cast to the activations;
- GQA (28 query heads share 4 kv heads), q/k/v projections with bias, o_proj without;
- SwiGLU MLP: down(silu(gate(x)) * up(x)).

Attention is fully bidirectional (`is_causal=False`). A padding mask is optional: without one,
SDPA may use its flash kernel; with one, every query also attends to itself so a padded row is
never fully masked (that gives NaN); outputs at padded positions are finite garbage.

The logit shift (dream.md §6) is NOT applied here. Dream keeps Qwen's autoregressive alignment:
the hidden state at position i-1 predicts the token at position i, so callers score
`shifted[:, i] = logits[:, i-1]` (and `shifted[:, 0] = logits[:, 0]`) against the clean token at
i. `hidden_states()` and `forward()` return unshifted values for every position.

Parameter names equal the HF checkpoint keys (`model.layers.N.self_attn.q_proj.weight`, ...,
`lm_head.weight`), so weights load 1:1 (see `weights.py`).

KV cache (`forward_cached`, used by the fast sampler): run the layers over a subset of Q
positions while the keys/values of P other positions come from a cache (per layer, post-RoPE).
Attention stays bidirectional: each query attends to the P cached keys and to all Q current
keys. With a cache computed from the same tokens this is exact; the fast sampler reuses a cache
computed before some tokens changed, which is Fast-dLLM's approximation (see the sampler).

Shape letters: B batch, L sequence length, D hidden size, H query heads, K kv heads,
E head dim (D / H), I MLP intermediate size, V vocab size; with a cache: Q current (query)
positions, P cached positions, S = P + Q keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dream_job.model.config import DreamConfig  # re-exported: the model and its config are read together

class DreamRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x_BLD: Tensor) -> Tensor:
        # fp32 statistics even for bf16 inputs; cast back *before* the gain, exactly like Qwen2.
        x32_BLD = x_BLD.float()
        x32_BLD = x32_BLD * torch.rsqrt(x32_BLD.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32_BLD.to(x_BLD.dtype)


class DreamRotaryEmbedding(nn.Module):
    """RoPE tables: positions -> (cos, sin) of shape (B, L, E), built in fp32."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        # Non-persistent: derived from the config, so not part of the checkpoint's keys.
        self.register_buffer("inv_freq", self.compute_inv_freq(device=None), persistent=False)

    def compute_inv_freq(self, device: torch.device | str | None) -> Tensor:
        # theta^(-2j/E), j = 0..E/2-1, written as Qwen2 writes it so the fp32 values are identical.
        E = self.head_dim
        return 1.0 / (self.theta ** (torch.arange(0, E, 2, dtype=torch.int64, device=device).float() / E))

    def reset_parameters(self, device: torch.device | str | None = None) -> None:
        """Recompute `inv_freq` in fp32 on `device` (default: where it is now)."""
        self.inv_freq = self.compute_inv_freq(self.inv_freq.device if device is None else device)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # `.to(torch.bfloat16)` would round inv_freq to bf16 (angle errors of radians by position
        # 2048) and `to_empty()` leaves it uninitialised; recompute it after every move or cast.
        super()._apply(fn, recurse)
        self.reset_parameters()
        return self

    def forward(self, position_ids_BL: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        freqs_BLE2 = position_ids_BL.float()[..., None] * self.inv_freq  # (B, L, E/2)
        angles_BLE = torch.cat((freqs_BLE2, freqs_BLE2), dim=-1)  # (B, L, E): rotate-half layout
        return angles_BLE.cos().to(dtype), angles_BLE.sin().to(dtype)


def rotate_half(x_BHLE: Tensor) -> Tensor:
    x1_BHLE2, x2_BHLE2 = x_BHLE.chunk(2, dim=-1)
    return torch.cat((-x2_BHLE2, x1_BHLE2), dim=-1)


def apply_rope(x_BHLE: Tensor, cos_BLE: Tensor, sin_BLE: Tensor) -> Tensor:
    cos_B1LE, sin_B1LE = cos_BLE.unsqueeze(1), sin_BLE.unsqueeze(1)  # broadcast over heads
    return x_BHLE * cos_B1LE + rotate_half(x_BHLE) * sin_B1LE


def make_attention_mask(attention_mask_BL: Tensor) -> Tensor:
    """Turn a 1/0 (or bool) padding mask into SDPA's boolean mask, True = may attend.

    A query may attend to every valid key, and always to itself, so a padded query row is never
    fully masked: softmax over no keys is 0/0, which some SDPA kernels and torch versions return
    as NaN, and NaN would leak into the loss and gradients through the batch.

    Args:
        attention_mask_BL: 1/True for real tokens, 0/False for padding.

    Returns:
        mask_B1LL: Boolean mask that broadcasts over heads.
    """
    L = attention_mask_BL.shape[1]
    key_valid_B11L = attention_mask_BL.bool()[:, None, None, :]
    self_11LL = torch.eye(L, dtype=torch.bool, device=attention_mask_BL.device)[None, None]
    return key_valid_B11L | self_11LL  # (B, 1, L, L)


def make_cached_attention_mask(key_mask_BS: Tensor, num_queries: int) -> Tensor:
    """Build SDPA's boolean mask for Q queries over S = P + Q keys (cached keys first).

    Like `make_attention_mask`, a query may attend to every valid key and always to itself (its
    own key is key P + q), so a padded query row is never fully masked.

    Args:
        key_mask_BS: 1/True for real tokens, 0/False for padding, in key order (cached, then current).
        num_queries: Q, the number of current positions (the last Q keys).

    Returns:
        mask_B1QS: Boolean mask that broadcasts over heads.
    """
    S, Q = key_mask_BS.shape[1], num_queries
    key_valid_B11S = key_mask_BS.bool()[:, None, None, :]
    self_QS = torch.zeros(Q, S, dtype=torch.bool, device=key_mask_BS.device)
    self_QS[:, S - Q :] = torch.eye(Q, dtype=torch.bool, device=key_mask_BS.device)
    return key_valid_B11S | self_QS[None, None]  # (B, 1, Q, S)


# Per layer, the post-RoPE keys and values of the cached positions: (k_BKPE, v_BKPE).
KVCache = list[tuple[Tensor, Tensor]]


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        D, E = config.hidden_size, config.head_dim
        H, K = config.num_attention_heads, config.num_key_value_heads
        self.num_heads, self.num_kv_heads, self.head_dim = H, K, E
        self.q_proj = nn.Linear(D, H * E, bias=True)
        self.k_proj = nn.Linear(D, K * E, bias=True)
        self.v_proj = nn.Linear(D, K * E, bias=True)
        self.o_proj = nn.Linear(H * E, D, bias=False)

    def forward(self, x_BLD: Tensor, cos_BLE: Tensor, sin_BLE: Tensor, mask_B1LL: Tensor | None) -> Tensor:
        """Attend every position to every position (no cache): `forward_cached` with nothing cached."""
        return self.forward_cached(x_BLD, cos_BLE, sin_BLE, mask_B1LL, None)[0]

    def forward_cached(
        self,
        x_BQD: Tensor,
        cos_BQE: Tensor,
        sin_BQE: Tensor,
        mask_B1QS: Tensor | None,
        past_kv: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Attend from Q positions to P cached keys plus their own; return output and their (k, v)."""
        B, Q, _ = x_BQD.shape
        H, K, E = self.num_heads, self.num_kv_heads, self.head_dim
        q_BHQE = self.q_proj(x_BQD).view(B, Q, H, E).transpose(1, 2)  # (B, H, Q, E)
        k_BKQE = self.k_proj(x_BQD).view(B, Q, K, E).transpose(1, 2)  # (B, K, Q, E)
        v_BKQE = self.v_proj(x_BQD).view(B, Q, K, E).transpose(1, 2)  # (B, K, Q, E)
        q_BHQE, k_BKQE = apply_rope(q_BHQE, cos_BQE, sin_BQE), apply_rope(k_BKQE, cos_BQE, sin_BQE)
        k_BKSE, v_BKSE = k_BKQE, v_BKQE
        if past_kv is not None:
            k_BKPE, v_BKPE = past_kv
            k_BKSE = torch.cat((k_BKPE, k_BKQE), dim=2)  # (B, K, S, E): cached keys first
            v_BKSE = torch.cat((v_BKPE, v_BKQE), dim=2)  # (B, K, S, E)
        if mask_B1QS is None:
            # No mask: the flash kernel may run and handles GQA itself (no K -> H copy).
            # is_causal=False (SDPA's default) everywhere: Dream attends both ways.
            y_BHQE = F.scaled_dot_product_attention(q_BHQE, k_BKSE, v_BKSE, is_causal=False, enable_gqa=True)
        else:
            # With a mask, `enable_gqa` can push CUDA onto the slow math kernel (transformers'
            # `use_gqa_in_sdpa` avoids it for that reason), so repeat kv heads explicitly.
            # Query head h uses kv head h // (H / K), the same grouping as `enable_gqa`.
            k_BHSE = k_BKSE.repeat_interleave(H // K, dim=1)  # (B, H, S, E)
            v_BHSE = v_BKSE.repeat_interleave(H // K, dim=1)  # (B, H, S, E)
            y_BHQE = F.scaled_dot_product_attention(q_BHQE, k_BHSE, v_BHSE, attn_mask=mask_B1QS)
        y_BQD = y_BHQE.transpose(1, 2).reshape(B, Q, H * E)  # (B, Q, D)
        return self.o_proj(y_BQD), (k_BKQE, v_BKQE)


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        D, I = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(D, I, bias=False)
        self.up_proj = nn.Linear(D, I, bias=False)
        self.down_proj = nn.Linear(I, D, bias=False)

    def forward(self, x_BLD: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x_BLD)) * self.up_proj(x_BLD))  # via (B, L, I)


class DreamDecoderLayer(nn.Module):
    """One pre-norm block; also the FSDP wrap unit (`_no_split_modules`, dream.md §4)."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.input_layernorm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DreamAttention(config)
        self.post_attention_layernorm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DreamMLP(config)

    def forward(self, x_BLD: Tensor, cos_BLE: Tensor, sin_BLE: Tensor, mask_B1LL: Tensor | None) -> Tensor:
        """The block over every position (no cache): `forward_cached` with nothing cached."""
        return self.forward_cached(x_BLD, cos_BLE, sin_BLE, mask_B1LL, None)[0]

    def forward_cached(
        self,
        x_BQD: Tensor,
        cos_BQE: Tensor,
        sin_BQE: Tensor,
        mask_B1QS: Tensor | None,
        past_kv: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """`forward` over Q positions with cached keys/values; also returns this layer's (k, v)."""
        y_BQD, kv = self.self_attn.forward_cached(self.input_layernorm(x_BQD), cos_BQE, sin_BQE, mask_B1QS, past_kv)
        x_BQD = x_BQD + y_BQD
        return x_BQD + self.mlp(self.post_attention_layernorm(x_BQD)), kv


class DreamBaseModel(nn.Module):
    """The transformer without the head: `DreamModel.model`, checkpoint prefix `model.`."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        # padding_idx as in the reference: the `<|endoftext|>` row gets zero gradient (dream.md §5).
        D, V = config.hidden_size, config.vocab_size
        self.embed_tokens = nn.Embedding(V, D, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList(DreamDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = DreamRotaryEmbedding(config.head_dim, config.rope_theta)
        # Activation checkpointing (training only): the layers listed here keep only their input
        # and are recomputed in backward; the others keep everything. Non-reentrant, so it composes
        # with FSDP2's per-layer hooks and with compiled layers. See `set_checkpointed_layers`.
        self.checkpointed_layers: frozenset[int] = frozenset()

    def set_checkpointed_layers(self, count: int) -> None:
        """Recompute `count` decoder layers in backward, spread evenly over the depth (0: none)."""
        total = len(self.layers)
        if not 0 <= count <= total:
            raise ValueError(f"count must be in 0..{total}, got {count}")
        # Layer i is chosen when floor((i+1)·count/total) steps up: exactly `count` layers, evenly spaced.
        self.checkpointed_layers = frozenset(i for i in range(total) if (i + 1) * count // total > i * count // total)

    def forward(self, input_ids_BL: Tensor, position_ids_BL: Tensor, mask_B1LL: Tensor | None) -> Tensor:
        x_BLD = self.embed_tokens(input_ids_BL)
        cos_BLE, sin_BLE = self.rotary_emb(position_ids_BL, x_BLD.dtype)  # shared by all layers
        training = self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if training and i in self.checkpointed_layers:
                x_BLD = checkpoint(layer, x_BLD, cos_BLE, sin_BLE, mask_B1LL, use_reentrant=False)
            else:
                x_BLD = layer(x_BLD, cos_BLE, sin_BLE, mask_B1LL)
        return self.norm(x_BLD)

    def forward_cached(
        self, input_ids_BQ: Tensor, position_ids_BQ: Tensor, mask_B1QS: Tensor | None, past_kv: KVCache | None
    ) -> tuple[Tensor, KVCache]:
        """Inference-only `forward` over Q positions attending also to cached keys/values."""
        x_BQD = self.embed_tokens(input_ids_BQ)
        cos_BQE, sin_BQE = self.rotary_emb(position_ids_BQ, x_BQD.dtype)
        new_kv: KVCache = []
        for i, layer in enumerate(self.layers):
            layer_kv = None if past_kv is None else past_kv[i]
            x_BQD, kv = layer.forward_cached(x_BQD, cos_BQE, sin_BQE, mask_B1QS, layer_kv)
            new_kv.append(kv)
        return self.norm(x_BQD), new_kv


class DreamModel(nn.Module):
    """Dream: `.model` (embeddings, layers, final norm, RoPE) and an untied `.lm_head`.

    `__init__` allocates nothing real when run under `torch.device("meta")`; materialise with
    `to_empty(device=...)` + `init_weights()`, or with `weights.load_safetensors_weights`.
    Built on a real device, parameters hold PyTorch's default init until `init_weights()`.
    """

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DreamBaseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def hidden_states(
        self, input_ids_BL: Tensor, *, attention_mask_BL: Tensor | None = None, position_ids_BL: Tensor | None = None
    ) -> Tensor:
        """Run the transformer up to and including the final norm (no lm_head).

        The training loss applies `lm_head` only at the (shifted) masked positions, which saves
        the B*L*V logits tensor; this is the main entry point.

        Args:
            input_ids_BL: Token ids.
            attention_mask_BL: 1/True real token, 0/False padding; None (fastest) = no padding.
                Outputs at padded positions are finite but meaningless.
            position_ids_BL: RoPE positions; default 0..L-1 for every row. With left padding,
                pass `cumsum(mask) - 1` (clamped at 0) to count from the first real token.

        Returns:
            hidden_BLD: Final-norm hidden states, unshifted.
        """
        if position_ids_BL is None:
            position_ids_BL = torch.arange(input_ids_BL.shape[1], device=input_ids_BL.device)[None]  # (1, L)
        mask_B1LL = None if attention_mask_BL is None else make_attention_mask(attention_mask_BL)
        return self.model(input_ids_BL, position_ids_BL, mask_B1LL)

    def forward(
        self, input_ids_BL: Tensor, *, attention_mask_BL: Tensor | None = None, position_ids_BL: Tensor | None = None
    ) -> Tensor:
        """Return unshifted logits for every position (see `hidden_states` for the arguments).

        Returns:
            logits_BLV: `logits_BLV[:, i-1]` predicts the token at i (module docstring).
        """
        hidden_BLD = self.hidden_states(
            input_ids_BL, attention_mask_BL=attention_mask_BL, position_ids_BL=position_ids_BL
        )
        return self.lm_head(hidden_BLD)

    def hidden_states_cached(
        self,
        input_ids_BQ: Tensor,
        *,
        position_ids_BQ: Tensor,
        past_kv: KVCache | None = None,
        key_mask_BS: Tensor | None = None,
    ) -> tuple[Tensor, KVCache]:
        """Run the transformer over Q positions whose queries also attend to P cached positions.

        Bidirectional, like `hidden_states`: every current query attends to the cached keys and to
        all Q current keys. With `past_kv=None` this equals `hidden_states` on the same inputs.

        Args:
            input_ids_BQ: Token ids of the current positions.
            position_ids_BQ: Their RoPE positions (required: they are not 0..Q-1 in general).
            past_kv: Per layer, post-RoPE (k_BKPE, v_BKPE) of the cached positions, as returned
                in `new_kv` by an earlier call (sliced along dim 2); None = no cache (P = 0).
            key_mask_BS: 1/True real token, 0/False padding, over the S = P + Q keys in that
                order (cached first); None = no padding (fastest).

        Returns:
            hidden_BQD: Final-norm hidden states of the current positions, unshifted.
            new_kv: Per layer, post-RoPE (k_BKQE, v_BKQE) of the current positions only.
        """
        Q = input_ids_BQ.shape[1]
        mask_B1QS = None if key_mask_BS is None else make_cached_attention_mask(key_mask_BS, Q)
        return self.model.forward_cached(input_ids_BQ, position_ids_BQ, mask_B1QS, past_kv)

    def forward_cached(
        self,
        input_ids_BQ: Tensor,
        *,
        position_ids_BQ: Tensor,
        past_kv: KVCache | None = None,
        key_mask_BS: Tensor | None = None,
    ) -> tuple[Tensor, KVCache]:
        """Return unshifted logits of the current positions and their K/V (see `hidden_states_cached`).

        Returns:
            logits_BQV: `logits_BQV[:, q-1]` predicts the token at current position q.
            new_kv: Per layer, (k_BKQE, v_BKQE) of the current positions.
        """
        hidden_BQD, new_kv = self.hidden_states_cached(
            input_ids_BQ, position_ids_BQ=position_ids_BQ, past_kv=past_kv, key_mask_BS=key_mask_BS
        )
        return self.lm_head(hidden_BQD), new_kv

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute the non-persistent RoPE buffer on `device` (default: the embedding's device)."""
        device = self.model.embed_tokens.weight.device if device is None else device
        self.model.rotary_emb.reset_parameters(device)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter in place (for training from scratch and for tests).

        - `nn.Linear` and `nn.Embedding` weights (incl. lm_head): normal(0, initializer_range),
          the pad token's embedding row too (HF zeros it; it only matters from scratch);
        - q/k/v biases: zeros;
        - RMSNorm gains: ones;
        - RoPE `inv_freq` (buffer): recomputed in fp32.
        """
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, DreamRMSNorm):
                nn.init.ones_(module.weight)
        self.init_buffers()
