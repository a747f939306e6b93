"""Diffusion decoding for Dream: the reference sampler and a Fast-dLLM-style cached sampler.

Input: a `DreamModel`, prompts as token ids and a `SamplerSpec`. Output: `gen_length` generated
ids per prompt (`GenerationResult`), with everything after the first EOS set to EOS. The batch is
left-padded here; every prompt's N generated slots sit at the same columns [P, P + N).

- `reference`: Dream's `diffusion_generate` (remote `generation_utils.py`, dream.md §14), as a user
  calls it. Start from prompt ++ N masks; timesteps t_i = linspace(1, eps, steps + 1); each step
  runs one full forward with `lm_head` over every position (Dream's [B, L, V] logits: the same
  GEMM, so the same rounding), shifts the logits by one (dream.md §6) and proposes a token for
  every mask with Dream's `sample_tokens`: in the model's dtype, logits / temperature, top-p, then
  top-k (masked with the dtype's lowest value), softmax; T = 0 takes the argmax, T > 0 draws
  `Categorical(probs)` (`torch.multinomial`, the same random stream). `origin` reveals each mask
  with probability 1 - s/t (one `torch.rand` per mask, then proposals only for the revealed
  ones); the others reveal the k = int(M(1 - s/t)) most confident masks (the last step: all),
  ranking by p(x0) (`maskgit_plus`), top1 - top2 (`topk_margin`) or sum p log p (`entropy`), with
  `torch.topk` (so exact ties go the same way) or, with `alg_temp > 0`, `torch.multinomial` of
  softmax(conf / alg_temp). With eps > 0 the count is below M/steps: steps = N reveals 0, then 1
  per step, then 2 at the last step, exactly as Dream (dream.md §14). The mask token may be
  proposed, as in Dream (that position stays masked). `top_k` defaults to 50 because Dream's
  `diffusion_generate` called without a `generation_config` inherits transformers 4.46.2's
  legacy `top_k=50` (its `generation_config.json` says null); it renormalises p over the top 50
  and so changes the confidences that rank positions. Checked token for token and step for step
  against the official code's outputs on a tiny model (`tests/unit/test_sampler_parity.py`).
- `fast`: Fast-dLLM (arXiv 2505.22618; data-and-eval.md §7). The N slots are decoded block by block,
  left to right. Each step reveals every mask of the current block whose p(x0) > threshold, and at
  least the most confident one. A block starts with one full forward (it also reveals), whose
  keys/values of the settled prefix (prompt and earlier blocks; with `dual_cache` also of the
  all-mask suffix) are kept; later steps of the block run only positions [block start - 1, end)
  (prefix cache) or [block start - 1, block end) (dual cache). The window starts one position early
  so the logit shift of the block's first position uses a freshly computed hidden state. The cache
  is Fast-dLLM's approximation: in a bidirectional model the prefix's keys/values at layers >= 2
  depend on the block's tokens, which change during the block; the cache keeps their values from
  the block start. On a 1-layer model (keys depend only on token and position) it is exact.
  Unlike Fast-dLLM's Dream code, the block's first position is not force-revealed at the block
  start, and the window starts at block start - 1 instead of duplicating its first logits.
  With greedy top-k proposals (temperature 0, no top-p: the default) a step proposes for every
  position of the block at once, with fixed shapes and no host sync, so on a GPU it runs inside
  the windowed forward's CUDA graph; other settings propose for the masked positions only.
  `steps`, `eps`, `alg` and `alg_temp` are unused. Fast mode at threshold 1.0 is NOT reference
  mode with steps = N: the reference reveals 0, 1, ..., 1, 2 tokens (above) from full forwards,
  fast reveals 1 per step with a stale cache (the tests pin the equivalences that do hold).

Both modes call the model through `forwards.py`: plain PyTorch calls, or on a GPU the same calls
recorded once per batch shape as CUDA graphs and replayed (bitwise the same results on the same
left-padded batch; graph batches are padded to a multiple of 64 prompt tokens).

Deviations from Dream's code, all in both modes where they apply. None changes a reference-mode
decode whose prompts hold no mask id and whose model never proposes the mask token: then every
row has the same number of masks at every step, so 1 and 2 change nothing.
1. k is computed per row from that row's own masks (Dream uses one batch-averaged k), so a row
   never has non-mask positions re-masked.
2. Only the N generated slots are decoded: mask ids inside a prompt are left as they are.
3. Fast mode only: the mask token id is never proposed (its logit is the lowest value before
   filtering); otherwise a block whose best proposal is the mask would never finish.
4. Fast mode only: softmax, filtering and confidences are fp32, sampling is Gumbel-max from
   `generator` (same distributions as Dream's `Categorical`, not the same random stream).
5. The reference loop stops early once no mask remains (possible with `origin`); outputs and
   the history are the same.
6. After decoding, everything after the first EOS is set to EOS (`GenerationResult.tokens`; the
   history keeps the raw sequences).
Step-for-step equality with the official code needs bitwise the same logits, so reference mode
runs the same operations on the same shapes as Dream's code (a forward over [B, L], `lm_head` over
all B x L positions, then the masked rows). Checked in fp32 and bf16 on the CPU, exact confidence
ties and the last steps (one to three masks left) included (`tests/unit/test_sampler_parity.py`).
Not checked on a GPU: there our attention and Dream's may run different kernels, which round
differently in bf16, and a near-tie can then flip.

Shape letters: B batch, L padded prompt + generation length, P padded prompt length, N generated
slots, C block columns, W window (positions run in a cached step), M masked positions (flattened),
R proposal rows per chunk, D hidden size, V vocab size.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dream_job.diffusion.forwards import Forwards, make_forwards
from dream_job.model.dream import DreamModel
from dream_job.spec import SAMPLER_LOGIT_ROWS, SamplerSpec, round_up_prompt_length

# Masked positions per proposal chunk (`SAMPLER_LOGIT_ROWS`, 256): fast mode's lm_head calls and
# the fp32 softmax temporaries. The maths is row-wise, so chunks change nothing, except for
# sampling in reference mode: one multinomial over all rows is what draws Dream's random numbers,
# so there all masks go in one call (Dream's [B, L, V]).
_PROPOSAL_ROWS = SAMPLER_LOGIT_ROWS
# Dream's `sample_tokens` for `entropy`: sum p log(p + eps).
_ENTROPY_EPS = 1e-10
# torch's `Categorical(probs)` argument check (constraints.simplex): |sum(p) - 1| < 1e-6.
_SIMPLEX_TOL = 1e-6


@dataclass(frozen=True)
class GenerationResult:
    """Generated ids of one `generate` call.

    Attributes:
        tokens: Per prompt, exactly `gen_length` ids; everything after the first EOS is EOS.
        num_forward_passes: Model calls for the whole batch (full or cached windows).
        seconds: Wall time of the call, including padding and the copy back to Python lists.
        history: With `record_history`, the whole left-padded batch (prompt and slots, raw ids,
            no EOS fill) after every step: `steps` entries in reference mode, as Dream's
            `output_history` (after an early stop the last state repeats), one per forward pass
            in fast mode; else empty.
    """

    tokens: list[list[int]]
    num_forward_passes: int
    seconds: float
    history: list[list[list[int]]] = field(default_factory=list)


def decode_until_eos(tokens: list[int], eos_id: int) -> list[int]:
    """Return `tokens` up to (not including) the first `eos_id`; all of them if there is none."""
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else list(tokens)


def generate(
    model: DreamModel,
    prompts: list[list[int]],
    settings: SamplerSpec,
    *,
    mask_id: int,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator | None = None,
    record_history: bool = False,
    forwards: Forwards | None = None,
) -> GenerationResult:
    """Decode `settings.gen_length` tokens after each prompt with Dream's masked diffusion.

    The prompts are left-padded with `pad_id` into one batch; with any padding the model gets the
    padding mask and positions cumsum(mask) - 1 (clamped at 0), as Dream does. Runs under
    `torch.inference_mode` on the model's device and dtype. See the module docstring for the two
    modes and for where they deviate from Dream's code.

    Args:
        model: The Dream model (eval mode expected; it is not modified).
        prompts: Token ids per prompt; each must be non-empty.
        settings: Mode, length, steps, proposal and position-selection settings.
        mask_id: The `<|mask|>` id (151666 for Dream).
        eos_id: The EOS id (151643 for Dream).
        pad_id: The id put on left pads (Dream: 151643).
        generator: Randomness for temperature > 0, `origin` and `alg_temp > 0`; None uses torch's
            global generator, which is what Dream's code uses: `torch.manual_seed(s)` before both
            calls gives the same draws in reference mode. A generator on another device than the
            model (e.g. a CPU one for a CUDA model) only seeds a fresh one on the model's device:
            drawing [masks, V] uniforms on the CPU each step would dominate the run time.
            Temperature 0 with a non-`origin` algorithm draws nothing and is deterministic.
        record_history: Also return the batch after every step (`GenerationResult.history`).
        forwards: How the model is called (`forwards.py`): pass one `make_forwards(model, settings)`
            to every call of a loop so CUDA graphs recorded for one batch serve the next; None
            makes one for this call (graphs when `settings.cuda_graphs` and the model is on CUDA).
            Graph-replayed batches are left-padded (`SamplerSpec.padded_prompt_length`).

    Returns:
        The generated ids (`gen_length` per prompt), the number of forward passes and the time.

    Raises:
        ValueError: `prompts` is empty or holds an empty prompt.
    """
    if not prompts or any(len(prompt) == 0 for prompt in prompts):
        lengths = [len(prompt) for prompt in prompts]
        raise ValueError(f"`prompts` must be a non-empty list of non-empty prompts, got lengths `{lengths}`")
    start_s = time.perf_counter()
    device = model.lm_head.weight.device
    if generator is not None and generator.device != device:
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        generator = torch.Generator(device=device).manual_seed(seed)
    forwards = make_forwards(model, settings) if forwards is None else forwards
    P = round_up_prompt_length(max(len(prompt) for prompt in prompts), forwards.prompt_multiple)
    N = settings.gen_length
    rows = [[pad_id] * (P - len(prompt)) + list(prompt) + [mask_id] * N for prompt in prompts]
    with torch.inference_mode():
        x_BL = torch.tensor(rows, dtype=torch.long, device=device)
        real_BL = torch.ones_like(x_BL, dtype=torch.bool)
        for b, prompt in enumerate(prompts):
            real_BL[b, : P - len(prompt)] = False
        position_ids_BL = (real_BL.long().cumsum(-1) - 1).clamp(min=0)
        attention_mask_BL = None if bool(real_BL.all()) else real_BL  # no mask: SDPA's fast path
        decode = _decode_reference if settings.mode == "reference" else _decode_fast
        history: list[Tensor] | None = [] if record_history else None
        num_passes = decode(forwards, model.lm_head, x_BL, attention_mask_BL, position_ids_BL, P, settings, mask_id,
                            generator, history)
        tokens = _fill_after_eos(x_BL[:, P:], eos_id).tolist()
        rows = [x.tolist() for x in history] if history is not None else []
    return GenerationResult(tokens, num_passes, time.perf_counter() - start_s, rows)


def _decode_reference(
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
            reveal_M = _uniform((b_M.numel(),), generator, x_BL.device) < p_reveal
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


def _decode_fast(
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
        logits_RV = _filter_logits(logits_RV, settings)
        probs_RV = logits_RV.softmax(dim=-1)
        if settings.temperature > 0:  # Gumbel-max: argmax(log p + G) is a draw from p
            gumbel_RV = -torch.log(-torch.log(_uniform(logits_RV.shape, generator, logits_RV.device)))
            x0_R = (logits_RV + gumbel_RV).argmax(dim=-1)
            conf_R = probs_RV.gather(-1, x0_R[:, None]).squeeze(-1)
        else:
            conf_R, x0_R = probs_RV.max(dim=-1)
        x0s.append(x0_R)
        confs.append(_confidence(probs_RV, conf_R, alg))
    return torch.cat(x0s), torch.cat(confs)


def _sample_tokens(
    logits_MV: Tensor, settings: SamplerSpec, alg: str, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Propose a token and a confidence for each masked position exactly as Dream's `sample_tokens`.

    From the masked positions' (shifted) logits, in the model's dtype: logits / temperature,
    top-p, top-k, softmax. T = 0: the argmax and its probability (in chunks of `_PROPOSAL_ROWS`
    rows; every step is row-wise). T > 0: for all rows in one call,
    `Categorical(probs).sample()`, i.e. one `torch.multinomial(probs / sum, 1, replacement=True)`
    (the same random stream as Dream's), and p(x0); like Dream, the argmax when torch's argument
    check of `Categorical` would fail. `topk_margin` / `entropy` replace the confidence as in
    `_propose`.

    Returns:
        x0_M: Proposed ids (the mask token included, as Dream).
        conf_M: Confidences in the model's dtype (higher = reveal first).
    """
    if settings.temperature == 0 and logits_MV.shape[0] > _PROPOSAL_ROWS:
        parts = [_sample_tokens(chunk, settings, alg, generator) for chunk in logits_MV.split(_PROPOSAL_ROWS)]
        return torch.cat([x0 for x0, _ in parts]), torch.cat([conf for _, conf in parts])
    if settings.temperature > 0:
        logits_MV = logits_MV / settings.temperature
    probs_MV = _filter_logits(logits_MV, settings).softmax(dim=-1)
    conf_M, x0_M = probs_MV.max(dim=-1)
    if settings.temperature > 0:
        normalised_MV = probs_MV / probs_MV.sum(dim=-1, keepdim=True)  # what `Categorical` stores and checks
        in_simplex_M = (normalised_MV >= 0).all(dim=-1) & ((normalised_MV.sum(dim=-1) - 1).abs() < _SIMPLEX_TOL)
        if bool(in_simplex_M.all()):
            x0_M = torch.multinomial(normalised_MV, 1, replacement=True, generator=generator).squeeze(-1)
            conf_M = probs_MV.gather(-1, x0_M[:, None]).squeeze(-1)
    return x0_M, _confidence(probs_MV, conf_M, alg)


def _filter_logits(logits_RV: Tensor, settings: SamplerSpec) -> Tensor:
    """Apply top-p, then top-k, as Dream: filtered logits become the dtype's lowest value."""
    if settings.top_p is not None and settings.top_p < 1:
        logits_RV = _filter_top_p(logits_RV, settings.top_p)
    if settings.top_k is not None:
        kth_R1 = logits_RV.topk(min(settings.top_k, logits_RV.shape[-1]), dim=-1).values[:, -1:]
        logits_RV = logits_RV.masked_fill(logits_RV < kth_R1, torch.finfo(logits_RV.dtype).min)
    return logits_RV


def _confidence(probs_RV: Tensor, p_x0_R: Tensor, alg: str) -> Tensor:
    """Return the ranking confidence of `alg`: p(x0), top1 - top2, or sum p log(p + 1e-10)."""
    if alg == "topk_margin":
        top2_R2 = probs_RV.topk(2, dim=-1).values
        return top2_R2[:, 0] - top2_R2[:, 1]
    if alg == "entropy":
        return (probs_RV * torch.log(probs_RV + _ENTROPY_EPS)).sum(dim=-1)
    return p_x0_R


def _filter_top_p(logits_RV: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of tokens whose probability reaches `top_p` (always the top one)."""
    sorted_RV, order_RV = logits_RV.sort(dim=-1, descending=True)
    cumulative_RV = sorted_RV.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted_RV = torch.zeros_like(cumulative_RV, dtype=torch.bool)
    drop_sorted_RV[:, 1:] = cumulative_RV[:, :-1] > top_p  # shifted right: keep the token that crosses
    drop_RV = drop_sorted_RV.scatter(-1, order_RV, drop_sorted_RV)
    return logits_RV.masked_fill(drop_RV, torch.finfo(logits_RV.dtype).min)


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


def _uniform(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U(0, 1) draws in fp32 from `generator`, clamped away from 0 so Gumbel noise stays finite."""
    u = torch.rand(shape, generator=generator, device=device)
    return u.clamp_(min=torch.finfo(torch.float32).tiny)


def _fill_after_eos(tokens_BN: Tensor, eos_id: int) -> Tensor:
    """Set every token after the first `eos_id` of each row to `eos_id`."""
    after_eos_BN = (tokens_BN == eos_id).cumsum(dim=1) > 0
    return torch.where(after_eos_BN, eos_id, tokens_BN)
