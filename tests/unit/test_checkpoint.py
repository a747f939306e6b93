"""DCP checkpoints in one process: save → perturb → load is bit-equal, torn folders, pruning, errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from dream_job.errors import CheckpointError
from dream_job.model import DreamConfig, DreamModel
from dream_job.train.checkpoint import CheckpointManager
from dream_job.train.state import DictState, ModelOptimizerState, TrainState
from tests.conftest import tiny_config

TINY = tiny_config(max_position_embeddings=64)


def make_training(seed: int = 0, num_steps: int = 2):
    """A tiny model, AdamW and a LambdaLR after `num_steps` steps on random tokens."""
    torch.manual_seed(seed)
    model = DreamModel(TINY)
    model.init_weights()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    for _ in range(num_steps):
        ids_BL = torch.randint(1, TINY.vocab_size, (2, 8))
        model(ids_BL).float().logsumexp(-1).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {f"param/{k}": v.detach().clone() for k, v in model.named_parameters()}
    out["lr"] = torch.tensor([group["lr"] for group in optimizer.param_groups])
    names = {id(p): k for k, p in model.named_parameters()}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            out[f"optim/{names[id(p)]}/{key}"] = value.clone()
    return out


@torch.no_grad()
def perturb(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Add noise to every parameter and optimizer state tensor in place (DTensor shards too)."""
    for t in [*model.parameters(), *(v for state in optimizer.state.values() for v in state.values())]:
        t.add_(torch.randn_like(t) if t.is_floating_point() else 1)
    for group in optimizer.param_groups:
        group["lr"] *= 2


def assert_bit_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_save_perturb_load_is_bit_equal(tmp_path: Path) -> None:
    model, optimizer, scheduler = make_training()
    position = {"epoch": 0, "next_index": 5}
    train = TrainState(data_hash="abc123", step=2, tokens_seen=32)
    states = {
        "app": ModelOptimizerState(model, optimizer),
        "scheduler": DictState(scheduler),
        "data": DictState(position),
        "train": train,
    }
    manager = CheckpointManager(tmp_path / "checkpoints", keep=2)
    folder = manager.save(2, states)
    assert folder == tmp_path / "checkpoints" / "step-000002"
    marker = json.loads((folder / "COMPLETE").read_text())
    assert marker["step"] == 2 and marker["world_size"] == 1
    want = snapshot(model, optimizer)
    want_sched = scheduler.state_dict()

    perturb(model, optimizer)
    scheduler.step()
    position.update(epoch=3, extra=1)
    train.step, train.tokens_seen = 99, 999
    assert all(not torch.equal(v, want[k]) for k, v in snapshot(model, optimizer).items())

    assert manager.latest_step() == 2
    manager.load(2, states)
    assert_bit_equal(snapshot(model, optimizer), want)
    assert scheduler.state_dict() == want_sched
    assert position == {"epoch": 0, "next_index": 5}
    assert (train.step, train.tokens_seen) == (2, 32)


def test_load_into_fresh_optimizer_and_model_only(tmp_path: Path) -> None:
    model, optimizer, _ = make_training()
    want = snapshot(model, optimizer)
    manager = CheckpointManager(tmp_path, keep=1)
    manager.save(2, {"app": ModelOptimizerState(model, optimizer)})

    fresh, fresh_optimizer, _ = make_training(seed=1, num_steps=0)  # optimizer state not yet created
    manager.load(2, {"app": ModelOptimizerState(fresh, fresh_optimizer)})
    assert_bit_equal(snapshot(fresh, fresh_optimizer), want)

    weights_only, _, _ = make_training(seed=2, num_steps=0)
    manager.load(2, {"app": ModelOptimizerState(weights_only)})
    assert all(torch.equal(p, want[f"param/{k}"]) for k, p in weights_only.named_parameters())


def test_torn_checkpoints_are_ignored_and_warned_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manager = CheckpointManager(tmp_path, keep=3)
    assert manager.latest_step() is None
    model, optimizer, _ = make_training(num_steps=1)
    for step in (100, 200):
        manager.save(step, {"app": ModelOptimizerState(model, optimizer)})
    (tmp_path / "step-000300").mkdir()
    (tmp_path / "step-000300" / ".metadata").write_bytes(b"torn")
    (tmp_path / ".step-000400.partial").mkdir()
    with caplog.at_level(logging.WARNING, logger="dream_job.train.checkpoint"):
        assert manager.latest_step() == 200
        assert manager.latest_step() == 200
    logged = [r.getMessage() for r in caplog.records
              if r.name == "dream_job.train.checkpoint" and r.levelno >= logging.WARNING]
    assert sorted(logged) == [
        f"ignoring torn checkpoint `{tmp_path / '.step-000400.partial'}` (no `COMPLETE` marker)",
        f"ignoring torn checkpoint `{tmp_path / 'step-000300'}` (no `COMPLETE` marker)",
    ]
    with pytest.raises(CheckpointError) as info:
        manager.load(300, {"app": ModelOptimizerState(model, optimizer)})
    assert info.value.message == f"checkpoint `{tmp_path / 'step-000300'}` is missing or torn (no `COMPLETE` marker)"
    assert info.value.hint == f"complete checkpoints in `{tmp_path}`: [100, 200]"


def test_keep_prunes_to_newest_and_removes_torn(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=2)
    train = TrainState(data_hash="h")
    (tmp_path / ".step-000050.partial").mkdir(parents=True)
    (tmp_path / "step-000005").mkdir()  # crashed between rename and marker
    (tmp_path / "notes").mkdir()  # not ours: left alone
    kept = []
    for step in (10, 20, 30, 40):
        train.step = step
        manager.save(step, {"train": train})
        kept.append(manager.complete_steps())
    assert kept == [[10], [10, 20], [20, 30], [30, 40]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "step-000030", "step-000040"]
    assert sorted(p.name for p in (tmp_path / "step-000040").iterdir()) == [".metadata", "COMPLETE", "__0_0.distcp"]
    manager.save(40, {"train": train})  # saving a step again replaces it
    assert manager.complete_steps() == [30, 40]


def test_train_state_refuses_other_data() -> None:
    state = TrainState(data_hash="new456", world_size=2)
    saved = TrainState(data_hash="old123", step=7, world_size=4).state_dict()
    with pytest.raises(CheckpointError) as info:
        state.load_state_dict(saved)
    assert info.value.message == "checkpoint `data_hash` is `old123`, this run's is `new456`"
    assert info.value.hint == (
        "the run dir was prepared with other data; use a new `artifacts.run_dir` or re-run prep with the "
        "original spec"
    )
    with pytest.raises(CheckpointError, match=r"^checkpoint `TrainState.version` is `0`, this code reads `1`$"):
        state.load_state_dict({**saved, "version": 0})
    state.load_state_dict({**saved, "data_hash": "new456"})  # another world size is fine
    assert (state.step, state.world_size) == (7, 2)


def test_load_mismatch_is_a_checkpoint_error(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=1)
    manager.save(1, {"train": TrainState(data_hash="h")})
    model, optimizer, _ = make_training(num_steps=0)
    with pytest.raises(CheckpointError) as info:
        manager.load(1, {"app": ModelOptimizerState(model, optimizer)})
    assert info.value.message == f"cannot load checkpoint `{tmp_path / 'step-000001'}`"
    missing = "app.model.model.embed_tokens.weight"
    assert info.value.caused_by == [f"rank 0: RuntimeError: Missing key in checkpoint state_dict: {missing}."]
    assert info.value.hint == (
        "the checkpoint does not fit this model or optimizer; resume with the spec that wrote it, "
        "or use a new `artifacts.run_dir`"
    )
    with pytest.raises(CheckpointError) as info:
        manager.load(1, {"train": TrainState(data_hash="other")})
    assert info.value.caused_by == [f"while loading `{tmp_path / 'step-000001'}`"]


def test_unwritable_root_is_a_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(CheckpointError) as info:
        CheckpointManager(tmp_path / "file" / "checkpoints", keep=1).save(1, {"train": TrainState(data_hash="h")})
    partial = tmp_path / "file" / "checkpoints" / ".step-000001.partial"
    assert info.value.message == f"cannot create checkpoint folder `{partial}`"
    assert info.value.caused_by == [f"NotADirectoryError: [Errno 20] Not a directory: '{partial}'"]
    assert info.value.hint == "check free space and write access there"
