"""The run-dir contract: torn JSONL lines, the atomic writer on a full disk, stage records, the OS lock."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dream_job import rundir
from dream_job.errors import DiskFullError, DreamJobError, RunDirBusyError
from tests.conftest import REPO

HOLD_LOCK = """
import sys, time
from pathlib import Path
from dream_job.rundir import locked_run_dir
with locked_run_dir(Path(sys.argv[1]), verb="dream-job train"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_read_jsonl_skips_and_repairs_a_line_torn_inside_a_utf8_character(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    whole = [{"id": "a", "output": "café"}, {"id": "b", "output": "naïve"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in whole)
    torn = json.dumps({"id": "c", "output": "résumé"}, ensure_ascii=False).encode()
    cut = torn.index("é".encode()) + 1  # inside the two bytes of `é`
    path.write_bytes(text.encode() + torn[:cut])
    assert rundir.read_jsonl(path) == whole
    assert path.read_bytes() == text.encode() + torn[:cut]  # reading alone changes nothing
    assert rundir.read_jsonl(path, repair=True) == whole
    assert path.read_bytes() == text.encode()
    rundir.append_line(path, json.dumps({"id": "d"}) + "\n")
    assert [r["id"] for r in rundir.read_jsonl(path)] == ["a", "b", "d"]


def test_read_jsonl_keeps_a_last_record_without_newline_and_appends_after_it(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}')
    assert rundir.read_jsonl(path, repair=True) == [{"step": 1}, {"step": 2}]
    rundir.append_line(path, '{"step": 3}\n')
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n{"step": 3}\n'
    assert rundir.read_jsonl(tmp_path / "missing.jsonl") == []


def test_a_full_disk_is_named_and_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cost.json"
    target.write_text("old\n")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DiskFullError) as info:
        rundir.write_text_atomically(target, "new\n")
    assert info.value.message == f"disk full at `{target}`"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cost.json"]
    assert target.read_text() == "old\n"


def test_stage_records_round_trip_and_old_records_read_as_absent(tmp_path: Path) -> None:
    record = rundir.StageRecord(stage="train", fingerprint="f" * 64, inputs={"upstream": "d"}, outcome="done",
                                output_digest="e", summary={"steps": 3}, verb="dream-job train")
    rundir.write_stage_record(tmp_path, record)
    assert rundir.read_stage_record(tmp_path, "train") == record
    # A record of dream-job before issue 15 (no version, no outcome): the stage simply runs again.
    rundir.stage_record_path(tmp_path, "prep").write_text(json.dumps({"stage": "prep", "inputs_hash": "x"}))
    assert rundir.read_stage_record(tmp_path, "prep") is None
    rundir.stage_record_path(tmp_path, "eval").write_bytes(b'{"stage": "ev')  # torn
    assert rundir.read_stage_record(tmp_path, "eval") is None


def test_export_digest_changes_when_the_export_is_rewritten(tmp_path: Path) -> None:
    export = tmp_path / "export"
    assert rundir.export_digest(export) is None
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"w" * 10)
    assert rundir.export_digest(export) is None  # no `dream_job_export.json`: not a finished export
    (export / rundir.EXPORT_INFO_NAME).write_text('{"exported_at": "2026-12-05T10:00:00+00:00"}')
    first = rundir.export_digest(export)
    assert first == rundir.export_digest(export)
    (export / rundir.EXPORT_INFO_NAME).write_text('{"exported_at": "2026-12-05T11:00:00+00:00"}')
    assert rundir.export_digest(export) not in (None, first)


def test_the_lock_is_reentrant_in_one_process_and_inherited_by_children(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with rundir.locked_run_dir(run, verb="dream-job run"):
        with rundir.locked_run_dir(run, verb="dream-job train"):  # the pipeline calling a stage
            assert rundir.lock_holder(run) is not None
        child = subprocess.run([sys.executable, "-c", HOLD_LOCK.replace("time.sleep(60)", "pass"), str(run)],
                               cwd=REPO, capture_output=True, text=True, timeout=60,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
        assert child.returncode == 0 and "locked" in child.stdout, child.stderr  # a torchrun worker of `run`
    assert rundir.lock_holder(run) is None


def test_a_second_process_is_refused_with_the_holders_pid_and_host_and_kill_9_frees_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirBusyError) as info:
            with rundir.locked_run_dir(run, verb="dream-job train"):
                pass
        import socket

        assert info.value.message.startswith(f"run dir `{run}` is in use by process {holder.pid} on host "
                                             f"`{socket.gethostname()}` (`dream-job train`, since ")
        assert info.value.exit_code == 1
        assert rundir.lock_holder(run).startswith(f"process {holder.pid} ")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 10
    while rundir.lock_holder(run) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    with rundir.locked_run_dir(run, verb="dream-job train"):  # no stale lock after kill -9
        pass


def test_a_run_dir_that_is_a_file_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("x")
    with pytest.raises(DreamJobError) as info:
        with rundir.locked_run_dir(tmp_path / "run", verb="dream-job prep"):
            pass
    assert info.value.message == f"run dir `{tmp_path / 'run'}` is a file, not a folder"


def test_an_eval_items_file_torn_inside_a_utf8_character_is_read_and_repaired(tmp_path: Path) -> None:
    from dream_job.eval.records import read_items

    path = tmp_path / "items-final-s1k_holdout.jsonl"
    done = {"id": "1", "key": "k", "gold": "5", "output": "réponse 5"}
    torn = json.dumps({"id": "2", "key": "k", "gold": "7", "output": "réponse"}, ensure_ascii=False).encode()
    path.write_bytes(json.dumps(done, ensure_ascii=False).encode() + b"\n" + torn[: torn.index("é".encode()) + 1])
    assert read_items(path, key="k", golds={"1": "5", "2": "7"}) == {"1": done}
    assert path.read_bytes() == json.dumps(done, ensure_ascii=False).encode() + b"\n"  # later runs append cleanly


def test_an_interrupted_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "accuracy.png"
    target.write_bytes(b"old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rundir.write_atomically(target, half_then_fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy.png"] and target.read_bytes() == b"old"
    rundir.write_atomically(target, lambda tmp: tmp.write_bytes(b"new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy.png"] and target.read_bytes() == b"new"
    rundir.write_json_atomically(tmp_path / "run.json", {"run_id": "r", "job": "café"}, indent=None,
                                 ensure_ascii=False)
    assert (tmp_path / "run.json").read_bytes() == '{"run_id": "r", "job": "café"}\n'.encode()
    # The temp name is hidden and ends with the suffix every manifest and stale-file sweep knows.
    assert rundir.temp_path(target) == tmp_path / f".accuracy.png.{os.getpid()}.tmp-dream-job"


def test_a_folder_is_swapped_in_whole_and_a_failed_write_keeps_the_old_one(tmp_path: Path) -> None:
    data = tmp_path / "run" / "data"
    rundir.write_dir_atomically(data, lambda folder: (folder / "a.txt").write_text("1"))
    assert sorted(p.name for p in data.iterdir()) == ["a.txt"]
    stale = data.parent / ".data.999.tmp-dream-job"  # left by a process killed mid-write
    stale.mkdir()

    def fail(folder: Path) -> None:
        (folder / "b.txt").write_text("2")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError) as info:
        rundir.write_dir_atomically(data, fail)
    assert info.value.message == f"disk full at `{data}`"
    assert sorted(p.name for p in data.parent.iterdir()) == ["data"] and (data / "a.txt").read_text() == "1"
    rundir.write_dir_atomically(data, lambda folder: (folder / "b.txt").write_text("2"))
    assert sorted(p.name for p in data.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in data.parent.iterdir()) == ["data"]  # no `.data.old` left either


def test_only_checkpoints_with_their_marker_count(tmp_path: Path) -> None:
    for name, marked in (("step-000120", True), ("step-000040", True), ("step-000200", False),
                         (".step-000240.partial", False), ("step-x", True)):
        (tmp_path / name).mkdir()
        if marked:
            (tmp_path / name / rundir.COMPLETE_NAME).write_text("{}")
    assert rundir.complete_checkpoints(tmp_path) == [(40, tmp_path / "step-000040"), (120, tmp_path / "step-000120")]
    assert rundir.complete_checkpoints(tmp_path / "missing") == []
    assert rundir.checkpoint_name(120) == "step-000120"
    assert rundir.partial_checkpoint_name(120) == ".step-000120.partial"
    assert rundir.PARTIAL_STEP_RE.fullmatch(rundir.partial_checkpoint_name(7))


def test_the_run_id_is_the_launchers_then_skypilots_then_the_job_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from dream_job.spec import JobSpec

    spec = JobSpec.model_validate({"name": "smoke"})
    monkeypatch.delenv("DREAM_JOB_RUN_ID", raising=False)
    monkeypatch.delenv("SKYPILOT_TASK_ID", raising=False)
    assert rundir.run_id(spec) == "smoke"
    monkeypatch.setenv("SKYPILOT_TASK_ID", "sky-managed-1")
    assert rundir.run_id(spec) == "sky-managed-1"
    monkeypatch.setenv("DREAM_JOB_RUN_ID", "smoke-20261205-130000")
    assert rundir.run_id(spec) == "smoke-20261205-130000"
    assert [bool(rundir.RUN_NAME_RE.fullmatch(n)) for n in ("smoke-1.a_b", "-x", "a/b", "a\n")] == [
        True, False, False, False]
