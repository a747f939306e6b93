"""What a user does to the process: Ctrl-C, SIGTERM, a closed pipe, a laptop install, a full disk.

Each ends in one line and a user exit code (130 after Ctrl-C, 3 after SIGTERM, 1 otherwise),
with no traceback and nothing already done lost (issue 15).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dream_job.cli import app
from tests.conftest import REPO
from tests.integration.test_train import SMOKE, dream_job, wait_for

runner = CliRunner()


def one_error(output: str) -> str:
    assert "Traceback" not in output and "a bug in dream-job" not in output, output
    assert "Exception ignored" not in output, output  # a stop that landed in a `__del__` is not an error
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


def interrupt(process: subprocess.Popen, sig: int) -> tuple[int, str]:
    process.send_signal(sig)
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


@pytest.fixture(scope="module")
def big_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke rows 40 times over, each copy's questions numbered (prep refuses a hold-out of repeated
    questions): prep takes seconds, long enough to be interrupted."""
    path = tmp_path_factory.mktemp("big") / "rows.jsonl"
    rows = [json.loads(line) for line in (REPO / "jobs" / "assets" / "smoke" / "s1k-smoke.jsonl").read_text().splitlines()
            if line.strip()]
    path.write_text("".join(json.dumps({**row, "question": f"{row['question']} (copy {copy})"}) + "\n"
                            for copy in range(40) for row in rows))
    return path


@pytest.mark.parametrize("delay_s", [0.5, 2.0, 3.5])
def test_ctrl_c_during_prep_exits_130_with_one_line_and_writes_no_data(delay_s: float, tmp_path: Path,
                                                                      big_rows: Path) -> None:
    run_dir = tmp_path / "run"
    # The prose rows with the data settings they were written for (the smoke job's own would drop them all).
    process = dream_job("prep", str(SMOKE), "--set", f"data.dataset={big_rows}", "--set", f"artifacts.run_dir={run_dir}",
                        "--set", "data.max_length=256", "--set", "data.truncation=keep_answer",
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Counted from the run-dir lock, i.e. once the CLI runs: a Ctrl-C during Python's own start-up is the
    # interpreter's (no dream-job code has run), and a loaded machine can take seconds to get there.
    wait_for(run_dir / ".lock", process)
    time.sleep(delay_s)
    code, output = interrupt(process, signal.SIGINT)
    if code == 0:
        pytest.skip("prep finished before the Ctrl-C on this machine")
    assert code == 130, output
    assert one_error(output) == "error: interrupted by Ctrl-C; work finished so far is kept"
    assert sorted(p.name for p in run_dir.iterdir()) in ([".lock"], [".lock", "stages"])  # no half-written data


@pytest.mark.slow
def test_ctrl_c_during_training_saves_at_the_step_boundary_and_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["--set", f"artifacts.run_dir={run_dir}", "--set", "train.max_steps=140", "--set", "train.save_every_steps=50"]
    subprocess.run([sys.executable, "-m", "dream_job", "prep", str(SMOKE), *args], cwd=REPO, check=True,
                   capture_output=True)
    process = dream_job("train", str(SMOKE), *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(run_dir / "logs" / "metrics.jsonl", process)
    code, output = interrupt(process, signal.SIGINT)
    assert code == 130, output
    error = one_error(output)
    assert error.startswith("error: training stopped by Ctrl-C after saving step ") and error.endswith(" of 140")
    step = int(error.split("saving step ")[1].split(" ")[0])
    assert (run_dir / "checkpoints" / f"step-{step:06d}" / "COMPLETE").is_file()
    told = json.loads(subprocess.run([sys.executable, "-m", "dream_job", "status", str(SMOKE), *args, "--json"],
                                     cwd=REPO, capture_output=True, text=True, check=True).stdout)
    assert told["stages"]["train"]["outcome"] == "interrupted" and told["step"] == step


def start_eval(run_dir: Path, *, limit: int, steps: int, processes: int = 1) -> tuple[list[str], subprocess.Popen]:
    """Prepare the smoke job in `run_dir`, then start `dream-job eval --model base` with the reference
    sampler (`steps` forwards per item, one item per batch); return its `--set` args and the process."""
    args = ["--set", f"artifacts.run_dir={run_dir}", "--set", f"eval.limit={limit}", "--set", "eval.batch_size=1",
            "--set", "eval.sampler.mode=reference", "--set", f"eval.sampler.gen_length={steps}",
            "--set", f"eval.sampler.steps={steps}", "--set", f"eval.processes={processes}"]
    subprocess.run([sys.executable, "-m", "dream_job", "prep", str(SMOKE), *args], cwd=REPO, check=True,
                   capture_output=True)
    process = dream_job("eval", str(SMOKE), "--model", "base", *args, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
    return args, process


def eval_again(args: list[str]) -> subprocess.CompletedProcess:
    """Run the same evaluation to its end (it must succeed)."""
    resumed = subprocess.run([sys.executable, "-m", "dream_job", "eval", str(SMOKE), "--model", "base", *args],
                             cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    return resumed


def shard_processes(run_dir: Path) -> list[str]:
    """The `dream-job eval --shard` processes working in `run_dir`."""
    found = subprocess.run(["pgrep", "-af", f"dream_job eval {run_dir}/.*--shard"], capture_output=True, text=True)
    return found.stdout.splitlines()


def test_sigterm_during_eval_keeps_the_items_done_and_exits_3(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # The reference sampler (48 forwards per item): the smoke job's fast one can finish 20 items
    # before the signal lands.
    args, process = start_eval(run_dir, limit=20, steps=48)
    items = run_dir / "eval" / "items-base-s1k_holdout.jsonl"
    wait_for(items, process, timeout_s=300)
    code, output = interrupt(process, signal.SIGTERM)
    assert code == 3, output
    assert one_error(output) == "error: evaluation stopped by SIGTERM; the items decoded so far are saved"
    saved = [json.loads(line)["id"] for line in items.read_text().splitlines()]
    assert saved
    resumed = eval_again(args)
    assert f"reusing {len(saved)} of {len(saved)} items" not in resumed.stderr  # nothing was thrown away
    assert len(items.read_text().splitlines()) == 20


@pytest.mark.slow
def test_sigterm_during_eval_in_two_processes_stops_both_and_keeps_their_batches(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args, process = start_eval(run_dir, limit=20, steps=48, processes=2)
    parts = run_dir / "eval" / "parts"
    wait_for(parts / "items-base-s1k_holdout.0.jsonl", process, timeout_s=300)
    code, output = interrupt(process, signal.SIGTERM)
    assert code == 3, output
    assert one_error(output) == "error: evaluation stopped by SIGTERM; the items decoded so far are saved"
    assert shard_processes(run_dir) == []  # none left behind
    saved = sorted(json.loads(line)["id"] for part in parts.glob("items-*.jsonl")
                   for line in part.read_text().splitlines() if line.endswith("}"))
    assert saved and not (parts / "job.json").exists()
    resumed = eval_again(args)
    decoded = [int(m) for m in re.findall(r"s1k_holdout: decoded (\d+) items", resumed.stderr)]
    assert sum(decoded) == 20 - len(saved)  # the killed run's batches were kept, not decoded again
    items = run_dir / "eval" / "items-base-s1k_holdout.jsonl"
    assert len(items.read_text().splitlines()) == 20 and not parts.exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "kill -9"])
def test_ctrl_c_or_kill_of_a_two_process_eval_leaves_no_process(how: str, tmp_path: Path) -> None:
    """Ctrl-C (the terminal signals the whole group) gives one error line, not one per process; a parent
    killed outright takes its processes with it (they would hold GPUs after the lock is gone)."""
    run_dir = tmp_path / "run"
    # 40 items of 96 steps: each process has ~10 s of decoding left when its parent goes.
    args, process = start_eval(run_dir, limit=40, steps=96, processes=2)
    wait_for(run_dir / "eval" / "parts" / "items-base-s1k_holdout.1.jsonl", process, timeout_s=300)
    assert len(shard_processes(run_dir)) == 2
    os.killpg(process.pid, signal.SIGINT) if how == "ctrl-c" else process.kill()
    deadline = time.monotonic() + 3  # before the processes could finish their share
    while shard_processes(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert shard_processes(run_dir) == []
    output, _ = process.communicate(timeout=120)  # EOF once every process holding the pipe is gone
    if how == "ctrl-c":
        assert process.returncode == 130, output
        assert one_error(output) == "error: interrupted by Ctrl-C; work finished so far is kept"
    eval_again(args)
    assert len((run_dir / "eval" / "items-base-s1k_holdout.jsonl").read_text().splitlines()) == 40


def test_a_closed_pipe_is_not_a_bug() -> None:
    result = subprocess.run(f"{sys.executable} -m dream_job schema | head -c 10", shell=True, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout == "{\n  \"$defs"
    assert result.stderr == ""


def test_a_laptop_install_names_the_missing_extra(tmp_path: Path, in_repo: Path, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails as without the extra
    result = runner.invoke(app, ["prep", "jobs/smoke.yaml", "--set", f"artifacts.run_dir={tmp_path / 'run'}"])
    assert result.exit_code == 1, result.output
    assert one_error(result.output) == ("error: this command needs the package `datasets`, which this install of "
                                        "dream-job lacks")
    assert "`make setup` (CPU torch), or install torch, then `pip install -e '.[container]'`" in result.output


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 3 MiB tmpfs: room for the prepared data and one smoke checkpoint, not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_named_and_leaves_no_temp_files(small_disk: Path) -> None:
    run_dir = small_disk / "run"
    # The 158k-parameter tiny model: one checkpoint (weights + AdamW states) fits the 3 MiB disk, two do not.
    args = ["--set", f"artifacts.run_dir={run_dir}", "--set", "train.max_steps=12", "--set", "train.save_every_steps=4",
            "--set", "model.base=jobs/assets/tiny-dream", "--set", "model.init=random"]
    subprocess.run([sys.executable, "-m", "dream_job", "prep", str(SMOKE), *args], cwd=REPO, check=True,
                   capture_output=True)
    for _ in range(2):  # and a retry on the still-full disk says the same
        result = subprocess.run([sys.executable, "-m", "dream_job", "train", str(SMOKE), *args], cwd=REPO,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr
        assert one_error(result.stderr).startswith(f"error: disk full at `{run_dir / 'checkpoints'}` while saving a "
                                                   "checkpoint")
        assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial")]
    assert (run_dir / "checkpoints" / "step-000004" / "COMPLETE").is_file()


# --- one signal policy: a stop at every stage boundary and inside every stage (issue 25) ---------
# `DREAM_JOB_PAUSE_AT` makes the process wait at a named point (after writing a marker named like
# it) until a signal lands, so each case signals at exactly that point, with no sleeps.

QUICK_RUN = ["--set", "train.max_steps=3", "--set", "train.save_every_steps=2", "--set", "eval.limit=4",
             "--set", "eval.batch_size=2"]


@dataclass(frozen=True)
class StopCase:
    point: str
    sig: int
    error: str  # the start of the one error line
    after: Callable[[Path, Path], bool]  # (run dir, destination) -> what is on disk is as expected
    sets: tuple[str, ...] = ()
    slow: bool = True


def has(run_dir: Path, *rel: str) -> bool:
    return all((run_dir / r).exists() for r in rel)


def lacks(run_dir: Path, *rel: str) -> bool:
    return not any((run_dir / r).exists() for r in rel)


def empty(folder: Path) -> bool:
    """Nothing published (the preflight creates a `file://` destination's folder, and leaves it empty)."""
    return not folder.exists() or not any(folder.iterdir())


TERM, INT = signal.SIGTERM, signal.SIGINT
BY_TERM, BY_CTRL_C = "error: stopped by SIGTERM; ", "error: interrupted by Ctrl-C; "
STOP_CASES = [
    StopCase("preflight", TERM, BY_TERM, lambda r, d: not r.exists()),
    StopCase("after:preflight", INT, BY_CTRL_C, lambda r, d: not r.exists()),
    StopCase("prep:rows", TERM, BY_TERM, lambda r, d: lacks(r, "data")),
    StopCase("prep:write", INT, BY_CTRL_C, lambda r, d: lacks(r, "data"), slow=False),
    StopCase("after:prep", TERM, BY_TERM, lambda r, d: has(r, "data/data_report.json") and lacks(r, "checkpoints")),
    StopCase("train:build", INT, BY_CTRL_C, lambda r, d: lacks(r, "checkpoints")),
    StopCase("train:step", TERM, "error: training stopped by SIGTERM after saving step 1 of 3",
             lambda r, d: has(r, "checkpoints/step-000001/COMPLETE") and lacks(r, "export")),
    # The stop lands during the last step, after the step's own stop check: the checkpoint is saved,
    # and the export (and so evaluation and publishing) never starts.
    StopCase("train:save", INT, "error: training stopped by Ctrl-C after saving step 1 of 1",
             lambda r, d: has(r, "checkpoints/step-000001/COMPLETE") and lacks(r, "export", "eval"),
             sets=("train.max_steps=1",), slow=False),
    StopCase("train:export", TERM, BY_TERM, lambda r, d: has(r, "checkpoints/step-000003/COMPLETE")
             and lacks(r, "export", ".export.next", "eval")),
    StopCase("after:train", INT, BY_CTRL_C, lambda r, d: has(r, "export/dream_job_export.json") and lacks(r, "eval")),
    StopCase("eval:batch", TERM, "error: evaluation stopped by SIGTERM; the items decoded so far are saved",
             lambda r, d: has(r, "eval/items-base-s1k_holdout.jsonl") and lacks(r, "eval/summary.json") and empty(d)),
    StopCase("after:eval", INT, BY_CTRL_C, lambda r, d: has(r, "eval/summary.json") and empty(d),
             slow=False),
    StopCase("publish:file", TERM, BY_TERM, lambda r, d: d.is_dir() and lacks(d, "MANIFEST.sha256")),
]


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.slow] if c.slow else [],
                                               id=f"{c.point}-{signal.Signals(c.sig).name}") for c in STOP_CASES])
def test_a_stop_anywhere_in_run_is_one_sentence_keeps_what_is_done_and_the_next_run_continues(
        case: StopCase, tmp_path: Path) -> None:
    run_dir, published, markers = tmp_path / "run", tmp_path / "published", tmp_path / "markers"
    args = ["run", str(SMOKE), "--set", f"artifacts.run_dir={run_dir}", "--set",
            f"artifacts.destinations=[file://{published}]", *QUICK_RUN,
            *(a for s in case.sets for a in ("--set", s))]
    process = dream_job(*args, extra_env={"DREAM_JOB_PAUSE_AT": case.point, "DREAM_JOB_PAUSE_DIR": str(markers)},
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(markers / case.point, process)
    code, output = interrupt(process, case.sig)
    assert code == (130 if case.sig == signal.SIGINT else 3), output
    assert one_error(output).startswith(case.error), output
    assert case.after(run_dir, published), sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else output
    resumed = dream_job(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert (published / "MANIFEST.sha256").is_file()


def test_ctrl_c_while_pulling_keeps_the_destination_out_of_place_and_the_next_pull_finishes(tmp_path: Path) -> None:
    from dream_job.artifacts import publish_folder
    from tests.integration.test_artifacts import files_of, make_export

    export = make_export(tmp_path / "export")
    source = tmp_path / "source"
    publish_folder(export, f"file://{source}", run_id="r")
    dest, markers = tmp_path / "pulled", tmp_path / "markers"
    process = dream_job("pull", f"file://{source}", str(dest), extra_env={
        "DREAM_JOB_PAUSE_AT": "pull:file", "DREAM_JOB_PAUSE_DIR": str(markers)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(markers / "pull:file", process)
    code, output = interrupt(process, signal.SIGINT)
    assert code == 130, output
    assert one_error(output) == "error: interrupted by Ctrl-C; work finished so far is kept"
    assert not (dest / "MANIFEST.sha256").exists()  # nothing there looks complete
    again = subprocess.run([sys.executable, "-m", "dream_job", "pull", f"file://{source}", str(dest)], cwd=REPO,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    pulled = files_of(dest)
    assert pulled.pop("MANIFEST.sha256") == (source / "MANIFEST.sha256").read_bytes() and pulled == files_of(export)


def test_a_full_disk_reported_without_a_file_name_names_what_was_being_written(tmp_path: Path) -> None:
    """Issue 25: safetensors and torch report ENOSPC as text; the message names the export (or eval) folder."""
    from dream_job.commands.failures import known_failure
    from dream_job.rundir import locked_run_dir, writing_to

    with locked_run_dir(tmp_path / "run", verb="test"):
        with writing_to(tmp_path / "run" / "export"):
            failure = known_failure(RuntimeError("Error while serializing: IoError(No space left on device)"))
            assert failure is not None and failure.message == f"disk full at `{tmp_path / 'run' / 'export'}`"
        failure = known_failure(RuntimeError("No space left on device"))
        assert failure is not None and failure.message == f"disk full at `{tmp_path / 'run'}`"
    failure = known_failure(OSError(28, "No space left on device", str(tmp_path / "f.bin")))
    assert failure is not None and failure.message == f"disk full at `{tmp_path / 'f.bin'}`"
