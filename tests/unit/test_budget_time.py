"""Token counts and the time model against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from budget.flops import forward_flops_per_token, train_flops_per_token
from budget.gpus import resolve_gpu
from budget.shape import DREAM_7B
from budget.timing import Calibration, calibration, eval_seconds, overhead_seconds, save_plan, train_seconds
from budget.tokens import EvalSuite, Workload, length_profile, truncated_moments, workload
from dream_job.spec import JobSpec, load_spec
from tests.conftest import REPO

P = 7_615_616_512
# Model FLOPs per token of a 2000-token row of Dream 7B (budget/flops.py's convention):
# 6 x 6,525,288,448 decoder matmul weights + 12 x 28 layers x 2000 x 3584 (bidirectional attention)
# + 6 x 3584 x 152,064 x 0.5 (lm_head at the masked half) = 43,195,170,816.
MODEL_FLOPS = 6 * 6_525_288_448 + 12 * 28 * 2000 * 3584 + 6 * 3584 * 152_064 * 0.5
RECOMPUTE_ALL_LAYERS = 2 * 6_525_288_448 + 4 * 28 * 2000 * 3584  # 13,853,392,896: every layer's second forward
RECOMPUTE_HEAD = 2 * 3584 * 152_064 * 0.5  # 544,997,376: the loss chunk's lm_head, recomputed always
COMPILE_FACTOR = 1.274  # calibration.toml [compile]: compiled over eager hardware rate


def job_mfu(calibrated: float) -> float:
    """MFU of jobs/dream-s1k.yaml (compiled, no checkpointing) from one calibrated at all layers
    checkpointed, eager: same hardware FLOP rate x the compile factor, fewer hardware FLOPs per token."""
    return (calibrated * COMPILE_FACTOR * (MODEL_FLOPS + RECOMPUTE_ALL_LAYERS + RECOMPUTE_HEAD)
            / (MODEL_FLOPS + RECOMPUTE_HEAD))


def test_profile_tokens_after_truncation() -> None:
    quantiles = length_profile()["total_quantiles"]
    clipped, fits, _ = truncated_moments(quantiles, 2048)
    # Q(u) rises 800 -> 2048 over u in [0, 0.04], then stays above 2048: E[min(Q, 2048)] =
    # 0.04 x (800 + 2048) / 2 + 0.96 x 2048 = 56.96 + 1966.08 = 2023.04.
    assert clipped == pytest.approx(2023.04)
    assert fits == pytest.approx(0.04)
    # The uncut mean is within the published 8.5-10K estimate (data-and-eval.md §3).
    assert 8500 < truncated_moments(quantiles, 10**9)[0] < 10_000
    spec = load_spec(REPO / "jobs" / "dream-s1k.yaml")
    work = workload(spec, None)
    assert work.rows == 1000 - 50 and work.tokens_per_epoch == pytest.approx(950 * 2023.04)
    dropped = workload(load_spec(REPO / "jobs" / "dream-s1k.yaml", ["data.truncation=drop"]), None)
    assert dropped.rows == int(950 * 0.04) and dropped.mean_length == pytest.approx((800 + 2048) / 2)


def test_train_seconds_on_one_gpu() -> None:
    spec = load_spec(REPO / "jobs" / "dream-s1k.yaml")
    work = Workload(rows=950, tokens_per_epoch=950 * 2000.0, mean_length=2000.0, suites=[], source="test",
                    is_estimate=False)
    h100 = resolve_gpu("H100")
    steps, seconds, mfu, measured = train_seconds(spec, DREAM_7B, work, h100, method="full", num_gpus=1,
                                                  trainable=P, cal=calibration())
    assert steps == 950 // 16 * 3 == 177 and not measured
    assert MODEL_FLOPS == 43_195_170_816 == train_flops_per_token(
        hidden=3584, intermediate=18944, num_layers=28, num_heads=28, num_kv_heads=4, vocab=152_064, seq_len=2000)
    # H100 `full` is calibrated at 0.26 (calibration.toml [train_mfu], method factor 1.0):
    # 0.26 x 1.274 x 57,593,561,088 / 43,740,168,192 = 0.43615.
    assert job_mfu(0.26) == pytest.approx(0.436150, abs=1e-6)
    assert mfu == pytest.approx(job_mfu(0.26))
    # One GPU: no all-gather or reduce-scatter. 16 micro-steps of 2000 tokens at MODEL_FLOPS per
    # token over 989e12 x MFU, plus the HBM-bound AdamW step: 36 B/param over 3.35 TB/s at 70 %.
    micro = 2000 * MODEL_FLOPS / (989e12 * job_mfu(0.26))  # 0.2003 s
    optimizer = 36 * P / (3350e9 * 0.7)  # 0.1169 s
    assert 177 * (16 * micro + optimizer) == pytest.approx(587.880, abs=1e-3)
    assert seconds == pytest.approx(177 * (16 * micro + optimizer))


def test_multi_gpu_is_bound_by_the_slower_of_compute_and_all_gather() -> None:
    spec = load_spec(REPO / "jobs" / "dream-s1k.yaml")
    work = Workload(rows=950, tokens_per_epoch=950 * 2000.0, mean_length=2000.0, suites=[], source="test",
                    is_estimate=False)
    rtx = resolve_gpu("RTX4090")
    _, seconds, mfu, _ = train_seconds(spec, DREAM_7B, work, rtx, method="full", num_gpus=8, trainable=P,
                                       cal=calibration())
    # PCIe 4090s: per micro-step the bf16 params are all-gathered twice (forward, backward):
    # 2 x 2 B x P x 7/8 over 10 GB/s = 2.67 s, longer than the 2000-token compute at the 4090's
    # calibrated 0.29 (0.4865 for this job): 2000 x 43,195,170,816 / (165.2e12 x 0.4865) = 1.07 s.
    all_gather = 2 * 2 * P * 7 / 8 / 10e9
    assert mfu == pytest.approx(job_mfu(0.29))
    compute = 2000 * MODEL_FLOPS / (165.2e12 * job_mfu(0.29))
    assert all_gather == pytest.approx(2.6655, abs=1e-4) and compute == pytest.approx(1.0749, abs=1e-4)
    reduce_scatter = 4 * P * 7 / 8 / 10e9
    optimizer = 36 * P / 8 / (1008e9 * 0.7)
    assert seconds == pytest.approx(177 * (2 * all_gather + reduce_scatter + optimizer))


EVAL_CAL = {"mfu": 0.5, "bandwidth_efficiency": 0.6, "eager_forward_s": 0.03, "fast_tokens_per_step": 2.0}


def eval_calibration(**eval_values: float) -> Calibration:
    """The shipped calibration with the sampler's constants set by the test."""
    return Calibration({**calibration().raw, "eval": {**EVAL_CAL, **eval_values}})


def reference_gsm8k(items: int) -> tuple[JobSpec, Workload]:
    """`items` 150-token gsm8k prompts for `final`, 64 reference steps of 64 tokens, batches of 8."""
    spec = JobSpec.model_validate({
        "name": "t", "eval": {"suites": ["gsm8k"], "models": ["final"], "limit": items, "batch_size": 8,
                              "sampler": {"mode": "reference", "gen_length": 64, "steps": 64}},
    })
    work = Workload(rows=1, tokens_per_epoch=1.0, mean_length=1.0, suites=[EvalSuite("gsm8k", items, 150.0)],
                    source="test", is_estimate=False)
    return spec, work


def test_eval_seconds_of_the_reference_sampler() -> None:
    spec, work = reference_gsm8k(8)
    h100 = resolve_gpu("H100")
    # 64 steps, each one forward of 8 prompts x (192 + 64) tokens (CUDA graphs pad the 150-token
    # prompts to 192); a forward costs the slower of compute at 50 % of 989 TFLOP/s and reading
    # 15.2 GB of bf16 weights at 60 % of 3.35 TB/s.
    per_token = 2 * 7_070_285_824 + 4 * 28 * 256 * 3584
    assert per_token == forward_flops_per_token(matmul_params=DREAM_7B.forward_matmul_params, hidden=3584,
                                                num_layers=28, context=256)
    forward = max(8 * 256 * per_token / (989e12 * 0.5), 2 * P / (3350e9 * 0.6))
    assert eval_seconds(spec, DREAM_7B, work, h100, num_gpus=1, cal=eval_calibration()) == pytest.approx(64 * forward)
    # Without CUDA graphs: no padding (150 + 64 tokens), and no forward is faster than the eager
    # launch floor (0.1 s here; 8 x 214 tokens compute in 49.2 ms, the weights read in 7.6 ms).
    eager = JobSpec.model_validate({**spec.model_dump(), "eval": {**spec.eval.model_dump(),
                                    "sampler": {**spec.eval.sampler.model_dump(), "cuda_graphs": False}}})
    assert eval_seconds(eager, DREAM_7B, work, h100, num_gpus=1, cal=eval_calibration(eager_forward_s=0.1)) == pytest.approx(64 * 0.1)
    eager_per_token = 2 * 7_070_285_824 + 4 * 28 * 214 * 3584
    compute_8 = 8 * 214 * eager_per_token / (989e12 * 0.5)
    assert compute_8 == pytest.approx(0.0492, abs=1e-4)
    assert eval_seconds(eager, DREAM_7B, work, h100, num_gpus=1,
                        cal=eval_calibration(eager_forward_s=0.001)) == pytest.approx(64 * compute_8)


def test_eval_seconds_on_several_gpus_wait_for_the_busiest_process() -> None:
    spec, work = reference_gsm8k(36)
    h100 = resolve_gpu("H100")
    # 36 items in batches of 8: 8, 8, 8, 8, 4. Every forward is compute-bound (a batch of 4 x 256
    # tokens takes 29.6 ms, the weights 7.6 ms), so a batch's time is proportional to its size.
    per_token = 2 * 7_070_285_824 + 4 * 28 * 256 * 3584
    per_item = 64 * 256 * per_token / (989e12 * 0.5)
    assert 4 * per_item / 64 > 2 * P / (3350e9 * 0.6)

    def seconds(gpus: int, processes: int | None = None) -> float:
        dealt = spec.model_copy(update={"eval": spec.eval.model_copy(update={"processes": processes})})
        return eval_seconds(dealt, DREAM_7B, work, h100, num_gpus=gpus, cal=eval_calibration())

    assert seconds(1) == pytest.approx(36 * per_item)
    assert seconds(2) == pytest.approx(20 * per_item)  # process 0 decodes batches 0, 2, 4: 8 + 8 + 4 items
    assert seconds(8) == pytest.approx(8 * per_item)  # one batch each, three GPUs idle
    assert seconds(8, processes=1) == pytest.approx(36 * per_item)
    assert seconds(2, processes=4) == pytest.approx(20 * per_item)  # never more processes than GPUs


def test_eval_seconds_of_the_dual_cache_sampler() -> None:
    sampler = {"mode": "fast", "gen_length": 64, "block_length": 32, "dual_cache": True}
    spec = JobSpec.model_validate({"name": "t", "eval": {"suites": ["gsm8k"], "models": ["base", "final"],
                                                         "limit": 32, "batch_size": 32, "sampler": sampler}})
    work = Workload(rows=1, tokens_per_epoch=1.0, mean_length=1.0, suites=[EvalSuite("gsm8k", 32, 100.0)],
                    source="test", is_estimate=False)
    h100 = resolve_gpu("H100")
    # Per block of 32 at 2 tokens per step: one full forward of 32 x 192 tokens (prompts padded to
    # 128 for the CUDA graphs), then 15 steps of 32 x 33 tokens (the block and the position before
    # it), all attending to 192 keys; two blocks, two models. Every forward here is compute-bound
    # (weights: 15.2 GB / (3.35 TB/s x 0.6) = 7.6 ms).
    per_token = 2 * 7_070_285_824 + 4 * 28 * 192 * 3584
    full, step = 32 * 192 * per_token / (989e12 * 0.5), 32 * 33 * per_token / (989e12 * 0.5)
    assert step > 2 * P / (3350e9 * 0.6)
    expected = 2 * 2 * (full + 15 * step)
    assert eval_seconds(spec, DREAM_7B, work, h100, num_gpus=1, cal=eval_calibration()) == pytest.approx(expected)


def test_fast_sampler_costs_less_than_reference() -> None:
    base = {"name": "t", "eval": {"suites": ["math500"], "models": ["base", "final"], "limit": 16}}
    work = Workload(rows=1, tokens_per_epoch=1.0, mean_length=1.0, suites=[EvalSuite("math500", 16, 150.0)],
                    source="test", is_estimate=False)
    fast = JobSpec.model_validate(base)
    reference = JobSpec.model_validate({**base, "eval": {**base["eval"], "sampler": {"mode": "reference"}}})
    h100 = resolve_gpu("H100")
    t_fast = eval_seconds(fast, DREAM_7B, work, h100, num_gpus=1, cal=calibration())
    t_ref = eval_seconds(reference, DREAM_7B, work, h100, num_gpus=1, cal=calibration())
    # Fast-dLLM reports ~3-8x on Dream; the block model with 2 tokens/step lands in that range.
    assert 3 < t_ref / t_fast < 8


def test_overheads_download_checkpoints_and_uploads() -> None:
    spec = load_spec(REPO / "jobs" / "dream-s1k.yaml", ["artifacts.destinations=[s3://b/p]",
                                                         "train.save_every_steps=20", "train.async_save=false"])
    saves = save_plan(spec, DREAM_7B, method="full", steps=177, step_s=1.0, trainable=P, num_gpus=1, cloud="aws",
                      spot=False, cal=calibration())
    parts = overhead_seconds(spec, DREAM_7B, method="full", steps=177, trainable=P, cal=calibration(), saves=saves)
    # 15.2 GB of bf16 weights at 100 MB/s; 9 DCP saves (every 20 steps of 177) of 12 B/param at the calibrated rate.
    assert parts["model download at 100 MB/s"] == pytest.approx(2 * P / 100e6)
    disk = 0.75e9  # calibration.toml [overheads] disk_write_gb_per_s, from the 7B dress rehearsal
    assert parts["checkpoint writes"] == pytest.approx(math.ceil(177 / 20) * 12 * P / disk)
    # Checkpoints sync to the destination every 20 steps too, at 50 MB/s: this dominates.
    assert parts["upload 9 checkpoints at 50 MB/s"] == pytest.approx(9 * 12 * P / 50e6)
    assert parts["upload export at 50 MB/s"] == pytest.approx(2 * P / 50e6)


def test_turning_checkpointing_off_removes_the_recompute() -> None:
    work = Workload(rows=950, tokens_per_epoch=950 * 2000.0, mean_length=2000.0, suites=[], source="test",
                    is_estimate=False)
    h100 = resolve_gpu("H100")
    times = {}
    for ac in (True, False):
        spec = load_spec(REPO / "jobs" / "dream-s1k.yaml", [f"train.activation_checkpointing={str(ac).lower()}"])
        times[ac] = train_seconds(spec, DREAM_7B, work, h100, method="full", num_gpus=1, trainable=P,
                                  cal=calibration())[1]
    optimizer = 177 * 36 * P / (3350e9 * 0.7)
    # With AC every layer's second forward is added; the loss chunk's lm_head is recomputed either way.
    ratio = (MODEL_FLOPS + RECOMPUTE_HEAD + RECOMPUTE_ALL_LAYERS) / (MODEL_FLOPS + RECOMPUTE_HEAD)
    assert (times[True] - optimizer) / (times[False] - optimizer) == pytest.approx(ratio)
