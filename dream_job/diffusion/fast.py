"""Fast mode: Fast-dLLM-style block-wise decoding with a KV cache (see `sampler.py` for the rules).

`decode_fast` decodes the generated slots block by block on a left-padded batch in place: a full
forward at each block start (it keeps the keys/values), then windowed steps against the cache,
each revealing every mask above `threshold` and at least the most confident one. Greedy top-k
decoding (the default) reveals with fixed shapes and no host sync, so on a GPU it runs inside the
windowed step's CUDA graph. Shape letters as in `sampler.py`.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from dream_job.diffusion.forwards import Forwards
from dream_job.diffusion.proposals import confidence, filter_logits, uniform
from dream_job.spec import SAMPLER_LOGIT_ROWS, SamplerSpec

# Masked positions per lm_head call (`SAMPLER_LOGIT_ROWS`, 256): bounds the [rows, vocab]
# temporaries; the maths is row-wise, so chunks change nothing.
_PROPOSAL_ROWS = SAMPLER_LOGIT_ROWS


def decode_fast(
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
    """Run the block-wise cached loop on `x_BL` in place; return the number of forward passes.

    Greedy top-k decoding (the default) reveals with `_greedy_reveal`, which has fixed shapes and
    no host syncs, so the windowed steps run it inside the same call (or CUDA graph) as the
    model; the loop then syncs once per step, to see whether the block is done.
    """
    L = x_BL.shape[1]
    greedy = settings.greedy_top_k
    num_passes = 0
    for lo in range(P, L, settings.block_length):
        hi = min(lo + settings.block_length, L)
        # Block start: one full pass; it reveals like any step and refreshes the cache.
        hidden_BLD = forwards.full(x_BL, position_ids_BL, attention_mask_BL, keep_kv=True)
        num_passes += 1
        if greedy:  # position l is predicted by the hidden state at l - 1 (dream.md §6)
            x_BL[:, lo:hi] = _greedy_reveal(hidden_BLD[:, lo - 1 : hi - 1], x_BL[:, lo:hi], lm_head, settings, mask_id)
        else:
            _reveal_confident(x_BL, hidden_BLD, lo, hi, 0, lm_head, settings, mask_id, generator)
        if history is not None:
            history.append(x_BL.clone())
        # Later steps run the window [lo - 1, end): position lo - 1 is included so that the
        # shifted logits of position lo come from a freshly computed hidden state.
        end = hi if settings.dual_cache else L
        cached_P = torch.arange(lo - 1, device=x_BL.device)  # the settled prefix, minus lo - 1
        if settings.dual_cache:  # plus the suffix, all masks until its block comes
            cached_P = torch.cat((cached_P, torch.arange(hi, L, device=x_BL.device)))
        key_mask_BS = None
        if attention_mask_BL is not None:  # key order: cached positions, then the window
            key_mask_BS = torch.cat((attention_mask_BL[:, cached_P], attention_mask_BL[:, lo - 1 : end]), dim=1)
        forwards.start_window(cached_P, position_ids_BL[:, lo - 1 : end], key_mask_BS)
        if greedy:
            reveal = functools.partial(_greedy_reveal_window, num_block=hi - lo, lm_head=lm_head, settings=settings,
                                       mask_id=mask_id)
            reveal_key = (hi - lo, settings.top_k, settings.threshold, mask_id)
        while bool((x_BL[:, lo:hi] == mask_id).any()):
            if greedy:
                x_BL[:, lo:hi] = forwards.step(x_BL[:, lo - 1 : end], then=reveal, then_key=reveal_key)
            else:
                hidden_BWD = forwards.step(x_BL[:, lo - 1 : end])
                _reveal_confident(x_BL, hidden_BWD, lo, hi, lo - 1, lm_head, settings, mask_id, generator)
            num_passes += 1
            if history is not None:
                history.append(x_BL.clone())
    return num_passes


def _greedy_reveal(
    hidden_BCD: Tensor, block_BC: Tensor, lm_head: nn.Linear, settings: SamplerSpec, mask_id: int
) -> Tensor:
    """Return `block_BC` after one greedy Fast-dLLM step: the rule of `_reveal_confident`, fixed shapes.

    `hidden_BCD[:, c]` is the hidden state that predicts block position c. Every position gets a
    proposal (a masked one's is used): the argmax without the mask token, whose confidence is its
    probability renormalised over the k largest logits (what top-k filtering then softmax gives);
    a mask is revealed when that is above `threshold`, and each row with a mask left reveals at
    least its most confident one. No host sync, so it can run inside a CUDA graph.
    """
    logits_BCV = lm_head(hidden_BCD)
    logits_BCV[..., mask_id] = -torch.inf  # deviation 3: never propose the mask token
    top_BCK, index_BCK = logits_BCV.topk(min(settings.top_k, logits_BCV.shape[-1]), dim=-1)
    mask_BC = block_BC == mask_id
    conf_BC = top_BCK.float().softmax(dim=-1)[..., 0].masked_fill(~mask_BC, -torch.inf)
    best_BC = torch.zeros_like(mask_BC).scatter_(1, conf_BC.argmax(dim=1, keepdim=True), True)
    reveal_BC = mask_BC & ((conf_BC > settings.threshold) | best_BC)
    return torch.where(reveal_BC, index_BCK[..., 0], block_BC)


def _greedy_reveal_window(
    hidden_BWD: Tensor, x_BW: Tensor, *, num_block: int, lm_head: nn.Linear, settings: SamplerSpec, mask_id: int
) -> Tensor:
    """`_greedy_reveal` of the block inside a window that starts one position before it."""
    return _greedy_reveal(hidden_BWD[:, :num_block], x_BW[:, 1 : 1 + num_block], lm_head, settings, mask_id)


def _reveal_confident(
    x_BL: Tensor,
    hidden_BWD: Tensor,
    lo: int,
    hi: int,
    window_start: int,
    lm_head: nn.Linear,
    settings: SamplerSpec,
    mask_id: int,
    generator: torch.Generator | None,
) -> None:
    """Reveal, in block [lo, hi) of `x_BL`, each mask with p(x0) > threshold, and at least the best.

    `hidden_BWD[:, w]` is the hidden state of position `window_start + w`.
    """
    block_BC = x_BL[:, lo:hi]  # a view: writing it writes x_BL
    mask_BC = block_BC == mask_id
    b_M, c_M = mask_BC.nonzero(as_tuple=True)
    if b_M.numel() == 0:
        return
    hidden_MD = hidden_BWD[b_M, lo + c_M - 1 - window_start]  # logit shift (dream.md §6)
    # Fast-dLLM thresholds a probability, so the confidence is p(x0) whatever `alg` says.
    x0_M, conf_M = _propose(hidden_MD, lm_head, settings, "maskgit_plus", mask_id, generator)
    conf_BC = torch.full(mask_BC.shape, -torch.inf, device=x_BL.device)
    conf_BC[b_M, c_M] = conf_M
    reveal_BC = conf_BC > settings.threshold
    rows_B = torch.arange(x_BL.shape[0], device=x_BL.device)
    best_B = conf_BC.argmax(dim=1)
    reveal_BC[rows_B, best_B] |= mask_BC.any(dim=1)  # at least one per unfinished row
    proposal_BC = block_BC.clone()
    proposal_BC[b_M, c_M] = x0_M
    block_BC.copy_(torch.where(reveal_BC & mask_BC, proposal_BC, block_BC))


def _propose(
    hidden_MD: Tensor,
    lm_head: nn.Linear,
    settings: SamplerSpec,
    alg: str,
    mask_id: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Propose a token and a confidence for each masked position (fast mode; deviations 3 and 4).

    Dream's `sample_tokens` maths in fp32, without the mask token, sampling by Gumbel-max from
    `generator`: logits / temperature, then top-p, then top-k; T > 0 samples x0 and its
    confidence is p(x0), T = 0 takes the argmax and its probability. `topk_margin` replaces the
    confidence by top1 - top2 and `entropy` by sum p log(p + 1e-10), both of the filtered probs.

    Returns:
        x0_M: Proposed ids.
        conf_M: fp32 confidences (higher = reveal first).
    """
    x0s, confs = [], []
    for hidden_RD in hidden_MD.split(_PROPOSAL_ROWS):
        logits_RV = lm_head(hidden_RD).float()
        logits_RV[:, mask_id] = -torch.inf  # deviation 3: never propose the mask token
        if settings.temperature > 0:
            logits_RV = logits_RV / settings.temperature
        logits_RV = filter_logits(logits_RV, settings)
        probs_RV = logits_RV.softmax(dim=-1)
        if settings.temperature > 0:  # Gumbel-max: argmax(log p + G) is a draw from p
            gumbel_RV = -torch.log(-torch.log(uniform(logits_RV.shape, generator, logits_RV.device)))
            x0_R = (logits_RV + gumbel_RV).argmax(dim=-1)
            conf_R = probs_RV.gather(-1, x0_R[:, None]).squeeze(-1)
        else:
            conf_R, x0_R = probs_RV.max(dim=-1)
        x0s.append(x0_R)
        confs.append(confidence(probs_RV, conf_R, alg))
    return torch.cat(x0s), torch.cat(confs)
