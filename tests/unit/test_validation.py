"""The validation loss: the held-out rows encoded like training rows, scored with no randomness left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dream_job.data.encode import encode_row
from dream_job.data.holdout import HoldoutRow, read_holdout_tokens
from dream_job.data.prep import prepare_data
from dream_job.data.tokenizer import load_tokenizer
from dream_job.diffusion.lm import DreamForMaskedDiffusion
from dream_job.model.dream import DreamConfig
from dream_job.spec import load_spec
from dream_job.train.batches import collate, hash_seed
from dream_job.train.validation import T_GRID, Validator
from tests.conftest import REPO, s1k_row, write_jsonl

SMOKE = REPO / "jobs" / "smoke.yaml"
TINY = REPO / "jobs" / "assets" / "tiny-dream"


@pytest.fixture(scope="module")
def model() -> DreamForMaskedDiffusion:
    torch.manual_seed(0)
    net = DreamForMaskedDiffusion(DreamConfig.from_pretrained_dir(TINY))
    net.init_weights()
    return net.train()


def rows_of(n: int, length: int = 12, prompt: int = 4) -> list[HoldoutRow]:
    generator = torch.Generator().manual_seed(1)
    return [HoldoutRow(i, torch.randint(10, 200, (length - i % 3,), generator=generator).tolist(), prompt)
            for i in range(n)]


def validator(rows: list[HoldoutRow], *, micro: int = 2, rank: int = 0, world_size: int = 1) -> Validator:
    train = load_spec(SMOKE, [f"train.micro_batch_size={micro}", "train.global_batch_size=8"]).train
    return Validator(rows, train, pad_id=0, eos_id=0, rank=rank, world_size=world_size, device=torch.device("cpu"))


def test_t_grid_is_the_midpoints_of_four_bins() -> None:
    assert T_GRID == (0.125, 0.375, 0.625, 0.875)


def test_validation_loss_is_the_mean_over_t_grid_and_micro_batches(model: DreamForMaskedDiffusion) -> None:
    rows = rows_of(5)
    got = validator(rows).loss(model)
    # Independent oracle: score each (t, chunk) pair through the model's public forward, seeded as documented.
    spec = load_spec(SMOKE).train
    expected = []
    with torch.no_grad():
        model.eval()
        for k, t in enumerate(T_GRID):
            for index, chunk in enumerate([rows[0:2], rows[2:4], rows[4:5]]):
                batch = collate([{"input_ids": r.input_ids, "prompt_length": r.prompt_length} for r in chunk],
                                cutoff="none", pad_id=0, eos_id=0, seed=spec.seed, step=-(k + 1), micro_index=index,
                                device=torch.device("cpu"))
                assert batch.generator.initial_seed() == hash_seed(spec.seed, -(k + 1), index)
                loss, _ = model(batch.input_ids_BL, loss_mask_BL=batch.loss_mask_BL, attention_mask_BL=None,
                                position_ids_BL=None, generator=batch.generator, time_eps=spec.time_eps,
                                weighting=spec.loss_weighting, cart_p=spec.cart_p,
                                t_B=torch.full((len(chunk),), t))
                expected.append(float(loss))
        model.train()
    assert len(expected) == 12
    assert got == pytest.approx(sum(expected) / 12, rel=1e-12)


def test_validation_loss_is_repeatable_and_leaves_training_untouched(model: DreamForMaskedDiffusion) -> None:
    rows = rows_of(5)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = validator(rows).loss(model)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global stream training draws from
    assert model.training
    assert validator(rows).loss(model) == first
    # A different micro-batch size groups other rows: another (still fixed) number.
    assert validator(rows, micro=1).loss(model) != first


def test_ranks_split_the_chunks_and_score_the_same_count(model: DreamForMaskedDiffusion) -> None:
    rows = rows_of(5)  # 3 chunks of 2 rows over 2 ranks: rank 1 scores chunk 0 again, uncounted
    assert [len(c) for c in validator(rows, rank=1, world_size=2).chunks] == [2, 2, 1]
    assert validator([]).enabled is False and validator(rows).enabled is True


def test_holdout_rows_are_encoded_like_training_rows(tmp_path: Path, in_repo: Path) -> None:
    rows = [s1k_row(f"What is {a} + 2?", f"{a} plus 2 is {a + 2}.", f"The sum is {a + 2}.") for a in range(12)]
    spec = load_spec(SMOKE, [f"artifacts.run_dir={tmp_path}", f"model.base={TINY}", "model.init=random",
                             f"data.dataset={write_jsonl(rows, tmp_path / 'rows.jsonl')}", "data.holdout_size=4",
                             "data.max_length=256", "data.truncation=keep_answer"])
    data_dir = prepare_data(spec).data_dir
    encoded = read_holdout_tokens(data_dir, spec.data)
    texts = [json.loads(line) for line in (data_dir / "holdout.jsonl").read_text().splitlines()]
    assert len(texts) == 4 and len(encoded) == 4
    first = encode_row(load_tokenizer(str(TINY)), texts[0]["question"], texts[0]["trace"], texts[0]["attempt"],
                       system_prompt=spec.data.system_prompt, max_length=256, truncation="keep_answer",
                       marker=spec.data.truncation_marker)
    assert encoded[0] == HoldoutRow(texts[0]["row_index"], list(first.input_ids), first.prompt_length)
    assert read_holdout_tokens(tmp_path / "nothing", spec.data) == []
