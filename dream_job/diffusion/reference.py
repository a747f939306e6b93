"""Reference mode: Dream's `diffusion_generate` loop, step for step (see `sampler.py` for the rules).

`decode_reference` runs Dream's loop on a left-padded batch in place: one full forward per step,
`lm_head` over every position as Dream's forward, the logit shift, Dream's `sample_tokens` in the
model's dtype, and the position choice with `torch.topk` (or `torch.multinomial` with
`alg_temp`), drawing random numbers in Dream's order. Shape letters as in `sampler.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dream_job.diffusion.forwards import Forwards
from dream_job.diffusion.proposals import confidence, filter_logits, uniform
from dream_job.spec import SAMPLER_LOGIT_ROWS, SamplerSpec

# Masked rows per proposal chunk at temperature 0 (`SAMPLER_LOGIT_ROWS`, 256): bounds the fp32
# softmax temporaries. The maths is row-wise, so chunks change nothing; sampling (T > 0) draws
# from all rows in one multinomial, as Dream's random stream does.
_PROPOSAL_ROWS = SAMPLER_LOGIT_ROWS
# torch's `Categorical(probs)` argument check (constraints.simplex): |sum(p) - 1| < 1e-6.
_SIMPLEX_TOL = 1e-6


def decode_reference(
    forwards: Forwards,
    lm_head: nn.Linear,
    x_BL: Tensor,
    attention_mask_BL: Tensor | None,
    position_ids_BL: Tensor,
    P: int,
    settings: SamplerSpec,
    mask_id: int,
    generator: torch.Generator | None,
    history: list[Tensor] | None,
) -> int:
    """Run Dream's reference loop on `x_BL` in place; return the number of forward passes.

    Draws random numbers in Dream's order: per step, `origin` one uniform per mask then (T > 0)
    one multinomial over the revealed rows; the other algorithms one multinomial over all
    masked rows (T > 0), then one over positions (`alg_temp > 0`, only when k > 0).
    """
    # fp32 on the CPU, like Dream's default-dtype linspace; int(M * (1 - s/t)) depends on its rounding.
    timesteps = torch.linspace(1, settings.eps, settings.steps + 1)
    num_passes = 0
    for i in range(settings.steps):
        mask_BL = x_BL == mask_id
        mask_BL[:, :P] = False  # only the generated slots are decoded (deviation 2)
        if not bool(mask_BL.any()):
            if history is not None:  # deviation 5: Dream's remaining steps would change nothing
                history.extend(x_BL.clone() for _ in range(settings.steps - i))
            break
        hidden_BLD = forwards.full(x_BL, position_ids_BL, attention_mask_BL, keep_kv=False)
        num_passes += 1
        # The logits of every position, as Dream's forward computes them: the lm_head GEMM over the
        # masked rows only rounds differently when few are left (its kernel depends on the row
        # count), and an exact confidence tie would then break the other way.
        logits_BLV = lm_head(hidden_BLD)
        b_M, l_M = mask_BL.nonzero(as_tuple=True)  # row-major, the order of Dream's x[mask_index]
        # Logit shift (dream.md §6): position l is predicted by the logits at l - 1 (l >= P >= 1).
        logits_MV = logits_BLV[b_M, l_M - 1]
        del logits_BLV
        is_last = i == settings.steps - 1
        t, s = timesteps[i], timesteps[i + 1]
        if settings.alg == "origin":
            # Each mask is revealed independently with probability 1 - s/t (all at the last step);
            # tokens are proposed only for the revealed ones, as Dream does.
            p_reveal = 1.0 if is_last else float(1 - s / t)
            reveal_M = uniform((b_M.numel(),), generator, x_BL.device) < p_reveal
            if bool(reveal_M.any()):
                x0_R, _ = _sample_tokens(logits_MV[reveal_M], settings, "origin", generator)
                x_BL[b_M[reveal_M], l_M[reveal_M]] = x0_R
        else:
            x0_M, conf_M = _sample_tokens(logits_MV, settings, settings.alg, generator)
            conf_BL = torch.full(x_BL.shape, -torch.inf, dtype=conf_M.dtype, device=x_BL.device)
            conf_BL[b_M, l_M] = conf_M
            num_masks_B = mask_BL.sum(dim=1)
            # k = int(M * (1 - s/t)) in fp32 as Dream, but M is this row's own count (deviation 1).
            k_B = num_masks_B if is_last else (num_masks_B.float() * (1 - s / t).to(x_BL.device)).long()
            reveal_M = _choose_positions_dream(conf_BL, k_B, settings.alg_temp, generator)[b_M, l_M]
            x_BL[b_M[reveal_M], l_M[reveal_M]] = x0_M[reveal_M]
        if history is not None:
            history.append(x_BL.clone())
    return num_passes


def _sample_tokens(
    logits_MV: Tensor, settings: SamplerSpec, alg: str, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Propose a token and a confidence for each masked position exactly as Dream's `sample_tokens`.

    From the masked positions' (shifted) logits, in the model's dtype: logits / temperature,
    top-p, top-k, softmax. T = 0: the argmax and its probability (in chunks of `_PROPOSAL_ROWS`
    rows; every step is row-wise). T > 0: for all rows in one call,
    `Categorical(probs).sample()`, i.e. one `torch.multinomial(probs / sum, 1, replacement=True)`
    (the same random stream as Dream's), and p(x0); like Dream, the argmax when torch's argument
    check of `Categorical` would fail. `topk_margin` / `entropy` replace the confidence
    (`proposals.confidence`).

    Returns:
        x0_M: Proposed ids (the mask token included, as Dream).
        conf_M: Confidences in the model's dtype (higher = reveal first).
    """
    if settings.temperature == 0 and logits_MV.shape[0] > _PROPOSAL_ROWS:
        parts = [_sample_tokens(chunk, settings, alg, generator) for chunk in logits_MV.split(_PROPOSAL_ROWS)]
        return torch.cat([x0 for x0, _ in parts]), torch.cat([conf for _, conf in parts])
    if settings.temperature > 0:
        logits_MV = logits_MV / settings.temperature
    probs_MV = filter_logits(logits_MV, settings).softmax(dim=-1)
    conf_M, x0_M = probs_MV.max(dim=-1)
    if settings.temperature > 0:
        normalised_MV = probs_MV / probs_MV.sum(dim=-1, keepdim=True)  # what `Categorical` stores and checks
        in_simplex_M = (normalised_MV >= 0).all(dim=-1) & ((normalised_MV.sum(dim=-1) - 1).abs() < _SIMPLEX_TOL)
        if bool(in_simplex_M.all()):
            x0_M = torch.multinomial(normalised_MV, 1, replacement=True, generator=generator).squeeze(-1)
            conf_M = probs_MV.gather(-1, x0_M[:, None]).squeeze(-1)
    return x0_M, confidence(probs_MV, conf_M, alg)


def _choose_positions_dream(
    conf_BL: Tensor, k_B: Tensor, alg_temp: float | None, generator: torch.Generator | None
) -> Tensor:
    """Return a mask of the k_B[b] positions per row that Dream's code reveals (-inf = never chosen).

    Greedy: `torch.topk(conf, k)`, so exact ties are broken as Dream breaks them. With
    `alg_temp > 0`: `torch.multinomial(softmax(conf / alg_temp), k)` without replacement. With
    one k for every row (always, unless deviations 1 or 2 apply) this is one call, as Dream's;
    topk with k = max k_B keeps each row's first k_B[b] (topk's order is by confidence).
    """
    B, L = conf_BL.shape
    chosen_BL = torch.zeros((B, L), dtype=torch.bool, device=conf_BL.device)
    k_max = int(k_B.max())
    if k_max == 0:
        return chosen_BL  # Dream draws nothing either
    if alg_temp:
        probs_BL = (conf_BL / alg_temp).softmax(dim=-1)
        if bool((k_B == k_max).all()):
            chosen_BL.scatter_(1, torch.multinomial(probs_BL, k_max, generator=generator), True)
        else:  # rows with fewer masks than k_max cannot draw k_max without replacement
            for b, k in enumerate(k_B.tolist()):
                if k > 0:
                    chosen_BL[b, torch.multinomial(probs_BL[b], k, generator=generator)] = True
    else:
        index_BK = conf_BL.topk(k_max, dim=1).indices
        chosen_BL.scatter_(1, index_BK, torch.arange(k_max, device=conf_BL.device) < k_B[:, None])
    return chosen_BL & (conf_BL > -torch.inf)  # deviation 1: never a non-mask position
