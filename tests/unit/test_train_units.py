"""Trainer pieces that need no process group: schedule, batch plan, collate, OOM advice, start-up checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dream_job.errors import DreamJobError
from dream_job.spec import load_spec
from dream_job.train.batches import BatchPlan, collate
from dream_job.train.build import resolve_base_dir
from dream_job.train.loop import load_prepared, lr_factor, oom_hint
from tests.conftest import REPO

SMOKE = REPO / "jobs" / "smoke.yaml"


def test_lr_schedule_warms_up_linearly_then_cosine_to_the_floor() -> None:
    f = [lr_factor(s, warmup_steps=4, total_steps=14, min_ratio=0.1) for s in range(14)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == pytest.approx(1.0) and f[9] == pytest.approx(0.1 + 0.9 * 0.5)
    assert all(a >= b for a, b in zip(f[4:], f[5:]))
    assert lr_factor(14, warmup_steps=4, total_steps=14, min_ratio=0.1) == pytest.approx(0.1)


def test_batch_plan_covers_each_row_once_per_epoch_and_groups_lengths() -> None:
    lengths = [(i * 37) % 101 + 5 for i in range(200)]
    plan = BatchPlan(lengths, global_batch_size=8, micro_batch_size=2, world_size=2, seed=3)
    assert plan.steps_per_epoch == 25 and plan.accumulation_steps == 2
    seen = []
    for step in range(25):
        per_rank = [plan.micro_batches(step, rank) for rank in range(2)]
        assert [m for m, _ in per_rank[0]] == [0, 2] and [m for m, _ in per_rank[1]] == [1, 3]
        rows = [r for rank in per_rank for _, micro in rank for r in micro]
        assert max(lengths[r] for r in rows) - min(lengths[r] for r in rows) < 60  # grouped by length
        seen += rows
    assert sorted(seen) == list(range(200))
    # The next epoch is another order; the same seed gives the same order.
    assert plan.micro_batches(25, 0) != plan.micro_batches(0, 0)
    again = BatchPlan(lengths, global_batch_size=8, micro_batch_size=2, world_size=2, seed=3)
    assert again.micro_batches(7, 1) == plan.micro_batches(7, 1)


def test_batch_plan_rejects_a_batch_the_processes_cannot_split() -> None:
    with pytest.raises(ValueError, match=r"multiple of `train.micro_batch_size` x processes \(4 x 2\)"):
        BatchPlan([10] * 100, global_batch_size=12, micro_batch_size=4, world_size=2, seed=0)


def test_collate_without_left_pads_takes_the_fast_path() -> None:
    rows = [{"input_ids": [1, 2, 3, 9, 9, 0], "prompt_length": 3}, {"input_ids": [4, 5, 6, 9, 0], "prompt_length": 3}]
    batch = collate(rows, cutoff="none", pad_id=0, eos_id=0, seed=1, step=0, micro_index=0, device=torch.device("cpu"))
    assert batch.attention_mask_BL is None and batch.position_ids_BL is None
    assert batch.input_ids_BL.tolist() == [[1, 2, 3, 9, 9, 0], [4, 5, 6, 9, 0, 0]]
    assert batch.loss_mask_BL.tolist() == [[False] * 3 + [True] * 3] * 2


def test_oom_advice_names_the_next_smaller_setting(tmp_path: Path) -> None:
    spec = load_spec(SMOKE, ["train.micro_batch_size=4"])
    assert oom_hint(spec) == "try `--set train.micro_batch_size=2`"
    spec = load_spec(SMOKE, ["train.micro_batch_size=1", "train.global_batch_size=8",
                             "train.activation_checkpointing=true"])
    assert oom_hint(spec) == "try `--set train.method=full_offload` (see `dream-job estimate` for what fits)"


def test_base_folder_without_config_or_weights_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DreamJobError) as info:
        resolve_base_dir(load_spec(SMOKE, [f"model.base={empty}"]))
    assert info.value.message == f"`model.base` folder `{empty}` has no `config.json`"
    with pytest.raises(DreamJobError) as info:
        resolve_base_dir(load_spec(SMOKE, ["model.base=jobs/assets/tiny-dream", "model.init=pretrained"]))
    assert info.value.message == (
        "`model.base` folder `jobs/assets/tiny-dream` has no safetensors weights but `model.init` is `pretrained`"
    )


def test_data_prepared_for_another_tokenizer_is_refused(tmp_path: Path, in_repo: Path) -> None:
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "data_report.json").write_text(json.dumps({"tokenizer": "Dream-org/Dream-v0-Base-7B", "inputs_hash": "x"}))
    with pytest.raises(DreamJobError) as info:
        load_prepared(load_spec(SMOKE, [f"artifacts.run_dir={tmp_path}"]))
    assert info.value.message == (
        f"the data in `{data}` was prepared with the tokenizer `Dream-org/Dream-v0-Base-7B`, "
        "but this job uses `jobs/assets/smoke-base`"
    )
