"""Training as a user runs it: 2 CPU processes under torchrun (gloo, FSDP2), kill -9 and resume, methods."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dream_job.train.checkpoint import CheckpointManager
from tests.conftest import REPO

SMOKE = REPO / "jobs" / "smoke.yaml"


def run_args(run_dir: Path, *extra: str) -> list[str]:
    # Batches of 8 in micro-batches of 4 split over 1 or 2 processes, whatever the smoke job's own sizes.
    return ["--set", f"artifacts.run_dir={run_dir}", "--set", "train.log_every_steps=1",
            "--set", "train.global_batch_size=8", "--set", "train.micro_batch_size=4", *extra]


def dream_job(*args: str, nproc: int = 1, extra_env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    env = {**os.environ, **(extra_env or {}), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "dream_job", *args]
    else:
        command = [sys.executable, "-m", "dream_job", *args]
    return subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, **kwargs)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts its workers in their own sessions)."""
    import psutil

    try:
        root = psutil.Process(pid)
        victims = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 300) -> None:
    """Wait until `path` exists, failing if the run ends (or the time runs out) first."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None and time.monotonic() < deadline, f"the run ended before {path} appeared"
        time.sleep(0.05)


def run_ok(*args: str, nproc: int = 1) -> str:
    process = dream_job(*args, nproc=nproc, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def losses(run_dir: Path) -> dict[int, float]:
    """Loss per step from metrics.jsonl; a step logged twice (killed, then redone) keeps its last value."""
    lines = (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()
    return {row["step"]: row["train/loss"] for row in map(json.loads, lines)}


def records(run_dir: Path) -> dict[int, dict]:
    """Every metrics.jsonl record by step, without the wall-clock fields (`time`, tokens/s, eta)."""
    lines = (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()
    return {row["step"]: {k: v for k, v in row.items() if not k.startswith(("time", "perf/"))}
            for row in map(json.loads, lines)}


def final_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = run_dir / f"final-{step}.pt"
    dcp_to_torch_save(str(run_dir / "checkpoints" / f"step-{step:06d}"), str(target))
    state = torch.load(target, weights_only=False)
    return {k: v for k, v in state["model"]["model"].items() if isinstance(v, torch.Tensor)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared smoke data dir, copied into each run dir (prep is not what these tests test)."""
    run_dir = tmp_path_factory.mktemp("prepared")
    run_ok("prep", str(SMOKE), *run_args(run_dir))
    return run_dir / "data"


def new_run(tmp_path: Path, prepared: Path, name: str) -> Path:
    import shutil

    run_dir = tmp_path / name
    shutil.copytree(prepared, run_dir / "data")
    return run_dir


@pytest.mark.slow
def test_two_process_fsdp_training_lowers_the_loss_and_exports(tmp_path: Path, prepared: Path) -> None:
    run_dir = new_run(tmp_path, prepared, "two")
    run_ok("train", str(SMOKE), *run_args(run_dir, "--set", "train.epochs=3", "--set", "train.eval_every_steps=10"),
           nproc=2)
    per_step = losses(run_dir)
    assert len(per_step) == 51  # 140 training rows: 17 full batches of 8 per epoch, 3 epochs
    # Validation every 10 steps and at the last one; it falls as training goes on.
    validation = {step: r["val/loss"] for step, r in records(run_dir).items() if "val/loss" in r}
    assert sorted(validation) == [10, 20, 30, 40, 50, 51] and validation[51] < validation[10], validation
    log_lines = (run_dir / "logs" / "train.log").read_text().splitlines()
    assert log_lines[16].split()[1:5] == ["step", "17/51", "epoch", "1.00"]
    first, last = [per_step[s] for s in range(1, 11)], [per_step[s] for s in range(42, 52)]
    assert sum(last) / 10 < 0.7 * sum(first) / 10, (first, last)
    exported = json.loads((run_dir / "export" / "dream_job_export.json").read_text())
    assert exported["num_parameters"] > 0
    assert (run_dir / "logs" / "loss.png").stat().st_size > 1000


def test_kill_and_resume_is_bit_identical(tmp_path: Path, prepared: Path) -> None:
    common = ("--set", "train.max_steps=30", "--set", "train.save_every_steps=5", "--set", "train.keep_checkpoints=10",
              "--set", "train.eval_every_steps=4")
    straight = new_run(tmp_path, prepared, "straight")
    run_ok("train", str(SMOKE), *run_args(straight, *common), nproc=2)

    resumed = new_run(tmp_path, prepared, "resumed")
    process = dream_job("train", str(SMOKE), *run_args(resumed, *common), nproc=2,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(resumed / "checkpoints" / "step-000010" / "COMPLETE", process)
    kill_tree(process.pid)
    process.wait()
    time.sleep(1)
    assert not (resumed / "checkpoints" / "step-000030").exists()
    run_ok("train", str(SMOKE), *run_args(resumed, *common), nproc=2)

    assert losses(resumed) == losses(straight)
    validation = {step: r["val/loss"] for step, r in records(straight).items() if "val/loss" in r}
    assert sorted(validation) == [4, 8, 12, 16, 20, 24, 28, 30]
    assert {step: r["val/loss"] for step, r in records(resumed).items() if "val/loss" in r} == validation
    a, b = final_weights(straight, 30), final_weights(resumed, 30)
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_sigterm_saves_and_resumes_on_one_process(tmp_path: Path, prepared: Path) -> None:
    common = ("--set", "train.max_steps=40", "--set", "train.save_every_steps=5", "--set", "train.keep_checkpoints=10")
    straight = new_run(tmp_path, prepared, "straight")
    run_ok("train", str(SMOKE), *run_args(straight, *common), nproc=2)
    preempted = new_run(tmp_path, prepared, "preempted")
    process = dream_job("train", str(SMOKE), *run_args(preempted, *common), nproc=2, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
    wait_for(preempted / "checkpoints" / "step-000005" / "COMPLETE", process)
    process.send_signal(signal.SIGTERM)  # what a spot preemption sends; torchrun forwards it to the workers
    output, _ = process.communicate(timeout=300)
    assert "training stopped by SIGTERM after saving step" in output, output
    saved = sorted(p.name for p in (preempted / "checkpoints").glob("step-*"))
    assert "step-000040" not in saved and saved[-1] > "step-000005", saved
    # Resume on one process from the two-process checkpoint (DCP reshards).
    run_ok("train", str(SMOKE), *run_args(preempted, *common), nproc=1)
    stopped_at = int(saved[-1].removeprefix("step-"))
    expected, got = losses(straight), losses(preempted)
    assert [got[s] for s in range(1, stopped_at + 1)] == [expected[s] for s in range(1, stopped_at + 1)]
    # Same batches and noise after the reshard, another reduction order: close, not bit-equal.
    for s in range(stopped_at + 1, 41):
        assert got[s] == pytest.approx(expected[s], rel=1e-3, abs=1e-4), s


def export_validation_loss(run_dir: Path, spec_args: list[str]) -> float:
    """Load `<run_dir>/export/` into the training model class and score it on the held-out rows."""
    from dream_job.data.holdout import read_holdout_tokens
    from dream_job.diffusion.lm import DreamForMaskedDiffusion
    from dream_job.model.dream import DreamConfig
    from dream_job.model.weights import load_safetensors_weights
    from dream_job.spec import load_spec
    from dream_job.train.validation import Validator

    spec = load_spec(SMOKE, [arg for arg in spec_args if arg != "--set"])
    config = DreamConfig.from_pretrained_dir(run_dir / "export")
    with torch.device("meta"):
        model = DreamForMaskedDiffusion(config)
    load_safetensors_weights(model, run_dir / "export", dtype=torch.float32, device=torch.device("cpu"))
    rows = read_holdout_tokens(run_dir / "data", spec.data)
    return Validator(rows, spec.train, pad_id=config.pad_token_id, eos_id=config.eos_token_id, rank=0, world_size=1,
                     device=torch.device("cpu")).loss(model)


@pytest.mark.parametrize("method", ["lora", "full_8bit"])
def test_other_methods_train_on_cpu(tmp_path: Path, prepared: Path, method: str, in_repo: Path) -> None:
    run_dir = new_run(tmp_path, prepared, method)
    extra = ["--set", f"train.method={method}", "--set", "train.max_steps=6", "--set", "train.save_every_steps=3",
             "--set", "train.eval_every_steps=3"]
    if method == "lora":
        extra += ["--set", "train.lora.rank=4", "--set", "train.lora.alpha=8", "--set", "train.learning_rate=1e-2"]
    run_ok("train", str(SMOKE), *run_args(run_dir, *extra))
    logged = records(run_dir)
    assert sorted(logged) == [1, 2, 3, 4, 5, 6]
    assert [s for s, r in sorted(logged.items()) if "val/loss" in r] == [3, 6]
    assert CheckpointManager(run_dir / "checkpoints", keep=2).complete_steps() == [3, 6]
    # The held-out loss went down, and the export is the trained model: it scores what step 6 logged.
    assert logged[6]["val/loss"] < logged[3]["val/loss"], logged
    tolerance = 1e-3 if method == "lora" else 2e-2  # the export is bf16; 8-bit also trains bf16 weights
    assert export_validation_loss(run_dir, run_args(run_dir, *extra)) == pytest.approx(
        logged[6]["val/loss"], rel=tolerance)
    if method == "lora":
        assert (run_dir / "export" / "adapter" / "adapter_config.json").exists()


def test_a_longer_run_replaces_the_export_and_leaves_no_staging_folder(tmp_path: Path, prepared: Path,
                                                                        in_repo: Path) -> None:
    run_dir = new_run(tmp_path, prepared, "longer")
    first = ["--set", "train.max_steps=4", "--set", "train.eval_every_steps=2"]
    run_ok("train", str(SMOKE), *run_args(run_dir, *first))
    # The export is bf16 (training here is fp32): it scores within rounding of what the last step logged.
    assert export_validation_loss(run_dir, run_args(run_dir, *first)) == pytest.approx(
        records(run_dir)[4]["val/loss"], rel=1e-3)
    longer = ["--set", "train.max_steps=8", "--set", "train.eval_every_steps=2"]
    run_ok("train", str(SMOKE), *run_args(run_dir, *longer))
    logged = records(run_dir)
    # The export now is the step-8 model, written beside the step-4 one and swapped in.
    exported = export_validation_loss(run_dir, run_args(run_dir, *longer))
    assert exported == pytest.approx(logged[8]["val/loss"], rel=1e-3)
    assert abs(exported - logged[8]["val/loss"]) < abs(exported - logged[4]["val/loss"]), logged
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".export")) == []
    # Run again: nothing to train, the export stays; the summary line repeats the logged numbers.
    output = run_ok("train", str(SMOKE), *run_args(run_dir, *longer))
    assert (f"trained 8 of 8 steps, final loss {logged[8]['train/loss']:.4g}, validation loss "
            f"{logged[8]['val/loss']:.4g}; model: {run_dir / 'export'}") in " ".join(output.split()), output


def test_a_run_resumed_with_no_steps_left_reports_the_last_logged_loss(tmp_path: Path, prepared: Path) -> None:
    # Killed after its last checkpoint but before the export: the next process trains no step of
    # its own, exports, and reports the run's last logged loss (it printed `nan` before).
    import shutil

    run_dir = new_run(tmp_path, prepared, "no-steps-left")
    args = run_args(run_dir, "--set", "train.max_steps=2", "--set", "train.save_every_steps=1")
    run_ok("train", str(SMOKE), *args)
    last = losses(run_dir)[2]
    shutil.rmtree(run_dir / "export")
    output = run_ok("train", str(SMOKE), *args)
    assert "resumed from" in output and (run_dir / "export" / "model.safetensors.index.json").is_file()
    assert f"trained 2 of 2 steps, final loss {last:.4g}" in " ".join(output.split()), output


def test_offload_on_cpu_fails_at_start_with_the_fix(tmp_path: Path, prepared: Path) -> None:
    run_dir = new_run(tmp_path, prepared, "offload")
    process = dream_job("train", str(SMOKE), *run_args(run_dir, "--set", "train.method=full_offload"),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1
    error = stderr[stderr.find("error: "):]  # after the stage's INFO line
    assert error.startswith(
        "error: `train.method` `full_offload` moves the optimizer to the CPU and needs a CUDA GPU for the compute")


def test_train_without_prep_says_to_run_prep(tmp_path: Path) -> None:
    process = dream_job("train", str(SMOKE), *run_args(tmp_path / "empty"), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1
    assert stderr.startswith(f"error: no prepared data in `{tmp_path / 'empty' / 'data'}`")


def test_synced_checkpoint_resumes_on_a_new_machine(tmp_path: Path, prepared: Path) -> None:
    dest = tmp_path / "dest"
    common = ("--set", f"artifacts.destinations=[file://{dest}]", "--set", "artifacts.sync_every_steps=4",
              "--set", "train.save_every_steps=2")
    first = new_run(tmp_path, prepared, "first")
    run_ok("train", str(SMOKE), *run_args(first, "--set", "train.max_steps=8", *common))
    # A new machine: the same run id, a fresh run dir with only the prepared data.
    second = new_run(tmp_path, prepared, "second")
    process = dream_job("train", str(SMOKE), *run_args(second, "--set", "train.max_steps=10", *common),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "fetched checkpoint step 8" in output
    assert sorted(losses(second)) == [9, 10]
