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
