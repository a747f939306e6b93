"""Long sequences (the 16k full-length job) at a tiny scale: same code path, memory terms by hand.

- A batch of long rows without left pads carries no attention mask, so every attention call
  gets `attn_mask=None` (SDPA may take its flash kernel), and the loss runs in chunks of at most
  `loss_chunk_size` rows: no [B, L, V] logits.
- Checkpointing a number of layers picks that many, evenly spread, and gives the gradients of
  no checkpointing.
- The memory model's terms for 16,384 tokens, `full_8bit` on one GPU (plain module, compiled,
  22 of 28 layers recomputed), equal the products written out here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from budget.memory import MemoryConstants, estimate_memory
from budget.shape import KNOWN
from dream_job.diffusion import objective
from dream_job.diffusion.lm import DreamForMaskedDiffusion
from dream_job.errors import SpecError
from dream_job.spec import load_spec
from dream_job.train.batches import collate
from tests.conftest import REPO, tiny_config

DREAM_7B = KNOWN["dream-org/dream-v0-base-7b"]


def _long_rows(lengths: list[int], vocab: int, prompt: int = 40) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for length in lengths:
        ids = torch.randint(1, vocab - 2, (length,), generator=generator).tolist()
        rows.append({"input_ids": [*ids, 0], "prompt_length": prompt})  # ends with EOS (id 0)
    return rows


def test_long_rows_take_the_maskless_attention_and_the_chunked_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(max_position_embeddings=4096, num_hidden_layers=3)
    torch.manual_seed(0)
    model = DreamForMaskedDiffusion(config)
    model.init_weights()
    model.model.set_checkpointed_layers(2)
    model.loss_chunk_size = 256
    batch = collate(_long_rows([3000, 2600], config.vocab_size), cutoff="none", pad_id=0, eos_id=0, seed=1, step=0,
                    micro_index=0, device=torch.device("cpu"))
    assert batch.attention_mask_BL is None and batch.position_ids_BL is None

    masks: list[object] = []
    sdpa = F.scaled_dot_product_attention

    def spy_sdpa(*args, **kwargs):
        masks.append(kwargs.get("attn_mask", args[3] if len(args) > 3 else None))
        return sdpa(*args, **kwargs)

    chunk_rows: list[int] = []
    chunk = objective._chunk_weighted_ce_sum

    def spy_chunk(hidden_ND, *rest):
        chunk_rows.append(hidden_ND.shape[0])
        return chunk(hidden_ND, *rest)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy_sdpa)
    monkeypatch.setattr(objective, "_chunk_weighted_ce_sum", spy_chunk)
    loss, num_masked = model(batch.input_ids_BL, loss_mask_BL=batch.loss_mask_BL, attention_mask_BL=None,
                             position_ids_BL=None, generator=batch.generator, time_eps=1e-3, weighting="cart",
                             cart_p=0.1)
    loss.backward()

    # 3 layers forward + 2 recomputed in backward, every one without a mask.
    assert len(masks) == 5 and all(m is None for m in masks)
    # Chunks of at most 256 rows cover every masked token once in forward (and again in the recompute).
    n = int(num_masked)
    assert n > 1000 and max(chunk_rows) <= 256
    assert sum(chunk_rows) == 2 * n
    assert torch.isfinite(loss)


def test_checkpointed_layer_count_is_spread_and_exact() -> None:
    model = DreamForMaskedDiffusion(tiny_config(num_hidden_layers=28, hidden_size=8, intermediate_size=8,
                                                num_attention_heads=2, num_key_value_heads=1))
    for count in range(29):
        model.model.set_checkpointed_layers(count)
        chosen = sorted(model.model.checkpointed_layers)
        assert len(chosen) == count
        if count > 1:  # evenly spread: gaps differ by at most one layer
            gaps = {b - a for a, b in zip(chosen, chosen[1:])}
            assert max(gaps) - min(gaps) <= 1
    model.model.set_checkpointed_layers(22)
    # Layer i is recomputed when floor((i+1)·22/28) > floor(i·22/28): layer 0 (0 vs 0) is not, layer 1
    # (1 vs 0) is; the six kept whole are 0, 4, 9, 14, 18, 23.
    assert sorted(set(range(28)) - model.model.checkpointed_layers) == [0, 4, 9, 14, 18, 23]
    with pytest.raises(ValueError, match="0..28"):
        model.model.set_checkpointed_layers(29)


def test_partial_checkpointing_gives_the_gradients_of_none() -> None:
    config = tiny_config(num_hidden_layers=4)
    rows = _long_rows([300, 260], config.vocab_size)
    grads = {}
    for count in (0, 2, 4):
        torch.manual_seed(0)
        model = DreamForMaskedDiffusion(config)
        model.init_weights()
        model.model.set_checkpointed_layers(count)
        batch = collate(rows, cutoff="none", pad_id=0, eos_id=0, seed=1, step=0, micro_index=0,
                        device=torch.device("cpu"))
        loss, _ = model(batch.input_ids_BL, loss_mask_BL=batch.loss_mask_BL, attention_mask_BL=None,
                        position_ids_BL=None, generator=batch.generator, time_eps=1e-3, weighting="cart", cart_p=0.1)
        loss.backward()
        grads[count] = {k: p.grad.clone() for k, p in model.named_parameters()}
    for count in (2, 4):
        for name, grad in grads[0].items():
            torch.testing.assert_close(grads[count][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_more_layers_than_the_model_has_is_a_spec_error() -> None:
    spec = load_spec(REPO / "jobs" / "dream-s1k-full-length.yaml", ["train.activation_checkpointing=30"])
    with pytest.raises(SpecError, match=r"`train.activation_checkpointing` is 30 but the model has 28 decoder layers"):
        spec.train.num_checkpointed_layers(28)
    assert spec.train.model_copy(update={"activation_checkpointing": True}).num_checkpointed_layers(28) == 28
    assert spec.train.model_copy(update={"activation_checkpointing": False}).num_checkpointed_layers(28) == 0


def test_one_process_with_one_dtype_trains_the_plain_module() -> None:
    bf16 = load_spec(REPO / "jobs" / "dream-s1k-full-length.yaml")
    fp32 = load_spec(REPO / "jobs" / "smoke.yaml")
    assert not bf16.wraps_in_fsdp("full_8bit", 1)
    assert bf16.wraps_in_fsdp("full_8bit", 2)
    assert bf16.wraps_in_fsdp("full", 1)  # fp32 master weights cast to bf16 by FSDP2's policy
    assert bf16.wraps_in_fsdp("lora", 1) and bf16.wraps_in_fsdp("full_offload", 1)
    assert not fp32.wraps_in_fsdp("full", 1)


def test_memory_model_terms_at_16k_by_hand() -> None:
    constants = MemoryConstants(cuda_context_gib=0.0, nccl_gib=0.0, allocator_headroom=0.0, host_per_rank_gib=0.0,
                                unknown_host_ram_per_vram=1.0, adam8bit_bytes_per_param=2.0,
                                loss_bytes_per_logit=12.0, compiled_activation_factor=0.7)
    mem = estimate_memory(
        DREAM_7B, method="full_8bit", num_gpus=1, micro_batch_size=1, max_length=16384, checkpointed_layers=22,
        fsdp=False, compiled=True, accumulation_steps=16, lora_rank=0, lora_targets=[], lora_dropout=0.0,
        eval_batch_size=8, eval_context=0, constants=constants, eval_logit_rows=0,
    )
    terms = {k: v * 2**30 for k, v in mem.breakdown_gib.items()}
    P = 7_615_616_512
    assert terms["params bf16"] == 2 * P and terms["grads bf16"] == 2 * P and terms["AdamW8bit states"] == 2 * P
    # 22 recomputed layers keep their bf16 input: 22 x 16,384 x 3,584 x 2 B = 2,583,691,264 B.
    assert terms["activations: inputs of checkpointed layers"] == 22 * 16384 * 3584 * 2 == 2_583_691_264
    # 6 layers kept whole: 6 x 16,384 x 239,616 B (eager formula) x 0.7 (compiled) = 16,488,112,947 B.
    assert terms["activations: layers kept whole"] == pytest.approx(6 * 16384 * 239_616 * 0.7)
    # Embeddings, final hidden and their grads: 16,384 x 3,584 x 12 B.
    assert terms["activations: embeddings, final hidden, grads"] == 16384 * 3584 * 12
    # The backward of a recomputed layer (2 x 16,384 x 239,616 B = 7.85 GB) outweighs one loss chunk
    # (1,024 x 152,064 x 12 B = 1.87 GB); no FSDP2 buffers on the plain module.
    assert terms["activations: 1-layer recompute/backward"] == 2 * 16384 * 239_616
    assert "loss: one logits chunk" not in terms
    assert not any("unsharded" in k or "reduce-scatter" in k for k in terms)
    assert mem.phases_gib["train"] * 2**30 == pytest.approx(sum(terms.values()))
