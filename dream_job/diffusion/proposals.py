"""Token proposals shared by both samplers: Dream's top-p / top-k filter, confidences, uniform draws.

Row-wise maths on logits or probabilities (`sampler.py` says where each mode uses them). Shape
letters: R proposal rows, V vocab size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dream_job.spec import SamplerSpec

# Dream's `sample_tokens` for `entropy`: sum p log(p + eps).
_ENTROPY_EPS = 1e-10


def filter_logits(logits_RV: Tensor, settings: SamplerSpec) -> Tensor:
    """Apply top-p, then top-k, as Dream: filtered logits become the dtype's lowest value."""
    if settings.top_p is not None and settings.top_p < 1:
        logits_RV = filter_top_p(logits_RV, settings.top_p)
    if settings.top_k is not None:
        kth_R1 = logits_RV.topk(min(settings.top_k, logits_RV.shape[-1]), dim=-1).values[:, -1:]
        logits_RV = logits_RV.masked_fill(logits_RV < kth_R1, torch.finfo(logits_RV.dtype).min)
    return logits_RV


def confidence(probs_RV: Tensor, p_x0_R: Tensor, alg: str) -> Tensor:
    """Return the ranking confidence of `alg`: p(x0), top1 - top2, or sum p log(p + 1e-10)."""
    if alg == "topk_margin":
        top2_R2 = probs_RV.topk(2, dim=-1).values
        return top2_R2[:, 0] - top2_R2[:, 1]
    if alg == "entropy":
        return (probs_RV * torch.log(probs_RV + _ENTROPY_EPS)).sum(dim=-1)
    return p_x0_R


def filter_top_p(logits_RV: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of tokens whose probability reaches `top_p` (always the top one)."""
    sorted_RV, order_RV = logits_RV.sort(dim=-1, descending=True)
    cumulative_RV = sorted_RV.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted_RV = torch.zeros_like(cumulative_RV, dtype=torch.bool)
    drop_sorted_RV[:, 1:] = cumulative_RV[:, :-1] > top_p  # shifted right: keep the token that crosses
    drop_RV = drop_sorted_RV.scatter(-1, order_RV, drop_sorted_RV)
    return logits_RV.masked_fill(drop_RV, torch.finfo(logits_RV.dtype).min)


def uniform(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U(0, 1) draws in fp32 from `generator`, clamped away from 0 so Gumbel noise stays finite."""
    u = torch.rand(shape, generator=generator, device=device)
    return u.clamp_(min=torch.finfo(torch.float32).tiny)
