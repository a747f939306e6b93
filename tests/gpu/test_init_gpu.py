"""The random start drawn on the GPU (skipped without one): seeded, Dream's distributions, no host copy."""

from __future__ import annotations

import pytest
import torch

from dream_job.model.dream import DreamModel
from dream_job.model.init import fill_parameters, random_tensors
from tests.conftest import tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_random_start_on_the_gpu_is_seeded_and_has_dreams_distributions() -> None:
    config = tiny_config(vocab_size=4096, hidden_size=256, intermediate_size=512, initializer_range=0.02)
    first = dict(random_tensors(config, seed=11, device="cuda"))
    again = dict(random_tensors(config, seed=11, device="cuda"))
    other = dict(random_tensors(config, seed=12, device="cuda"))
    assert all(t.device.type == "cuda" and t.dtype == torch.float32 for t in first.values())
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])
    embed = first["model.embed_tokens.weight"]  # 1M draws of normal(0, 0.02)
    assert abs(embed.mean().item()) < 1e-4 and abs(embed.std().item() - 0.02) < 1e-4
    assert torch.equal(first["model.layers.0.self_attn.q_proj.bias"], torch.zeros(256, device="cuda"))
    assert torch.equal(first["model.norm.weight"], torch.ones(256, device="cuda"))
    with torch.device("meta"):
        model = DreamModel(config)
    model.to(torch.bfloat16).to_empty(device="cuda")
    assert fill_parameters(model, random_tensors(config, seed=11, device="cuda")) == len(first)
    assert torch.equal(model.lm_head.weight, first["lm_head.weight"].to(torch.bfloat16))
