"""Asynchronous DCP saves (`train.async_save`): staged copy, marker only after the write, torn saves ignored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dream_job.model import DreamModel
from dream_job.train.checkpoint import CheckpointManager
from dream_job.train.state import DictState, ModelOptimizerState, TrainState
from tests.conftest import REPO, tiny_config
from tests.unit.test_checkpoint import assert_bit_equal, make_training, snapshot


def train_one_more_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    ids_BL = torch.randint(1, 100, (2, 8))
    model(ids_BL).float().logsumexp(-1).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_async_save_keeps_the_state_of_its_step_while_training_goes_on(tmp_path: Path) -> None:
    model, optimizer, scheduler = make_training()
    train = TrainState(data_hash="h", step=2, tokens_seen=32)
    states = {"app": ModelOptimizerState(model, optimizer), "scheduler": DictState(scheduler), "train": train}
    manager = CheckpointManager(tmp_path, keep=2)
    want, want_sched = snapshot(model, optimizer), scheduler.state_dict()

    manager.save_async(2, states)
    # The staged copy is one copy of every tensor of the state, no more: parameters and AdamW's
    # step, exp_avg and exp_avg_sq per parameter.
    params = list(model.parameters())
    tensor_bytes = sum(p.numel() * p.element_size() for p in params)
    state_bytes = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values())
    assert state_bytes == 2 * tensor_bytes + 4 * len(params)  # fp32 moments, an fp32 step count each
    assert manager.staging_bytes == tensor_bytes + state_bytes
    # Training goes on while the shards are written: the checkpoint must hold step 2's values.
    for _ in range(2):
        train_one_more_step(model, optimizer)
        scheduler.step()
    train.step, train.tokens_seen = 4, 64
    assert manager.in_flight == 2
    assert manager.latest_step() is None  # not counted before `wait`, even once the write is done
    assert (tmp_path / ".step-000002.partial").is_dir() and not (tmp_path / "step-000002").exists()

    assert manager.wait() == tmp_path / "step-000002"
    assert manager.in_flight is None and manager.wait() is None
    assert json.loads((tmp_path / "step-000002" / "COMPLETE").read_text())["step"] == 2
    assert manager.latest_step() == 2

    fresh, fresh_optimizer, fresh_scheduler = make_training(seed=1, num_steps=0)
    fresh_train = TrainState(data_hash="h")
    manager.load(2, {"app": ModelOptimizerState(fresh, fresh_optimizer), "scheduler": DictState(fresh_scheduler),
                     "train": fresh_train})
    assert_bit_equal(snapshot(fresh, fresh_optimizer), want)
    assert fresh_scheduler.state_dict() == want_sched
    assert (fresh_train.step, fresh_train.tokens_seen) == (2, 32)
    manager.close()
    assert manager.staging_bytes == 0


@pytest.mark.parametrize("optimizer_name", ["AdamW", "AdamW8bit"])
def test_async_and_sync_saves_write_the_same_bytes(tmp_path: Path, optimizer_name: str) -> None:
    """torchao's 8-bit states are tensor subclasses: the staging copy must keep them as they are."""
    if optimizer_name == "AdamW8bit":
        from torchao.optim import AdamW8bit

        torch.manual_seed(0)
        model = DreamModel(tiny_config(hidden_size=256, intermediate_size=512)).to(torch.bfloat16)
        optimizer = AdamW8bit(model.parameters(), lr=1e-3, bf16_stochastic_round=True)
        train_one_more_step(model, optimizer)
        assert type(next(iter(optimizer.state.values()))["exp_avg"]).__name__ == "OptimState8bit"
    else:
        model, optimizer, _ = make_training()
    states = {"app": ModelOptimizerState(model, optimizer)}
    sync, background = CheckpointManager(tmp_path / "sync", keep=1), CheckpointManager(tmp_path / "async", keep=1)
    sync.save(2, states)
    background.save_async(2, states)
    train_one_more_step(model, optimizer)  # after staging: not in the checkpoint
    background.wait()
    background.close()
    # The shards are byte for byte the same (`.metadata` names the folder it was written to).
    shard = "step-000002/__0_0.distcp"
    assert (tmp_path / "async" / shard).read_bytes() == (tmp_path / "sync" / shard).read_bytes()


def test_next_save_completes_the_one_in_flight_and_prunes(tmp_path: Path) -> None:
    model, optimizer, _ = make_training(num_steps=1)
    train = TrainState(data_hash="h")
    states = {"app": ModelOptimizerState(model, optimizer), "train": train}
    manager = CheckpointManager(tmp_path, keep=2)
    seen = []
    for step in (10, 20, 30):
        train.step = step
        manager.save_async(step, states)
        seen.append(manager.complete_steps())
    assert seen == [[], [10], [10, 20]]
    train.step = 31
    manager.save(31, states)  # a stop's synchronous save completes the one in flight first
    assert manager.complete_steps() == [30, 31]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000030", "step-000031"]


CHILD = textwrap.dedent("""
    import sys, time, torch
    from pathlib import Path
    from dream_job.train.checkpoint import CheckpointManager
    from dream_job.train.state import ModelOptimizerState, TrainState
    from tests.unit.test_checkpoint import make_training, snapshot
    from tests.unit.test_checkpoint_async import train_one_more_step

    root = Path(sys.argv[1])
    model, optimizer, _ = make_training()
    train = TrainState(data_hash="h", step=2)
    states = {"app": ModelOptimizerState(model, optimizer), "train": train}
    manager = CheckpointManager(root / "checkpoints", keep=3)
    manager.save_async(2, states)
    manager.wait()
    torch.save(snapshot(model, optimizer), root / "at-step-2.pt")
    train_one_more_step(model, optimizer)
    train.step = 3
    manager.save_async(3, states)
    print("staged", flush=True)
    time.sleep(600)  # killed here: the step-3 write is in flight or done, never completed
""")


def test_a_save_killed_in_flight_is_ignored_and_resume_loads_the_previous_one(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "staged"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    root = tmp_path / "checkpoints"
    assert (root / ".step-000003.partial").is_dir() and not (root / "step-000003").exists()
    manager = CheckpointManager(root, keep=3)
    assert manager.latest_step() == 2

    fresh, fresh_optimizer, _ = make_training(seed=5, num_steps=0)
    train = TrainState(data_hash="h")
    manager.load(2, {"app": ModelOptimizerState(fresh, fresh_optimizer), "train": train})
    assert_bit_equal(snapshot(fresh, fresh_optimizer), torch.load(tmp_path / "at-step-2.pt"))
    assert train.step == 2
    # The next save replaces the torn folder.
    manager.save(3, {"train": train})
    assert sorted(p.name for p in root.iterdir()) == ["step-000002", "step-000003"]


def test_an_auto_cadence_uploads_every_save(tmp_path: Path) -> None:
    from dream_job.spec import load_spec
    from dream_job.train_hooks import sync_checkpoint

    folder = CheckpointManager(tmp_path / "checkpoints", keep=2).save(7, {"train": TrainState(data_hash="h", step=7)})
    remote = tmp_path / "remote"
    job, destination = REPO / "jobs" / "dream-s1k.yaml", f"artifacts.destinations=[file://{remote}]"
    fixed = load_spec(job, [destination, "train.save_every_steps=5", "artifacts.sync_every_steps=20"])
    sync_checkpoint(fixed, "r1", folder, 7, final=False)  # step 7 is no multiple of 20: not uploaded
    assert not remote.exists()
    auto = load_spec(job, [destination, "train.save_every_steps=auto", "artifacts.sync_every_steps=20"])
    sync_checkpoint(auto, "r1", folder, 7, final=False)
    assert (remote / "r1" / "checkpoints" / "step-000007" / "COMPLETE").is_file()
