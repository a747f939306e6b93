"""Training with `train.async_save` as a user runs it: 2 CPU processes (gloo, FSDP2), kill -9, SIGTERM, resume."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from dream_job.train.checkpoint import CheckpointManager
from tests.integration.test_train import (
    SMOKE, dream_job, final_weights, kill_tree, losses, new_run, prepared, run_args, run_ok, wait_for,
)

__all__ = ["prepared"]  # the module-scoped fixture, shared with test_train.py

COMMON = ("--set", "train.max_steps=30", "--set", "train.save_every_steps=5", "--set", "train.keep_checkpoints=10",
          "--set", "train.eval_every_steps=null")


@pytest.mark.slow  # three 2-process runs: ~2 minutes on 2 shared cores
def test_async_saves_after_kill_9_resume_bit_identical_to_synchronous_saves(tmp_path: Path, prepared: Path) -> None:
    straight = new_run(tmp_path, prepared, "straight")
    run_ok("train", str(SMOKE), *run_args(straight, *COMMON), nproc=2)

    background = ("--set", "train.async_save=true")
    resumed = new_run(tmp_path, prepared, "resumed")
    process = dream_job("train", str(SMOKE), *run_args(resumed, *COMMON, *background), nproc=2,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(resumed / "checkpoints" / "step-000010" / "COMPLETE", process)
    kill_tree(process.pid)
    process.wait()
    time.sleep(1)
    root = resumed / "checkpoints"
    complete = CheckpointManager(root, keep=10).complete_steps()
    assert 10 in complete and 30 not in complete
    # Whatever was being written when the processes died has no marker and is not counted.
    torn = [p.name for p in root.iterdir() if not (p / "COMPLETE").exists()]
    assert all(name.startswith((".step-", "step-")) for name in torn), torn

    run_ok("train", str(SMOKE), *run_args(resumed, *COMMON, *background), nproc=2)
    assert losses(resumed) == losses(straight)
    assert CheckpointManager(root, keep=10).complete_steps() == [5, 10, 15, 20, 25, 30]
    assert sorted(p.name for p in root.iterdir()) == [f"step-{s:06d}" for s in (5, 10, 15, 20, 25, 30)]
    a, b = final_weights(straight, 30), final_weights(resumed, 30)
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sigterm_waits_for_the_save_in_flight_and_saves_its_step(tmp_path: Path, prepared: Path) -> None:
    run_dir = new_run(tmp_path, prepared, "preempted")
    args = run_args(run_dir, "--set", "train.max_steps=400", "--set", "train.save_every_steps=3",
                    "--set", "train.keep_checkpoints=100", "--set", "train.eval_every_steps=null",
                    "--set", "train.async_save=true")
    process = dream_job("train", str(SMOKE), *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(run_dir / "checkpoints" / "step-000006" / "COMPLETE", process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 3, output
    step = int(output.split("after saving step ")[1].split(" ")[0])
    root = run_dir / "checkpoints"
    # The stop's checkpoint and every earlier scheduled one are complete; nothing is left half-written.
    assert CheckpointManager(root, keep=100).latest_step() == step
    names = sorted(p.name for p in root.iterdir())
    assert names == sorted({f"step-{s:06d}" for s in (*range(3, step + 1, 3), step)}), names
