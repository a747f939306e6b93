"""The memory model against hand-computed cases (Dream 7B shape; the arithmetic is written out)."""

from __future__ import annotations

import dataclasses

import pytest

from budget.memory import GIB, MemoryConstants, estimate_memory, export_host_bytes, gpu_state_bytes
from budget.shape import DREAM_7B
from dream_job.spec import load_spec
from tests.conftest import REPO

SPEC = load_spec(REPO / "jobs" / "dream-s1k.yaml")  # bf16 compute, as the trainer wraps it

P = 7_615_616_512  # dream.md §4: every parameter of Dream 7B
LAYER = 233_057_792  # one decoder layer (weights, q/k/v biases, two norms)
EMBED = 152_064 * 3584  # 544,997,376: the embedding, and again the untied lm_head
ROOT = 2 * EMBED + 3584  # FSDP root unit: embedding + lm_head + final norm
ZERO = MemoryConstants(cuda_context_gib=0.0, nccl_gib=0.0, allocator_headroom=0.0, host_per_rank_gib=0.0,
                       unknown_host_ram_per_vram=1.0, adam8bit_bytes_per_param=2.0, loss_bytes_per_logit=12.0,
                       compiled_activation_factor=0.7)


def memory(method: str, num_gpus: int, *, accumulation: int = 1, checkpointing: bool = True, max_length: int = 2048,
           constants: MemoryConstants = ZERO, eval_context: int = 0, eval_logit_rows: int = 0, **lora):
    return estimate_memory(
        DREAM_7B, method=method, num_gpus=num_gpus, micro_batch_size=1, max_length=max_length,
        checkpointed_layers=28 if checkpointing else 0, fsdp=SPEC.wraps_in_fsdp(method, num_gpus), compiled=False,
        accumulation_steps=accumulation,
        lora_rank=lora.get("rank", 64), lora_targets=lora.get("targets", ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                            "gate_proj", "up_proj", "down_proj"]),
        lora_dropout=lora.get("dropout", 0.05), eval_batch_size=8, eval_context=eval_context, constants=constants,
        eval_logit_rows=eval_logit_rows,
    )


def test_shape_matches_the_published_counts() -> None:
    assert DREAM_7B.num_params == P
    assert DREAM_7B.layer_params == LAYER
    assert DREAM_7B.root_params == ROOT
    # data-and-eval.md §12: 7.07e9 weights multiplied per token with the lm_head at every position.
    assert DREAM_7B.forward_matmul_params == 7_070_285_824
    # gpus-and-costs.md §4: 2.52M adapter params per unit of rank over all seven linears.
    assert DREAM_7B.lora_params(1, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]) == (
        28 * ((3584 + 3584) + 2 * (3584 + 512) + (3584 + 3584) + 2 * (3584 + 18944) + (18944 + 3584))
    ) == 2_523_136


def test_full_on_two_gpus_without_accumulation() -> None:
    mem = memory("full", 2)
    terms = {k: v * GIB for k, v in mem.breakdown_gib.items()}
    # fp32 params, fp32 grads, fp32 m and v, each sharded over 2 GPUs: 16 B x P / 2 = 60,924,932,096 B.
    assert terms["params fp32"] + terms["grads fp32"] + terms["AdamW m,v fp32"] == pytest.approx(16 * P / 2)
    assert terms["unsharded bf16 root (embed + lm_head)"] == 2 * ROOT
    assert "no-sync accumulated grads fp32 (unsharded)" not in terms
    # Per-layer checkpointing keeps each layer's bf16 input: 28 x 2048 x 3584 x 2 = 411,041,792 B.
    assert terms["activations: inputs of checkpointed layers"] == 28 * 2048 * 3584 * 2 == 411_041_792
    # The backward moment of one layer is larger than the loss chunk's for `full`: two layers
    # unsharded (4 x LAYER), bf16 grads of root + one layer, an fp32 reduce-scatter copy of a layer.
    assert terms["unsharded bf16: 2 layers"] == 4 * LAYER
    assert terms["unsharded bf16 grads: root + 1 layer"] == 2 * ROOT + 2 * LAYER
    assert terms["reduce-scatter fp32 buffer"] == 4 * LAYER
    # Optimizer step: the state (16 B/param / 2) plus foreach AdamW's fp32 sqrt(v) temporary (4 B/param / 2).
    assert mem.phases_gib["step"] * GIB == pytest.approx(20 * P / 2)
    # No context or headroom in these constants: the peak is the largest phase.
    assert mem.peak_gib == pytest.approx(max(mem.phases_gib.values()))


def test_gradient_accumulation_adds_no_memory() -> None:
    # The trainer reduce-scatters after every micro-step, so accumulating over 16 micro-steps costs
    # exactly what one micro-step costs.
    for method, gpus in (("full", 2), ("full", 8), ("full_8bit", 1), ("lora", 1)):
        assert memory(method, gpus, accumulation=16).phases_gib == memory(method, gpus, accumulation=1).phases_gib


@pytest.mark.parametrize(("micro_batch", "max_length", "checkpointed", "measured_gib"), [
    (1, 2048, 0, 54.6), (2, 2048, 0, 63.1), (1, 4096, 0, 63.1), (1, 8192, 22, 54.8),
])
def test_model_matches_the_h100_measurements_of_the_plain_module(micro_batch: int, max_length: int,
                                                                  checkpointed: int, measured_gib: float) -> None:
    # bench/RESULTS.md (1x H100, 2026-11-24, bench/train_step.py, compiled): peak allocated GiB of
    # `full_8bit` over an optimizer step of 16 sequences, Dream 7B's shape. One process trains
    # `full_8bit` as the plain module, without FSDP2 (`JobSpec.wraps_in_fsdp`), and so does the
    # model here. It may only be a little above the measurement, never well below it.
    assert SPEC.wraps_in_fsdp("full_8bit", 1) is False
    constants = dataclasses.replace(ZERO, adam8bit_bytes_per_param=2.05)
    mem = estimate_memory(
        DREAM_7B, method="full_8bit", num_gpus=1, micro_batch_size=micro_batch, max_length=max_length,
        checkpointed_layers=checkpointed, fsdp=False, compiled=True, accumulation_steps=16 // micro_batch,
        lora_rank=64, lora_targets=[], lora_dropout=0.0, eval_batch_size=8, eval_context=0, constants=constants, eval_logit_rows=0,
    )
    assert 0.97 * measured_gib < mem.peak_gib < 1.06 * measured_gib


def test_full_on_one_a100_80gb_cannot_fit() -> None:
    mem = memory("full", 1, accumulation=16)
    # 16 B x 7.6156e9 = 121.8 GB = 113.5 GiB of state alone, before anything else.
    assert 16 * P / GIB == pytest.approx(113.48, abs=0.01)
    assert mem.peak_gib > 113.48 > 80


def test_full_8bit_and_offload_states() -> None:
    mem = memory("full_8bit", 1)
    terms = {k: v * GIB for k, v in mem.breakdown_gib.items()}
    # bf16 params (2 B) + bf16 grads (2 B) + 8-bit AdamW (2.0 B in these constants).
    assert terms["params bf16"] + terms["grads bf16"] + terms["AdamW8bit states"] == pytest.approx(6 * P)
    offload = memory("full_offload", 1)
    assert not any(k.startswith(("params", "grads", "AdamW")) for k in offload.breakdown_gib)
    # Host: pinned fp32 params + grads + m + v (16 B/param) in every training stage, and the CPU
    # step's fp32 temporary (4 B/param) in the steps; per-rank baseline 0 here.
    assert offload.host_gib * GIB == pytest.approx(16 * P + 4 * P)
    assert offload.host_peak_stage == "first step"


def test_lora_loss_chunk_and_checkpointing() -> None:
    mem = memory("lora", 1, rank=64)
    terms = {k: v * GIB for k, v in mem.breakdown_gib.items()}
    adapters = 64 * 2_523_136  # 161,480,704 adapter params
    assert terms["base bf16 (frozen)"] == 2 * P
    assert terms["adapters+AdamW fp32"] == 12 * adapters  # fp32 adapter params + m + v
    states = gpu_state_bytes(DREAM_7B, "lora", 2, trainable=adapters, adam8bit=2.0)
    assert states["grads fp32 (adapters)"] == 4 * adapters / 2
    # The loss applies the lm_head to at most min(1024, 1 x 2048) rows at 12 B per logit (fp32
    # log-softmax kept, its incoming and outgoing gradients). With a 10x vocabulary that moment
    # is the larger one: 1024 x 1,520,640 x 12 = 18,685,624,320 B.
    wide = estimate_memory(
        dataclasses.replace(DREAM_7B, vocab=1_520_640), method="lora", num_gpus=1, micro_batch_size=1,
        max_length=2048, checkpointed_layers=28, fsdp=True, compiled=False, accumulation_steps=1, lora_rank=64,
        lora_targets=["q_proj"], lora_dropout=0.0, eval_batch_size=8, eval_context=0, constants=ZERO,
        eval_logit_rows=0)
    assert wide.breakdown_gib["loss: one logits chunk"] * GIB == 1024 * 1_520_640 * 12 == 18_685_624_320
    # One layer saves 2 B x (12·d + 2·kv + 4·I) per token = 2 x (43,008 + 1,024 + 75,776) = 239,616 B,
    # plus LoRA dropout's copy (2 B) and mask (1 B) of each targeted input: 3 x (6 x 3584 + 18,944) = 121,344 B.
    per_layer = 239_616 + 121_344
    without = memory("lora", 1, rank=64, checkpointing=False)
    assert without.breakdown_gib["activations: layers kept whole"] * GIB == 28 * 2048 * per_layer  # 20.7 GB


def test_context_headroom_and_nccl_are_added_to_the_largest_phase() -> None:
    constants = MemoryConstants(cuda_context_gib=0.6, nccl_gib=0.5, allocator_headroom=0.07, host_per_rank_gib=3.0,
                                unknown_host_ram_per_vram=1.0, adam8bit_bytes_per_param=2.03,
                                loss_bytes_per_logit=12.0, compiled_activation_factor=0.7)
    mem = memory("full", 4, accumulation=4, constants=constants)
    assert mem.peak_gib == pytest.approx(max(mem.phases_gib.values()) * 1.07 + 0.6 + 0.5)
    # 4 processes, each reading every base tensor on its way to its GPU: the bf16 embedding
    # (2 x 544,997,376 B) four times at once.
    assert mem.host_gib * GIB == pytest.approx(4 * 3 * GIB + 4 * 1_089_994_752)


def test_eval_phase_holds_bf16_weights_kv_and_the_proposal_logits() -> None:
    # 8 prompts x 762 columns: two copies of every layer's bf16 keys and values (4 kv heads x 128),
    # 256 rows of 152,064 logits at 12 B, and the bf16 weights; plus one layer's transients (the
    # eager training formula: 239,616 B per token, test_long_context.py).
    chunked = memory("full", 1, eval_context=762, eval_logit_rows=256).phases_gib["eval"] * GIB
    kv = 8 * 762 * 2 * 28 * 2 * 512 * 2
    logits = 256 * 152_064 * 12
    assert 2 * P + kv + logits < chunked <= 2 * P + kv + logits + 8 * 762 * 239_616
    # Sampling every masked position at once (reference mode, temperature > 0: 8 x 512 rows).
    at_once = memory("full", 1, eval_context=762, eval_logit_rows=8 * 512).phases_gib["eval"] * GIB
    assert at_once - chunked == pytest.approx((8 * 512 - 256) * 152_064 * 12)


def test_host_ram_of_lora_on_one_gpu_is_one_process_and_one_tensor_per_stage() -> None:
    # jobs/dream-s1k-lora-4090.yaml: rank 16 on all seven linears, one process (3 GiB baseline).
    constants = dataclasses.replace(ZERO, host_per_rank_gib=3.0)
    mem = memory("lora", 1, rank=16, constants=constants)
    adapters = 16 * 2_523_136  # 40,370,176 fp32 adapter params
    gate = 3584 * 18944  # 67,895,296: the largest targeted weight (gate/up/down)
    embed_bf16 = 2 * 152_064 * 3584  # 1,089,994,752 B: the largest tensor, stored in bf16
    # The export: one bf16 tensor on its way to the file (the embedding; the merge of a gate weight,
    # its bf16 copy + two fp32 tensors = 10 x 67,895,296 = 678,952,960 B, is smaller) + the fp32
    # adapters (161,480,704 B) = 1,251,475,456 B.
    export = export_host_bytes(DREAM_7B, method="lora", trainable=adapters, lora_targets=list(DREAM_7B.linear_shapes()))
    assert export == 4 * adapters + embed_bf16 == 1_251_475_456
    stages = {k: round(v * GIB) for k, v in mem.host_stages_gib.items()}
    assert stages == {
        "prep": 0,  # no prep constants here (test_prep_holds_one_process_and_its_workers)
        "weight load": 3 * GIB + 1_089_994_752,  # the pretrained base, read one tensor at a time
        "first step": 3 * GIB,
        "steady step": 3 * GIB,
        "checkpoint save": 3 * GIB + 1_089_994_752,  # DCP's host copy of the bf16 embedding
        "export": 3 * GIB + 1_251_475_456,
        "eval model load": 3 * GIB + 1_089_994_752,
    }
    assert mem.host_peak_stage == "export"
    assert mem.host_gib == pytest.approx(4.1655, abs=1e-4)
    # The rank-0 state dict this replaced held the whole bf16 base at load: 3 GiB + 15,231,233,024 B = 17.19 GiB.
    assert (3 * GIB + 2 * P) / GIB == pytest.approx(17.185, abs=1e-3)


def test_random_init_reads_nothing_and_compile_workers_count_in_the_first_step() -> None:
    constants = dataclasses.replace(ZERO, host_per_rank_gib=2.5, host_compile_gib=1.25)
    common = dict(method="full_8bit", num_gpus=2, micro_batch_size=1, max_length=2048, checkpointed_layers=28,
                  fsdp=True, accumulation_steps=1, lora_rank=16, lora_targets=["q_proj"], lora_dropout=0.0,
                  eval_batch_size=1, eval_context=0, eval_logit_rows=0, constants=constants)
    random = estimate_memory(DREAM_7B, compiled=True, init="random", **common)
    assert random.host_stages_gib["weight load"] == 2 * 2.5  # drawn on the GPUs: the two processes only
    assert random.host_stages_gib["first step"] == 2 * 2.5 + 2 * 1.25
    pretrained = estimate_memory(DREAM_7B, compiled=False, init="pretrained", **common)
    assert pretrained.host_stages_gib["first step"] == 2 * 2.5
    assert pretrained.host_stages_gib["weight load"] * GIB == pytest.approx(5 * GIB + 2 * 1_089_994_752)


def test_export_of_other_methods_holds_one_tensor() -> None:
    for method in ("full", "full_8bit", "full_offload"):
        assert export_host_bytes(DREAM_7B, method=method, trainable=P, lora_targets=[]) == 1_089_994_752
    # A vocabulary 10x larger: its bf16 embedding is still the one tensor held.
    wide = dataclasses.replace(DREAM_7B, vocab=1_520_640)
    assert export_host_bytes(wide, method="full", trainable=P, lora_targets=[]) == 2 * 1_520_640 * 3584


def test_lora_4090_job_fits_one_rtx4090_box_and_is_picked_where_cheapest(tmp_path) -> None:
    from datetime import date

    from budget import estimate
    from dream_job.spec import load_spec
    from tests.conftest import REPO

    # RunPod lists its 1x RTX 4090 box with 29 GiB of host RAM and prices per GPU, so one GPU is its
    # cheapest machine; the shipped price snapshot (a catalog folder that does not exist), fixed date.
    spec = load_spec(REPO / "jobs" / "dream-s1k-lora-4090.yaml", ["budget.clouds=[runpod]"])
    result = estimate(spec, data_report=None, catalog_dir=tmp_path / "no-catalog", now=date(2026, 11, 24))
    one_gpu = [c for c in result.candidates if (c.method, c.count) == ("lora", 1)]
    assert one_gpu and all(c.fits and c.host_mem_gib == 29 for c in one_gpu)
    # One process (+ its compile workers in the first step) and, at the export, the bf16 embedding
    # on its way to the file + the fp32 adapters: 1,089,994,752 + 161,480,704 B = 1.17 GiB (was 17.2 in all).
    from budget.timing import calibration

    constants = calibration().memory_constants()
    export = constants.host_per_rank_gib + (1_089_994_752 + 4 * 40_370_176) / GIB
    first_step = constants.host_per_rank_gib + constants.host_compile_gib
    assert all(c.host_gib == pytest.approx(max(export, first_step)) for c in one_gpu)
    choice = result.choice
    assert (choice.method, choice.gpu, choice.count, choice.cloud) == ("lora", "RTX4090", 1, "runpod")


def test_estimate_rejects_a_box_whose_ram_is_below_the_host_figure_and_says_why(tmp_path) -> None:
    from datetime import date

    from budget import estimate
    from budget.timing import calibration

    # full_offload keeps fp32 weights, grads and AdamW m, v on the host (16 B/param) and adds the CPU
    # step's fp32 temporary (4 B/param) in the steps: 20 x 7,615,616,512 B = 141.85 GiB, plus the
    # one process and, in the first step, its compile workers (the LoRA job compiles).
    spec = load_spec(REPO / "jobs" / "dream-s1k-lora-4090.yaml",
                     ["budget.clouds=[runpod]", "train.method=full_offload", "budget.max_cost_yuan=1000"])
    result = estimate(spec, data_report=None, catalog_dir=tmp_path / "no-catalog", now=date(2026, 11, 24))
    constants = calibration().memory_constants()
    need = 20 * P / GIB + constants.host_per_rank_gib + constants.host_compile_gib
    one = [c for c in result.candidates if (c.method, c.count, c.cloud) == ("full_offload", 1, "runpod")]
    assert one and all(not c.fits and c.host_mem_gib == 29 for c in one)
    assert one[0].host_gib == pytest.approx(need)
    assert one[0].reason == (
        f"needs {need:.1f} GiB of host RAM at its peak, the first step (1 training process(es), the offloaded "
        "fp32 weights and AdamW states), `1x_RTX4090_SECURE` has 29 GiB")
    eight = [c for c in result.candidates if (c.method, c.count) == ("full_offload", 8)]
    assert eight and all(c.fits and c.host_mem_gib == 232 for c in eight)  # 8 x 29 GiB holds it


def test_prep_holds_one_process_and_its_workers() -> None:
    constants = dataclasses.replace(ZERO, host_prep_gib=0.75, host_prep_worker_gib=0.5)
    common = dict(method="lora", num_gpus=1, micro_batch_size=1, max_length=2048, checkpointed_layers=28,
                  fsdp=True, compiled=False, accumulation_steps=1, lora_rank=16, lora_targets=["q_proj"],
                  lora_dropout=0.0, eval_batch_size=1, eval_context=0, eval_logit_rows=0, constants=constants)
    assert estimate_memory(DREAM_7B, prep_processes=4, **common).host_stages_gib["prep"] == 0.75 + 4 * 0.5
    assert estimate_memory(DREAM_7B, prep_processes=1, **common).host_stages_gib["prep"] == 0.75  # no workers
