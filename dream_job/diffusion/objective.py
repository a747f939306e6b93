"""Masked-diffusion SFT objective of Dream: noising, time weights, chunked loss, per-batch cut-off.

Pure functions; every random draw takes an explicit ``torch.Generator`` so results are reproducible.
Inputs are the collated batch of the data pipeline (``input_ids_BL``, ``loss_mask_BL``,
``attention_mask_BL``, ``position_ids_BL``) plus the model's final hidden states and lm_head weight;
the output is the scalar loss. The maths follows ``dream.md`` §6-§10 (the official trainer) and the
Dream tech report (arXiv 2508.15487).

Shape legend:
    B: batch size (sequences)
    L: sequence length
    D: hidden size
    V: vocabulary size
    N: number of masked positions in the batch
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

WeightScheme = Literal["cart", "linear", "inverse_t", "none"]


def sample_t(batch_size: int, *, eps: float, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """Draw one diffusion time per sequence, t ~ U(eps, 1).

    The official trainer draws t ~ U(0, 1) with no floor (dream.md §8); a floor ``eps`` keeps the
    masking probability and the ``inverse_t`` weight 1/t finite.

    Args:
        batch_size: Number of sequences B.
        eps: Lower bound of t, in [0, 1).
        generator: Source of randomness; must live on ``device``.
        device: Device of the result.

    Returns:
        t_B: float32 times in [eps, 1].
    """
    u_B = torch.rand(batch_size, generator=generator, device=device)
    return (1.0 - eps) * u_B + eps


def mask_tokens(
    input_ids_BL: torch.Tensor,
    loss_mask_BL: torch.Tensor,
    t_B: torch.Tensor,
    *,
    mask_token_id: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each maskable token by the mask id with probability t of its sequence (dream.md §8).

    Prompt tokens and left pads (``loss_mask_BL`` False) are never masked. A sequence that has
    maskable tokens but drew none gets one of them, chosen uniformly, masked anyway: otherwise a
    micro-batch of such rows has zero masked tokens and the loss Σ w·CE / #masked is 0/0 = NaN
    (dream.md §8 hazards). This slightly raises the masking rate of short responses at small t.

    Args:
        input_ids_BL: Clean token ids (long).
        loss_mask_BL: True on maskable targets (response, appended EOS, right pads).
        t_B: Masking probability per sequence.
        mask_token_id: Id of ``<|mask|>``.
        generator: Source of randomness; must live on the device of ``input_ids_BL``.

    Returns:
        noisy_ids_BL: ``input_ids_BL`` with masked positions set to ``mask_token_id``.
        masked_BL: bool, True where a token was masked.
    """
    loss_mask_BL = loss_mask_BL.bool()
    u_BL = torch.rand(input_ids_BL.shape, generator=generator, device=input_ids_BL.device)
    masked_BL = (u_BL < t_B[:, None]) & loss_mask_BL
    # Forced mask: pick the maskable position with the largest fresh uniform score (uniform choice).
    needs_one_B = ~masked_BL.any(dim=1) & loss_mask_BL.any(dim=1)
    score_BL = torch.rand(input_ids_BL.shape, generator=generator, device=input_ids_BL.device)
    score_BL = score_BL.masked_fill(~loss_mask_BL, -1.0)
    forced_BL = F.one_hot(score_BL.argmax(dim=1), input_ids_BL.shape[1]).bool() & needs_one_B[:, None]
    masked_BL = masked_BL | forced_BL
    noisy_ids_BL = input_ids_BL.masked_fill(masked_BL, mask_token_id)
    return noisy_ids_BL, masked_BL


def _geometric_scan(x_BL: torch.Tensor, r: float) -> torch.Tensor:
    """Return h with h_i = Σ_{j≤i} r^(i−j)·x_j along L, i.e. the recurrence h_i = r·h_{i−1} + x_i.

    Hillis-Steele doubling: after the pass with offset s every h_i covers the window (i−2s, i],
    so ⌈log2 L⌉ vectorised passes replace an L-step Python loop. All terms are ≥ 0 (x is a 0/1
    mask), so the sums are numerically stable; r^s underflowing to 0 for large s is harmless.
    """
    h_BL = x_BL
    length, offset = x_BL.shape[1], 1
    while offset < length:
        h_BL = torch.cat([h_BL[:, :offset], h_BL[:, offset:] + (r**offset) * h_BL[:, :-offset]], dim=1)
        offset *= 2
    return h_BL


def loss_weights(
    masked_BL: torch.Tensor, t_B: torch.Tensor, *, scheme: WeightScheme, cart_p: float = 0.1
) -> torch.Tensor:
    """Per-token time weights w of the loss (dream.md §9, ``diffusion.time_reweighting``).

    Schemes for a masked token i of sequence b (0 at unmasked positions in every scheme):
        ``linear``: 1 − t_b.  ``inverse_t``: 1/t_b (the official ``original``).  ``none``: 1.
        ``cart``: w_i = Σ_{j≠i, j clean} ½·p·(1−p)^(|i−j|−1), CART of tech report Eq. 5 — the
        clean context around i, weighted by a two-sided geometric kernel; w_i ∈ [0, 1).

    CART is computed in O(L log L) time and O(B·L) memory (no L×L kernel matrix as in the official
    code), so it runs at L = 16384: with c the clean indicator and r = 1−p,
        left_i  = Σ_{j<i} c_j r^(i−1−j)  = (left scan of c)_{i−1},
        right_i = Σ_{j>i} c_j r^(j−i−1)  = (right scan of c)_{i+1},
        w_i = ½·p·(left_i + right_i)·masked_i.

    Args:
        masked_BL: bool, True where a token is masked.
        t_B: Diffusion time per sequence.
        scheme: One of ``cart``, ``linear``, ``inverse_t``, ``none``.
        cart_p: Geometric parameter p of CART (official ``diffusion.cart_p`` = 0.1).

    Returns:
        w_BL: float32 weights, 0 where not masked.

    Raises:
        ValueError: If ``scheme`` is unknown.
    """
    mask_f_BL = masked_BL.float()
    if scheme == "linear":
        return (1.0 - t_B.float())[:, None] * mask_f_BL
    if scheme == "inverse_t":
        return (1.0 / t_B.float())[:, None] * mask_f_BL
    if scheme == "none":
        return mask_f_BL
    if scheme != "cart":
        raise ValueError(f"unknown time weight scheme `{scheme}`; allowed: `cart`, `linear`, `inverse_t`, `none`")
    # "Clean" is every position that is not masked: prompt, unmasked response/pad tokens AND left
    # pads, exactly as dream.md §9 (official code) defines it, although left pads carry no content.
    clean_BL = 1.0 - mask_f_BL
    r = 1.0 - cart_p
    zero_B1 = clean_BL.new_zeros(clean_BL.shape[0], 1)
    left_scan_BL = _geometric_scan(clean_BL, r)
    left_BL = torch.cat([zero_B1, left_scan_BL[:, :-1]], dim=1)
    right_scan_BL = _geometric_scan(clean_BL.flip(1), r).flip(1)
    right_BL = torch.cat([right_scan_BL[:, 1:], zero_B1], dim=1)
    return 0.5 * cart_p * (left_BL + right_BL) * mask_f_BL


def select_predictor_positions(masked_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the hidden-state positions that predict the masked tokens (logit shift, dream.md §6).

    Dream keeps Qwen's AR alignment: the hidden state at position i−1 predicts the token at i, and
    position 0 uses its own hidden state (``shifted[:, 0] = logits[:, 0]``). Position 0 is always a
    prompt token or a left pad, never masked, so that duplicate is unused in practice; the rule is
    kept so the result equals the official shift for any mask.

    Args:
        masked_BL: bool, True where a token is masked.

    Returns:
        batch_idx_N: Row of each masked token.
        pos_idx_N: Position of the hidden state predicting it, max(i − 1, 0).
        Both are in row-major order, the order of ``x_BL[masked_BL]``.
    """
    batch_idx_N, target_idx_N = masked_BL.nonzero(as_tuple=True)
    return batch_idx_N, (target_idx_N - 1).clamp(min=0)


def _chunk_weighted_ce_sum(
    hidden_ND: torch.Tensor, lm_head_weight_VD: torch.Tensor, labels_N: torch.Tensor, w_N: torch.Tensor
) -> torch.Tensor:
    """Return Σ w·CE over one chunk of rows, CE computed on logits upcast to at least fp32."""
    logits_NV = F.linear(hidden_ND, lm_head_weight_VD)
    logits_NV = logits_NV.to(torch.promote_types(logits_NV.dtype, torch.float32))
    ce_N = F.cross_entropy(logits_NV, labels_N, reduction="none")
    return (w_N.to(ce_N.dtype) * ce_N).sum()


def masked_diffusion_loss(
    hidden_BLD: torch.Tensor,
    lm_head_weight_VD: torch.Tensor,
    input_ids_BL: torch.Tensor,
    masked_BL: torch.Tensor,
    w_BL: torch.Tensor,
    *,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, int]:
    """Weighted masked-token cross-entropy, normalised by the number of masked tokens (dream.md §8).

    loss = Σ_{b,i} w_{b,i}·CE_{b,i}·masked_{b,i} / Σ masked, with the logits of token i taken from
    the hidden state at i−1 (§6). The lm_head is applied only to the N predicting rows, ``chunk_size``
    rows at a time, so no [B, L, V] (or [N, V]) logits tensor exists: peak extra memory is one
    chunk_size×V fp32 logits block. Differentiable w.r.t. ``hidden_BLD`` and ``lm_head_weight_VD``.

    Args:
        hidden_BLD: Final (normed) hidden states of the model.
        lm_head_weight_VD: Output projection weight (no bias).
        input_ids_BL: Clean token ids, the labels (not shifted).
        masked_BL: bool, True where the input token was masked.
        w_BL: Per-token weights from ``loss_weights``.
        chunk_size: Rows of logits materialised at once.

    Returns:
        loss: Scalar in fp32 (fp64 for fp64 inputs). With N = 0 it is an exact 0 that is still
            connected to the graph, so backward (and FSDP's gradient reduce) runs on every rank.
        num_masked: N, the number of masked tokens in the micro-batch.
    """
    batch_idx_N, pos_idx_N = select_predictor_positions(masked_BL)
    hidden_ND = hidden_BLD[batch_idx_N, pos_idx_N]
    labels_N = input_ids_BL[masked_BL]
    w_N = w_BL[masked_BL]
    num_masked = labels_N.shape[0]
    chunk_sums = []
    # range(max(N, 1)) runs one empty chunk when N = 0 to keep the loss attached to the graph.
    for start in range(0, max(num_masked, 1), chunk_size):
        end = start + chunk_size
        # Non-reentrant checkpoint: backward recomputes the chunk's logits instead of keeping every
        # chunk's chunk_size×V logits and softmax alive until backward (that would be N×V again).
        chunk_sum = checkpoint(
            _chunk_weighted_ce_sum,
            hidden_ND[start:end],
            lm_head_weight_VD,
            labels_N[start:end],
            w_N[start:end],
            use_reentrant=False,
        )
        chunk_sums.append(chunk_sum)
    return torch.stack(chunk_sums).sum() / max(num_masked, 1), num_masked


def _pack_rows(
    input_ids_BL: torch.Tensor,
    offset_B: torch.Tensor,
    keep_B: torch.Tensor,
    width: int,
    pad_id: int,
) -> torch.Tensor:
    """Return rows of ``width``: column c holds input[b, c − offset_b] if 0 ≤ c − offset_b < keep_b, else pad."""
    col_BL = torch.arange(width, device=input_ids_BL.device)[None, :]
    src_BL = col_BL - offset_B[:, None]
    valid_BL = (src_BL >= 0) & (src_BL < keep_B[:, None])
    src_BL = src_BL.clamp(0, input_ids_BL.shape[1] - 1)
    return torch.where(valid_BL, input_ids_BL.gather(1, src_BL), torch.full_like(src_BL, pad_id))


def cutoff_random_with_input_pad(
    input_ids_BL: torch.Tensor,
    prompt_lengths_B: torch.Tensor,
    response_lengths_B: torch.Tensor,
    *,
    pad_id: int,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Cut a batch to one random response window, prompts left-padded (dream.md §10 ``random_with_input_pad``).

    P = longest prompt in the batch, K = response length of one row drawn uniformly. Row b becomes
    (P − prompt_b) left pads ++ prompt ++ response[:min(K, response_b)] ++ right pads, length P + K.
    Rows with response ≤ K end with ≥ 1 pad (= EOS, learn to stop); longer rows are cut without EOS.
    If the drawn K is 0 no position is maskable and the batch contributes no loss.

    Args:
        input_ids_BL: Right-padded rows, prompt ++ response ++ EOS ++ pads (long).
        prompt_lengths_B: Prompt length per row.
        response_lengths_B: Response length per row, EOS not counted.
        pad_id: Pad id (151643, the same id as EOS).
        generator: Source of randomness for K; must live on the device of ``input_ids_BL``.

    Returns:
        A dict with ``input_ids_BL`` (long, length P + K), ``attention_mask_BL`` (bool, False only on
        left pads), ``loss_mask_BL`` (bool, True at every column ≥ P) and ``position_ids_BL``
        (clip(cumsum(attention_mask) − 1, 0): the first prompt token is at 0).
    """
    device = input_ids_BL.device
    num_prompt = int(prompt_lengths_B.max())
    row = int(torch.randint(len(response_lengths_B), (1,), generator=generator, device=device))
    num_response = int(response_lengths_B[row])
    left_pads_B = num_prompt - prompt_lengths_B.to(device)
    keep_B = prompt_lengths_B.to(device) + response_lengths_B.to(device).clamp(max=num_response)
    width = num_prompt + num_response
    ids_BL = _pack_rows(input_ids_BL, left_pads_B, keep_B, width, pad_id)
    col_BL = torch.arange(width, device=device)[None, :].expand_as(ids_BL)
    attention_mask_BL = col_BL >= left_pads_B[:, None]
    return {
        "input_ids_BL": ids_BL,
        "attention_mask_BL": attention_mask_BL,
        "loss_mask_BL": col_BL >= num_prompt,
        "position_ids_BL": (attention_mask_BL.long().cumsum(dim=1) - 1).clamp(min=0),
    }


def cutoff_none(
    input_ids_BL: torch.Tensor,
    prompt_lengths_B: torch.Tensor,
    response_lengths_B: torch.Tensor,
    *,
    pad_id: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Keep every row whole, right-padded to the longest row (prompt + response + EOS) of the batch.

    Unlike the official fallback (dream.md §10, "drop common trailing padding"), the longest row
    keeps its EOS. All positions are attended (pads too, §7) and everything after each row's prompt
    is maskable.

    Args:
        input_ids_BL: Right-padded rows, prompt ++ response ++ EOS ++ pads (long).
        prompt_lengths_B: Prompt length per row.
        response_lengths_B: Response length per row, EOS not counted.
        pad_id: Pad id written after each row's EOS.
        generator: Unused; accepted so both cut-offs share one signature.

    Returns:
        The same keys as ``cutoff_random_with_input_pad``; ``position_ids_BL`` is 0..L−1.
    """
    device = input_ids_BL.device
    prompt_lengths_B = prompt_lengths_B.to(device)
    keep_B = (prompt_lengths_B + response_lengths_B.to(device) + 1).clamp(max=input_ids_BL.shape[1])
    width = int(keep_B.max())
    ids_BL = _pack_rows(input_ids_BL, torch.zeros_like(keep_B), keep_B, width, pad_id)
    col_BL = torch.arange(width, device=device)[None, :].expand_as(ids_BL)
    return {
        "input_ids_BL": ids_BL,
        "attention_mask_BL": torch.ones_like(ids_BL, dtype=torch.bool),
        "loss_mask_BL": col_BL >= prompt_lengths_B[:, None],
        "position_ids_BL": col_BL.clone(),
    }
