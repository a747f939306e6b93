"""`dream-job run` as a user runs it: all stages, a kill in each stage and a re-run that skips what is done."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_train import SMOKE, dream_job, kill_tree, wait_for

pytestmark = pytest.mark.slow

SECRETS = {"HF_TOKEN": "hf_FAKEsecretForPipelineTest123", "AWS_SECRET_ACCESS_KEY": "FAKEawsSecretForPipelineTest456"}


def run_args(run_dir: Path, published: Path) -> list[str]:
    return [
        "--set", f"artifacts.run_dir={run_dir}", "--set", f"artifacts.destinations=[file://{published}]",
        "--set", "train.max_steps=16", "--set", "train.save_every_steps=4", "--set", "eval.limit=4",
        "--set", "eval.sampler.gen_length=24", "--set", "eval.sampler.steps=12", "--set", "eval.models=[base, final]",
    ]


def run_to_end(run_dir: Path, published: Path) -> str:
    process = dream_job("run", str(SMOKE), *run_args(run_dir, published), stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output
    return output


def kill_when(path: Path, run_dir: Path, published: Path) -> None:
    process = dream_job("run", str(SMOKE), *run_args(run_dir, published), stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    wait_for(path, process, timeout_s=600)
    kill_tree(process.pid)
    process.wait()


def results(run_dir: Path, published: Path) -> tuple[dict, bytes]:
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    scores = {label: {suite: (e["n"], e["correct"]) for suite, e in suites.items()} for label, suites in summary.items()}
    weights = b"".join(p.read_bytes() for p in sorted((published).glob("*.safetensors")))
    return scores, weights


def test_killed_in_each_stage_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    straight_run, straight_pub = tmp_path / "straight", tmp_path / "straight-pub"
    output = run_to_end(straight_run, straight_pub)
    for stage in ("preflight", "prep", "train", "eval", "publish"):
        assert f"stage {stage}: done" in output
    assert (straight_pub / "MANIFEST.sha256").exists()

    run_dir, published = tmp_path / "killed", tmp_path / "killed-pub"
    kill_when(run_dir / "checkpoints" / "step-000004" / "COMPLETE", run_dir, published)  # in training
    kill_when(run_dir / "eval" / "summary.json", run_dir, published)  # in evaluation
    output = run_to_end(run_dir, published)
    assert "stage prep: skipped (done before)" in output
    assert "stage train: skipped (done before)" in output
    assert "stage eval: done" in output and "stage publish: done" in output
    assert results(run_dir, published) == results(straight_run, straight_pub)
    again = run_to_end(run_dir, published)
    assert all(f"stage {s}: skipped (done before)" in again for s in ("prep", "train", "eval", "publish"))


def test_budget_guard_stops_training_early_and_the_run_still_evaluates_and_publishes(tmp_path: Path) -> None:
    run_dir, published = tmp_path / "guarded", tmp_path / "guarded-pub"
    # ¥1 budget with ¥0.2 kept in reserve at $1000/h: the rest is spent within a second of training.
    process = dream_job("run", str(SMOKE), *run_args(run_dir, published), "--set", "budget.max_cost_yuan=1",
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        extra_env={"DREAM_JOB_USD_PER_HOUR": "1000", **SECRETS})
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output
    assert "training stopped early at step" in output
    cost = json.loads((run_dir / "cost.json").read_text())
    assert cost["stopped_early"].startswith("training stopped early at step ")
    steps = [json.loads(line)["step"] for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) < 16
    assert "stage eval: done" in output and "stage publish: done" in output
    assert "**Budget guard:** training stopped early" in (run_dir / "eval" / "report.md").read_text()
    assert (published / "MANIFEST.sha256").exists()
    # Secrets in the environment reach no log line, run-dir file or published file.
    for folder in (run_dir, published):
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not any(v.encode() in data for v in SECRETS.values()), path
    assert not any(v in output for v in SECRETS.values())
