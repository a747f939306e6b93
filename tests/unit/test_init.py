"""The starting weights: filled one tensor at a time into a meta-built model, CPU bytes unchanged."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from dream_job.model.dream import DreamModel
from dream_job.model.init import fill_parameters, random_init_model, random_tensors
from dream_job.model.weights import save_hf_folder, stream_weights
from tests.conftest import tiny_config

CONFIG = tiny_config(initializer_range=0.1)


def allocated(dtype: torch.dtype) -> DreamModel:
    """The trainer's model before its weights: built on meta, cast, allocated uninitialised on the CPU."""
    with torch.device("meta"):
        model = DreamModel(CONFIG)
    model.to(dtype).to_empty(device="cpu")
    model.init_buffers("cpu")
    return model


def test_random_start_on_the_cpu_is_the_seeded_cpu_model_cast_to_the_model_dtype() -> None:
    # The bytes the trainer started from before the model was filled tensor by tensor: the fp32
    # CPU model of `torch.manual_seed(seed)` + `init_weights()`, cast to the model's dtype.
    reference = random_init_model(CONFIG, seed=7).state_dict()
    for dtype in (torch.float32, torch.bfloat16):
        model = allocated(dtype)
        assert fill_parameters(model, random_tensors(CONFIG, seed=7, device="cpu")) == len(reference)
        state = model.state_dict()
        assert all(torch.equal(state[k], reference[k].to(dtype)) for k in reference)
    other = dict(random_tensors(CONFIG, seed=8, device="cpu"))
    assert not torch.equal(other["lm_head.weight"], reference["lm_head.weight"])


def test_pretrained_start_streams_the_folder_into_a_lora_model(tmp_path) -> None:
    source = random_init_model(CONFIG, seed=3)
    save_hf_folder(source, CONFIG, tmp_path / "base", dtype=torch.bfloat16, max_shard_bytes=4096)
    model = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"]),
                                    allocated(torch.bfloat16))
    shapes = {k: tuple(v.shape) for k, v in source.state_dict().items()}
    filled = fill_parameters(model, stream_weights(tmp_path / "base", shapes), skip=lambda name: "lora_" in name)
    assert filled == len(shapes)
    state = model.state_dict()
    for key, value in source.state_dict().items():
        module, _, leaf = key.rpartition(".")
        stored = state.get(key, state.get(f"{module}.base_layer.{leaf}"))
        assert torch.equal(stored, value.to(torch.bfloat16)), key


def test_a_missing_tensor_is_a_bug_not_a_random_weight() -> None:
    tensors = [(k, v) for k, v in random_tensors(CONFIG, seed=1, device="cpu") if k != "model.norm.weight"]
    with pytest.raises(ValueError, match=r"1 parameter\(s\) were not filled: model.norm.weight"):
        fill_parameters(allocated(torch.float32), tensors)
    with pytest.raises(ValueError, match="`extra.weight` names no parameter"):
        fill_parameters(allocated(torch.float32), [("extra.weight", torch.zeros(1))])
