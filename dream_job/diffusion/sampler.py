"""Diffusion decoding for Dream: the reference sampler and a Fast-dLLM-style cached sampler.

This module is the entry point (`generate`: padding, the result) and the rules of both modes;
the loops live in `reference.py` and `fast.py`, the token proposals they share in `proposals.py`.

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

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dream_job.diffusion.fast import decode_fast
from dream_job.diffusion.forwards import Forwards, make_forwards
from dream_job.diffusion.reference import decode_reference
from dream_job.model.dream import DreamModel
from dream_job.spec import SamplerSpec, round_up_prompt_length


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
        decode = decode_reference if settings.mode == "reference" else decode_fast
        history: list[Tensor] | None = [] if record_history else None
        num_passes = decode(forwards, model.lm_head, x_BL, attention_mask_BL, position_ids_BL, P, settings, mask_id,
                            generator, history)
        tokens = _fill_after_eos(x_BL[:, P:], eos_id).tolist()
        rows = [x.tolist() for x in history] if history is not None else []
    return GenerationResult(tokens, num_passes, time.perf_counter() - start_s, rows)


def _fill_after_eos(tokens_BN: Tensor, eos_id: int) -> Tensor:
    """Set every token after the first `eos_id` of each row to `eos_id`."""
    after_eos_BN = (tokens_BN == eos_id).cumsum(dim=1) > 0
    return torch.where(after_eos_BN, eos_id, tokens_BN)
