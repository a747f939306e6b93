"""CUDA-graph decoding replays exactly what the eager calls compute (GPU only; skips on the CPU).

The oracle is the eager path on the same padded batch: `EagerForwards` with the graphs' prompt
multiple, so both decode the same tensors with the same kernels and must agree bit for bit,
every step (the histories), for both samplers, with and without padding, cached or dual-cached.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dream_job.diffusion.forwards import (
    EagerForwards,
    GraphedForwards,
    make_forwards,
    uncompile_decoder_layers,
)
from dream_job.diffusion.sampler import generate
from dream_job.model.dream import DreamModel
from dream_job.spec import CUDA_GRAPH_PROMPT_MULTIPLE, SamplerSpec
from tests.conftest import tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MASK, EOS, PAD = 255, 1, 0
CONFIG = tiny_config(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                     initializer_range=0.3, mask_token_id=MASK, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=EOS)


class PaddedEager(EagerForwards):
    """Eager calls on batches padded like the graphed ones: the bitwise oracle."""

    prompt_multiple = CUDA_GRAPH_PROMPT_MULTIPLE


@pytest.fixture(scope="module")
def model() -> DreamModel:
    torch.manual_seed(0)
    model = DreamModel(CONFIG)
    model.init_weights()
    return model.to(device="cuda", dtype=torch.bfloat16).eval()


def prompts(lengths: list[int], seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 200, (n,), generator=generator).tolist() for n in lengths]


def decode(model: DreamModel, batch: list[list[int]], settings: SamplerSpec, forwards: Any) -> Any:
    return generate(model, batch, settings, mask_id=MASK, eos_id=EOS, pad_id=PAD, record_history=True,
                    forwards=forwards)


SETTINGS = {
    "reference": SamplerSpec(mode="reference", gen_length=48, steps=24, alg="entropy"),
    "fast": SamplerSpec(mode="fast", gen_length=48, block_length=16, threshold=0.5),
    "fast-dual": SamplerSpec(mode="fast", gen_length=48, block_length=16, threshold=0.5, dual_cache=True),
}


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("lengths", [[64], [40, 64, 17]], ids=["unpadded", "padded"])
def test_graph_replay_equals_eager_calls_step_for_step(model: DreamModel, name: str, lengths: list[int]) -> None:
    settings, batch = SETTINGS[name], prompts(lengths, seed=len(lengths))
    graphed = GraphedForwards(model)
    expected = decode(model, batch, settings, PaddedEager(model))
    actual = decode(model, batch, settings, graphed)
    assert actual.history == expected.history
    assert actual.tokens == expected.tokens
    assert actual.num_forward_passes == expected.num_forward_passes
    # Windows of equal size share one graph: reference 1 (the full forward); fast with the prefix
    # cache 1 full + 1 step graph per distinct window (one per block); dual cache 1 + 1.
    blocks = settings.gen_length // settings.block_length
    assert graphed.captures == {"reference": 1, "fast": 1 + blocks, "fast-dual": 2}[name]


def test_graphs_follow_the_batch_shape_and_are_reused(model: DreamModel) -> None:
    settings = SETTINGS["fast-dual"]
    graphed = GraphedForwards(model)
    short, long, again = prompts([20, 30], seed=1), prompts([100, 70], seed=2), prompts([10, 50], seed=3)
    for batch, captures in ((short, 2), (again, 2), (long, 4), (short, 6)):
        expected = decode(model, batch, settings, PaddedEager(model)).history
        assert decode(model, batch, settings, graphed).history == expected
        assert graphed.captures == captures  # `again` pads to the same 64 + 48 columns as `short`: no new graphs


def test_make_forwards_records_graphs_on_cuda_unless_switched_off(model: DreamModel) -> None:
    assert isinstance(make_forwards(model, SamplerSpec()), GraphedForwards)
    assert type(make_forwards(model, SamplerSpec(cuda_graphs=False))) is EagerForwards


def test_compiled_layers_replay_as_graphs_exactly_as_they_run_eagerly() -> None:
    torch.manual_seed(1)
    compiled = DreamModel(CONFIG)
    compiled.init_weights()
    compiled = compiled.to(device="cuda", dtype=torch.bfloat16).eval()
    settings = SETTINGS["fast-dual"].model_copy(update={"compile": True})
    graphed = make_forwards(compiled, settings)  # compiles the layers in place
    batch = prompts([40, 64, 17], seed=5)
    assert isinstance(graphed, GraphedForwards)
    assert decode(compiled, batch, settings, graphed).history == decode(compiled, batch, settings,
                                                                        PaddedEager(compiled)).history
    uncompile_decoder_layers(compiled)
    assert all("forward_cached" not in vars(layer) for layer in compiled.model.layers)
