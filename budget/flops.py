"""FLOPs of Dream's training step: the model-FLOPs formula behind MFU and the time estimate.

Pure Python (no torch), shared by the trainer's MFU metric and the cost preflight; a GPU's peak
comes from the GPU table (`budget.gpus`). Counts the matmuls of forward + backward (x3 of forward) as in the PaLM/Megatron MFU
convention, with bidirectional attention (every query attends every key: 4·L·D per token
per layer in forward, no causal halving). Activation recompute is not counted (it is not
model FLOPs); the lm_head is counted only at the masked positions actually computed.
"""

from __future__ import annotations

from budget.gpus import gpu_for_cuda_name


def matmul_params(*, hidden: int, intermediate: int, num_layers: int, num_heads: int, num_kv_heads: int) -> int:
    """Return the weights of the decoder layers that take part in matmuls (no embedding, no head)."""
    head_dim = hidden // num_heads
    attention = hidden * hidden * 2 + 2 * hidden * num_kv_heads * head_dim  # q, o + k, v
    mlp = 3 * hidden * intermediate
    return num_layers * (attention + mlp)


def train_flops_per_token(
    *,
    hidden: int,
    intermediate: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    vocab: int,
    seq_len: int,
    masked_fraction: float = 0.5,
) -> float:
    """Return forward+backward model FLOPs per token of a sequence of `seq_len` tokens.

    Args:
        masked_fraction: Share of positions the loss applies the lm_head to (E[t] = 0.5 for
            the response under t ~ U(0, 1)).
    """
    dense = 6.0 * matmul_params(
        hidden=hidden, intermediate=intermediate, num_layers=num_layers, num_heads=num_heads,
        num_kv_heads=num_kv_heads,
    )
    attention = 3.0 * 4.0 * num_layers * seq_len * hidden  # QK^T and AV, fwd 4·L·D, x3 with backward
    head = 6.0 * hidden * vocab * masked_fraction
    return dense + attention + head


def peak_flops(device_name: str) -> float | None:
    """Return the dense bf16 peak FLOP/s of a GPU from its exact CUDA name (`budget/data/gpus.csv`).

    None for a GPU the table does not name exactly: the trainer then logs no MFU rather than a guess.
    """
    gpu = gpu_for_cuda_name(device_name)
    return None if gpu is None else gpu.bf16_tflops * 1e12


def forward_flops_per_token(*, matmul_params: int, hidden: int, num_layers: int, context: int) -> float:
    """Return forward FLOPs per token of one inference forward (the sampler's cost unit).

    Args:
        matmul_params: Weights multiplied per token (decoder linears + lm_head at every position:
            7.07e9 for Dream 7B, data-and-eval.md §12).
        context: Keys each query attends to (bidirectional: the whole prompt + window).
    """
    return 2.0 * matmul_params + 4.0 * num_layers * context * hidden


def recompute_flops_per_token(
    *,
    hidden: int,
    intermediate: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    vocab: int,
    seq_len: int,
    checkpointed_layers: float,
    masked_fraction: float = 0.5,
) -> float:
    """Return the FLOPs per token the trainer recomputes in backward (not model FLOPs).

    The chunked masked loss always recomputes its lm_head chunk (2·d·V per masked token); with
    activation checkpointing each checkpointed decoder layer's forward runs again (2·N_layers plus
    the bidirectional attention's 4·L·d per layer) for each of the `checkpointed_layers`.
    Hardware FLOPs = model FLOPs + these.
    """
    head = 2.0 * hidden * vocab * masked_fraction
    layers = 2.0 * matmul_params(
        hidden=hidden, intermediate=intermediate, num_layers=num_layers, num_heads=num_heads,
        num_kv_heads=num_kv_heads,
    )
    return (layers + 4.0 * num_layers * seq_len * hidden) * checkpointed_layers / num_layers + head
