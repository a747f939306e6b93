"""`dream-job run` as a user runs it: all stages, a kill in each stage and a re-run that skips what is done.

And the stage rules of issue 15: a stage is skipped only when it finished on today's inputs (an
edited dataset, a budget stop then a larger budget, a model trained by hand), one process per run
dir (a second one is refused, `kill -9` leaves no stale lock), logs that continue without repeats,
and `status` telling the same story whichever verbs ran.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import SMOKE_DATA
from tests.integration.test_train import SMOKE, dream_job, kill_tree, wait_for

pytestmark = pytest.mark.slow

SECRETS = {"HF_TOKEN": "hf_FAKEsecretForPipelineTest123", "AWS_SECRET_ACCESS_KEY": "FAKEawsSecretForPipelineTest456"}


def run_args(run_dir: Path, published: Path) -> list[str]:
    return [
        "--set", f"artifacts.run_dir={run_dir}", "--set", f"artifacts.destinations=[file://{published}]",
        "--set", "train.max_steps=16", "--set", "train.save_every_steps=4", "--set", "eval.limit=4",
        "--set", "eval.sampler.gen_length=24", "--set", "eval.sampler.steps=12", "--set", "eval.models=[base, final]",
    ]


def run_to_end(run_dir: Path, published: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    process = dream_job("run", str(SMOKE), *run_args(run_dir, published), *extra, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, extra_env=env)
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output
    return output


def verb(*args: str, env: dict[str, str] | None = None, code: int = 0) -> str:
    """Run `dream-job <args>` to its end; return stdout + stderr (checking the exit code)."""
    process = dream_job(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, extra_env=env)
    output, _ = process.communicate(timeout=900)
    assert process.returncode == code, output
    return output


def status(run_dir: Path) -> dict:
    """`dream-job status --json` of the run dir (stdout only)."""
    process = dream_job("status", str(SMOKE), "--set", f"artifacts.run_dir={run_dir}", "--json",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return json.loads(out)


def logged_steps(run_dir: Path) -> tuple[list[int], list[int]]:
    """Steps in `metrics.jsonl` and in `train.log`, in file order."""
    metrics = [json.loads(line)["step"] for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    log = [int(line.split(" ")[2].split("/")[0]) for line in (run_dir / "logs" / "train.log").read_text().splitlines()]
    return metrics, log


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
    assert "preflight: passed" in output
    for stage in ("prep", "train", "eval", "publish"):
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


BUDGET_ENV = {"DREAM_JOB_USD_PER_HOUR": "1000"}  # ¥7.1 per second: a ¥1 budget is spent within the first step


def safetensors_of(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.glob("*.safetensors")))


def test_budget_stop_then_a_larger_budget_continues_and_a_model_trained_by_hand_is_republished(tmp_path: Path) -> None:
    run_dir, published = tmp_path / "run", tmp_path / "pub"
    output = run_to_end(run_dir, published, "--set", "budget.max_cost_yuan=1", env=BUDGET_ENV)
    assert "stage train: stopped by budget" in output
    assert "stage eval: done" in output and "stage publish: done" in output
    told = status(run_dir)
    stopped_at = told["step"]
    assert 1 <= stopped_at < 16 and told["stages"]["train"]["outcome"] == "stopped_by_budget"
    assert told["stopped"].startswith(f"stage train stopped by budget: training stopped early at step {stopped_at} "
                                      "of 16: spent ¥")

    # The same budget again: training is not skipped as done, but the guard stops it before any step.
    again = run_to_end(run_dir, published, "--set", "budget.max_cost_yuan=1", env=BUDGET_ENV)
    assert "stage train: stopped by budget" in again
    assert "stage eval: skipped (done before)" in again and "stage publish: skipped (done before)" in again
    assert logged_steps(run_dir) == (list(range(1, stopped_at + 1)), list(range(1, stopped_at + 1)))

    # Finished by hand with a larger budget: `run` sees the new export and evaluates and publishes it.
    verb("train", str(SMOKE), *run_args(run_dir, published), "--set", "budget.max_cost_yuan=5000", env=BUDGET_ENV)
    assert status(run_dir)["stages"]["train"]["outcome"] == "done"
    assert safetensors_of(published) != safetensors_of(run_dir / "export")
    output = run_to_end(run_dir, published, "--set", "budget.max_cost_yuan=5000", env=BUDGET_ENV)
    assert "stage train: skipped (done before)" in output
    assert "stage eval: done" in output and "stage publish: done" in output
    assert safetensors_of(published) == safetensors_of(run_dir / "export")
    assert logged_steps(run_dir) == (list(range(1, 17)), list(range(1, 17)))
    told = status(run_dir)
    assert told["stopped"] is None and told["step"] == 16
    assert {name: stage["outcome"] for name, stage in told["stages"].items()} == dict.fromkeys(
        ("prep", "train", "eval", "publish"), "done")
    assert "stopped_early" not in json.loads((run_dir / "cost.json").read_text())
    assert "Budget guard" not in (run_dir / "eval" / "report.md").read_text()


def test_an_edited_dataset_is_prepared_again_and_refused_once_trained_on(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    lines = SMOKE_DATA.read_text().splitlines(keepends=True)
    data.write_text("".join(lines))
    run_dir = tmp_path / "run"
    # The prose rows of s1k-smoke.jsonl with the data settings they were written for.
    args = ["--set", f"data.dataset={data}", "--set", f"artifacts.run_dir={run_dir}", "--set", "train.max_steps=4",
            "--set", "data.max_length=256", "--set", "data.truncation=keep_answer", "--set", "data.holdout_size=20"]
    assert "prepared data written" in verb("prep", str(SMOKE), *args)
    data.write_text("".join(lines[:150]))
    output = verb("prep", str(SMOKE), *args)
    assert "prepared data written" in output and "kept for training" in output
    assert status(run_dir)["stages"]["prep"]["summary"] == {"rows_kept": 130, "rows_read": 150}
    verb("train", str(SMOKE), *args)
    before = {p: p.read_bytes() for p in (run_dir / "data").rglob("*") if p.is_file()}
    data.write_text("".join(lines[:120]))
    for command in ("prep", "run"):
        refused = verb(command, str(SMOKE), *args, "--set", "artifacts.destinations=[]", code=1)
        assert f"error: the data of `data.dataset` `{data}` (or the `data`/tokenizer settings) changed since the " \
               f"model in `{run_dir}` was trained on it" in refused
        assert "Traceback" not in refused
    assert {p: p.read_bytes() for p in (run_dir / "data").rglob("*") if p.is_file()} == before


def test_one_process_per_run_dir_kill_9_frees_it_and_logs_continue_without_repeats(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["--set", f"artifacts.run_dir={run_dir}", "--set", "train.max_steps=400", "--set", "train.save_every_steps=10",
            "--set", "train.log_every_steps=1"]
    verb("prep", str(SMOKE), *args)
    first = dream_job("train", str(SMOKE), *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(run_dir / "checkpoints" / "step-000010" / "COMPLETE", first)
    second = verb("train", str(SMOKE), *args, code=1)
    assert f"error: run dir `{run_dir}` is in use by process {first.pid} on host `" in second
    assert "Traceback" not in second
    assert status(run_dir)["in_use_by"].startswith(f"process {first.pid} on host `")
    # Kill a few steps past the checkpoint at 10: those steps are logged, then lost with the kill.
    deadline = time.monotonic() + 120
    while len((run_dir / "logs" / "metrics.jsonl").read_bytes().splitlines()) < 13 and time.monotonic() < deadline:
        time.sleep(0.01)
    kill_tree(first.pid)
    first.wait()
    told = status(run_dir)
    assert told["in_use_by"] is None
    assert told["stages"]["train"]["outcome"] == "interrupted"
    killed_at = told["step"]
    with (run_dir / "logs" / "metrics.jsonl").open("ab") as f:  # and a line torn inside a UTF-8 character
        f.write('{"step": 999, "note": "é'.encode()[:-1])
    assert status(run_dir)["step"] == killed_at  # status skips the torn line
    finish = [*args, "--set", "train.max_steps=30"]  # the same run, now to an end within the test's time
    done = verb("train", str(SMOKE), *finish)
    assert "trained 30 of 30 steps" in done
    metrics, log = logged_steps(run_dir)
    assert metrics == log == list(range(1, 31))
    # A finished training re-entered (torn tail again) reports its loss and changes nothing.
    with (run_dir / "logs" / "metrics.jsonl").open("ab") as f:
        f.write(b'{"step": 31')
    again = verb("train", str(SMOKE), *finish)
    assert "trained 30 of 30 steps" in again
    assert logged_steps(run_dir)[0] == list(range(1, 31))


def test_status_tells_what_the_verbs_did(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["--set", f"artifacts.run_dir={run_dir}", "--set", "train.max_steps=4"]
    # Before anything ran, the run dir does not exist: a sentence and exit 1 (issue 25), not "not run".
    missing = verb("status", str(SMOKE), "--set", f"artifacts.run_dir={run_dir}", code=1)
    assert f"error: run dir `{run_dir}` does not exist: nothing of job `smoke` has run there" in missing
    verb("prep", str(SMOKE), *args)
    verb("train", str(SMOKE), *args)
    told = status(run_dir)
    assert told["run_id"] == "smoke" and told["step"] == 4
    assert told["stages"]["prep"]["outcome"] == told["stages"]["train"]["outcome"] == "done"
    assert told["stages"]["prep"]["verb"] == "dream-job prep" and told["stages"]["train"]["verb"] == "dream-job train"
    assert told["stages"]["train"]["summary"]["steps"] == 4
    assert told["stopped"] == "stage eval has not run yet"
    table = verb("status", str(SMOKE), *args)
    assert "run smoke in" in table and "not run" in table and "why not finished" in table
