"""The diffusion sampler: Dream's reveal schedule, batching, the KV cache and the fast mode.

Shape letters as in `dream_job/diffusion/sampler.py`: B batch, L length, V vocab.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
import torch

from dream_job.diffusion.forwards import (
    EagerForwards,
    GraphedForwards,
    compile_decoder_layers,
    make_forwards,
    uncompile_decoder_layers,
)
from dream_job.diffusion.sampler import _fill_after_eos, decode_until_eos, generate
from dream_job.model.dream import DreamConfig, DreamModel
from dream_job.spec import SamplerSpec
from tests.conftest import tiny_config

MASK, EOS, PAD = 63, 1, 0
# Larger init than Dream's 0.02 so the tiny model's probabilities are far from uniform and
# argmax decisions are not at the mercy of float noise.
TINY = tiny_config(vocab_size=64, initializer_range=0.3, mask_token_id=MASK, pad_token_id=PAD, eos_token_id=EOS,
                   bos_token_id=EOS)
# Left padding: lengths 3, 1, 5 (one prompt holds a mask id, which must be kept).
PROMPTS = [[5, 9, 12], [7], [3, 4, MASK, 6, 8]]
CONFIDENCE_ALGS = ["maskgit_plus", "topk_margin", "entropy"]


def make_model(seed: int = 0, **overrides: Any) -> DreamModel:
    torch.manual_seed(seed)
    model = DreamModel(replace(TINY, **overrides))
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model.eval()


def spec(**kw: Any) -> SamplerSpec:
    # top_k None: the brute-force references below rank by the full softmax. The default (50, a
    # user's call of Dream's code) is pinned against Dream's outputs in test_sampler_parity.py.
    return SamplerSpec(**{"mode": "reference", "gen_length": 8, "steps": 8, "alg": "maskgit_plus", "top_k": None, **kw})


def run(model: DreamModel, prompts: list[list[int]], settings: SamplerSpec, **kw: Any) -> list[list[int]]:
    return generate(model, prompts, settings, mask_id=MASK, eos_id=EOS, pad_id=PAD, **kw).tokens


def record_inputs(model: DreamModel) -> list[torch.Tensor]:
    """Wrap the model's two entry points: record every input and check every output is finite."""
    calls: list[torch.Tensor] = []

    def wrap(fn):  # type: ignore[no-untyped-def]
        def wrapped(input_ids_BL, **kw):  # type: ignore[no-untyped-def]
            calls.append(input_ids_BL.clone())
            out = fn(input_ids_BL, **kw)
            hidden_BLD = out[0] if isinstance(out, tuple) else out
            assert torch.isfinite(hidden_BLD).all()  # padded rows must not produce NaN
            return out

        return wrapped

    model.hidden_states = wrap(model.hidden_states)  # type: ignore[method-assign]
    model.hidden_states_cached = wrap(model.hidden_states_cached)  # type: ignore[method-assign]
    return calls


def dream_schedule(n: int, steps: int, eps: float = 1e-3) -> list[int]:
    """Brute force in float64: reveals per step, k = floor(M (1 - s/t)), all at the last step."""
    remaining, out = n, []
    for i in range(steps):
        t, s = 1 - i * (1 - eps) / steps, 1 - (i + 1) * (1 - eps) / steps
        k = remaining if i == steps - 1 else math.floor(remaining * (1 - s / t))
        out.append(k)
        remaining -= k
    return out


# --- reference mode --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", CONFIDENCE_ALGS)
@pytest.mark.parametrize(("steps", "expected"), [(8, [0, 1, 1, 1, 1, 1, 1, 2]), (4, [1, 2, 2, 3]), (1, [8])])
def test_reference_reveals_follow_dreams_schedule(alg: str, steps: int, expected: list[int]) -> None:
    # With eps = 1e-3, M (1 - s/t) is just below M / steps: Dream's README says "gen/steps per
    # step" but its code reveals 0 first and catches up at the last step (dream.md §14).
    assert dream_schedule(8, steps) == expected
    model = make_model()
    calls = record_inputs(model)
    result = generate(model, PROMPTS, spec(steps=steps, alg=alg, alg_temp=0.5),
                      mask_id=MASK, eos_id=EOS, pad_id=PAD, generator=torch.Generator().manual_seed(0))
    assert result.num_forward_passes == steps == len(calls)
    P = max(map(len, PROMPTS))
    masks_before_BS = torch.stack([(x_BL[:, P:] == MASK).sum(1) for x_BL in calls], dim=1)  # (B, steps)
    masks_after_BS = torch.cat((masks_before_BS[:, 1:], torch.zeros(len(PROMPTS), 1, dtype=torch.long)), dim=1)
    for row in (masks_before_BS - masks_after_BS).tolist():  # every row follows its own schedule
        assert row == expected


@pytest.mark.parametrize(
    "settings",
    [spec(alg="origin"), spec(alg="origin", temperature=0.7), spec(alg="entropy", temperature=0.7, top_p=0.9),
     spec(alg="topk_margin", temperature=1.0, top_k=5), spec(steps=3, alg_temp=0.1),
     spec(mode="fast", block_length=3, threshold=0.3), spec(mode="fast", dual_cache=True, temperature=0.5)],
)
def test_prompt_kept_no_mask_left_and_finite(settings: SamplerSpec) -> None:
    model = make_model()
    calls = record_inputs(model)
    tokens = run(model, PROMPTS, settings, generator=torch.Generator().manual_seed(0))
    P, N = max(map(len, PROMPTS)), settings.gen_length
    padded_BP = torch.tensor([[PAD] * (P - len(p)) + p for p in PROMPTS])
    full_calls = [x_BL for x_BL in calls if x_BL.shape[1] == P + N]
    assert full_calls and all(torch.equal(x_BL[:, :P], padded_BP) for x_BL in full_calls)
    assert all(len(row) == N for row in tokens)
    if settings.mode == "fast":  # reference mode may keep one where the model proposed it, as Dream
        assert all(MASK not in row for row in tokens)


def test_reference_mode_keeps_a_proposed_mask_token_as_dream_fast_mode_never_proposes_it() -> None:
    model = make_model()
    one_step = spec(steps=1)  # one step reveals every slot with its argmax
    token = run(model, PROMPTS, one_step)[0][0]
    with torch.no_grad():  # wherever `token` wins with a positive logit, the mask token now wins
        model.lm_head.weight[MASK] = 3 * model.lm_head.weight[token]
    assert run(model, PROMPTS, one_step)[0][0] == MASK
    fast = run(model, PROMPTS, spec(mode="fast", block_length=4))
    assert all(MASK not in row for row in fast)


def test_after_the_first_eos_everything_is_eos() -> None:
    model = make_model()
    for settings in (spec(), spec(mode="fast", block_length=4, threshold=0.5)):
        raw = run(model, PROMPTS, settings)
        # The sampler ignores EOS while decoding, so declaring a generated id EOS changes only the
        # final fill: the same decode, cut after that id's first occurrence.
        eos = raw[0][2]
        assert raw[0][3:] != [eos] * 5  # the fill below has something to do
        tokens = generate(model, PROMPTS, settings, mask_id=MASK, eos_id=eos, pad_id=PAD).tokens
        expected = [row[: row.index(eos)] + [eos] * (len(row) - row.index(eos)) if eos in row else row for row in raw]
        assert tokens == expected
        assert tokens[0][2:] == [eos] * 6
    assert _fill_after_eos(torch.tensor([[4, 1, 5, 1], [4, 5, 6, 7]]), 1).tolist() == [[4, 1, 1, 1], [4, 5, 6, 7]]
    assert decode_until_eos([4, 5, 1, 1], 1) == [4, 5]
    assert decode_until_eos([4, 5], 1) == [4, 5]


@pytest.mark.parametrize(
    "settings",
    [*(spec(alg=a) for a in CONFIDENCE_ALGS), spec(steps=3, alg="entropy"),
     spec(gen_length=100, steps=5, alg="entropy", top_k=50),  # 300 masks: proposals in chunks, alone in one call
     spec(mode="fast", block_length=3, threshold=0.3),
     spec(mode="fast", block_length=3, threshold=0.3, dual_cache=True)],
)
def test_greedy_is_deterministic_and_a_batch_equals_one_by_one(settings: SamplerSpec) -> None:
    model = make_model()
    batch = run(model, PROMPTS, settings)
    assert run(model, PROMPTS, settings) == batch
    assert [run(model, [p], settings)[0] for p in PROMPTS] == batch


@pytest.mark.parametrize("settings", [spec(alg="origin"), spec(temperature=0.8, alg_temp=0.3),
                                      spec(mode="fast", temperature=0.8)])
def test_sampling_is_reproducible_with_a_generator(settings: SamplerSpec) -> None:
    model = make_model()
    first = run(model, PROMPTS, settings, generator=torch.Generator().manual_seed(3))
    assert run(model, PROMPTS, settings, generator=torch.Generator().manual_seed(3)) == first
    others = [run(model, PROMPTS, settings, generator=torch.Generator().manual_seed(s)) for s in range(4, 8)]
    assert any(o != first for o in others)


def test_empty_prompt_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty prompts, got lengths `\\[2, 0\\]`"):
        run(make_model(), [[3, 4], []], spec())


# --- the KV-cache entry point ----------------------------------------------------------------


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x_BL = torch.randint(2, 63, (3, 12))
    mask_BL = torch.ones(3, 12, dtype=torch.bool)
    mask_BL[1, :4] = False
    mask_BL[2, :7] = False
    return x_BL, mask_BL, (mask_BL.long().cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("padded", [False, True])
def test_forward_cached_without_cache_equals_forward(padded: bool) -> None:
    model = make_model()
    x_BL, mask_BL, pos_BL = padded_batch()
    if not padded:
        mask_BL, pos_BL = None, torch.arange(12).expand(3, 12)
    with torch.no_grad():
        expected_BLV = model(x_BL, attention_mask_BL=mask_BL, position_ids_BL=pos_BL)
        logits_BLV, kv = model.forward_cached(x_BL, position_ids_BQ=pos_BL, key_mask_BS=mask_BL)
    torch.testing.assert_close(logits_BLV, expected_BLV, rtol=1e-5, atol=1e-5)
    assert len(kv) == TINY.num_hidden_layers and kv[0][0].shape == (3, TINY.num_key_value_heads, 12, 8)


@pytest.mark.parametrize("dual", [False, True])
def test_forward_cached_with_a_cache_of_the_same_tokens_is_exact(dual: bool) -> None:
    model = make_model()
    x_BL, mask_BL, pos_BL = padded_batch()
    lo, hi = 8, 10  # window = [lo, hi) with dual cache (prefix and suffix cached), else [lo, L)
    end = hi if dual else 12
    cached = torch.cat((torch.arange(lo), torch.arange(hi, 12))) if dual else torch.arange(lo)
    with torch.no_grad():
        full_BLV, kv = model.forward_cached(x_BL, position_ids_BQ=pos_BL, key_mask_BS=mask_BL)
        past_kv = [(k[:, :, cached], v[:, :, cached]) for k, v in kv]
        key_mask_BS = torch.cat((mask_BL[:, cached], mask_BL[:, lo:end]), dim=1)
        window_BWV, window_kv = model.forward_cached(
            x_BL[:, lo:end], position_ids_BQ=pos_BL[:, lo:end], past_kv=past_kv, key_mask_BS=key_mask_BS
        )
    torch.testing.assert_close(window_BWV, full_BLV[:, lo:end], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(window_kv[1][0], kv[1][0][:, :, lo:end], rtol=1e-5, atol=1e-5)


# --- fast mode -------------------------------------------------------------------------------


def greedy_blockwise(model: DreamModel, prompt: list[int], n: int, block_length: int) -> tuple[list[int], int]:
    """Brute force: full forward every step, reveal the single most confident mask of the block."""
    return thresholded_blockwise(model, prompt, n, block_length, threshold=1.0, top_k=None)


@pytest.mark.parametrize("dual", [False, True])
@pytest.mark.parametrize("block_length", [8, 3])
def test_fast_equals_brute_force_when_the_cache_is_exact(dual: bool, block_length: int) -> None:
    # With one layer, a cached key/value depends only on its token and position, and cached
    # tokens do not change during a block, so Fast-dLLM's approximation is exact. Threshold 1.0
    # is never exceeded: one reveal per step, the most confident.
    model = make_model(num_hidden_layers=1)
    settings = spec(mode="fast", block_length=block_length, threshold=1.0, dual_cache=dual)
    for prompt in PROMPTS:
        expected, num_passes = greedy_blockwise(model, prompt, 8, block_length)
        result = generate(model, [prompt], settings, mask_id=MASK, eos_id=EOS, pad_id=PAD)
        assert (result.tokens[0], result.num_forward_passes) == (expected, num_passes) == (expected, 8)


def thresholded_blockwise(model: DreamModel, prompt: list[int], n: int, block_length: int, threshold: float,
                          top_k: int | None) -> tuple[list[int], int]:
    """Brute force of Fast-dLLM's rule: every mask whose top-k renormalised p(x0) > threshold, at least the best.

    Full forward every step; `top_k` None ranks by the whole softmax; threshold 1.0 is never
    exceeded, so each step reveals only the most confident mask of the block.
    """
    x, num_passes = prompt + [MASK] * n, 0
    for lo in range(len(prompt), len(x), block_length):
        hi = min(lo + block_length, len(x))
        while MASK in x[lo:hi]:
            with torch.no_grad():
                logits_LV = model(torch.tensor([x]))[0].float()
            num_passes += 1
            logits_LV[:, MASK] = -torch.inf
            if top_k is not None:
                kth_L1 = logits_LV.sort(dim=-1, descending=True).values[:, top_k - 1 : top_k]
                logits_LV = logits_LV.masked_fill(logits_LV < kth_L1, -torch.inf)
            probs_LV = logits_LV.softmax(-1)
            masks = [i for i in range(lo, hi) if x[i] == MASK]
            conf = {i: probs_LV[i - 1].max().item() for i in masks}
            best = max(masks, key=conf.__getitem__)
            for i in masks:
                if i == best or conf[i] > threshold:
                    x[i] = int(probs_LV[i - 1].argmax())
    return x[len(prompt):], num_passes


@pytest.mark.parametrize("threshold", [0.3, 1.0])
@pytest.mark.parametrize("top_k", [3, 50])
@pytest.mark.parametrize("dual", [False, True])
def test_fast_thresholds_the_top_k_renormalised_probability(top_k: int, threshold: float, dual: bool) -> None:
    # One layer (exact cache); top-k renormalises p(x0) over the k kept tokens, so a smaller k
    # reveals more per step. 50 is the default and below the vocabulary of 64. Threshold 1.0 is
    # never exceeded: one reveal per step, the most confident.
    model = make_model(num_hidden_layers=1)
    settings = spec(mode="fast", block_length=4, threshold=threshold, top_k=top_k, dual_cache=dual)
    for prompt in PROMPTS:
        expected = thresholded_blockwise(model, prompt, 8, 4, threshold, top_k)
        result = generate(model, [prompt], settings, mask_id=MASK, eos_id=EOS, pad_id=PAD)
        assert (result.tokens[0], result.num_forward_passes) == expected
    # A batch decodes each row as alone (left padding, rows finish their blocks at different steps).
    batch = generate(model, PROMPTS, settings, mask_id=MASK, eos_id=EOS, pad_id=PAD).tokens
    assert batch == [thresholded_blockwise(model, prompt, 8, 4, threshold, top_k)[0] for prompt in PROMPTS]


def test_fast_with_blocks_of_one_is_left_to_right_greedy_at_any_depth() -> None:
    model = make_model()  # two layers: cached steps would be approximate, but none happen
    for prompt in PROMPTS:
        expected, _ = greedy_blockwise(model, prompt, 8, 1)
        result = generate(model, [prompt], spec(mode="fast", block_length=1), mask_id=MASK, eos_id=EOS, pad_id=PAD)
        assert (result.tokens[0], result.num_forward_passes) == (expected, 8)


def test_fast_needs_fewer_passes_on_a_confident_model() -> None:
    model = make_model()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    n = 16
    ref = generate(model, PROMPTS, spec(gen_length=n, steps=n), mask_id=MASK, eos_id=EOS, pad_id=PAD)
    fast = generate(model, PROMPTS, spec(mode="fast", gen_length=n, block_length=8, threshold=0.5),
                    mask_id=MASK, eos_id=EOS, pad_id=PAD)
    assert ref.num_forward_passes == n
    assert fast.num_forward_passes < n / 2, fast.num_forward_passes


def test_the_cpu_decodes_with_eager_calls_and_refuses_graphs() -> None:
    model = make_model()
    assert type(make_forwards(model, SamplerSpec(cuda_graphs=True))) is EagerForwards
    with pytest.raises(ValueError, match="CUDA graphs need a model on a CUDA device"):
        GraphedForwards(model)


def test_one_eager_forwards_object_serves_many_calls() -> None:
    model, settings = make_model(), spec(mode="fast", gen_length=8, block_length=4, threshold=0.6)
    forwards = EagerForwards(model)
    for prompts in (PROMPTS, [[2, 3]], PROMPTS):
        assert run(model, prompts, settings, forwards=forwards) == run(model, prompts, settings)


def test_compiled_layers_can_be_restored() -> None:
    model = make_model()
    compile_decoder_layers(model)
    assert all(callable(vars(layer)["forward_cached"]) for layer in model.model.layers)
    uncompile_decoder_layers(model)
    assert all("forward_cached" not in vars(layer) for layer in model.model.layers)
