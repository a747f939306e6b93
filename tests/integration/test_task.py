"""`dream-job task` (sky.yaml's `run`): the carried spec and its digest, the caps, the start count.

The state tests run against a real S3 server (SeaweedFS on loopback, `tests/s3server.py`), a
`file://` folder and the Hub stand-in of `test_artifacts_hub.py` (the real huggingface_hub client); the
CLI tests run `python -m dream_job task` as SkyPilot's run script would,
with SkyPilot's env. Digests are checked with coreutils' `sha256sum`, not the module's own code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from dream_job.launch.payload import PayloadError, read_payload, spec_digest, spec_text
from dream_job.launch.task import TaskError, begin, cap_seconds, max_starts, run_capped, state_root
from dream_job.spec import load_spec
from tests.conftest import REPO
from tests.integration.test_artifacts_hub import HubStandIn, hub  # noqa: F401  (fixture)
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server

pytest_plugins = ["tests.s3server"]

JOBS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "jobs").glob("*.yaml"))


def sha256sum(text: str) -> str:
    return subprocess.run(["sha256sum"], input=text.encode(), capture_output=True, check=True).stdout.split()[0].decode()


# --- the payload -----------------------------------------------------------------------------


@pytest.mark.parametrize("job", JOBS)
def test_spec_text_round_trips_every_shipped_job(in_repo: Path, tmp_path: Path, job: str) -> None:
    spec = load_spec(job, ["artifacts.destinations=[s3://b/p]", "train.learning_rate=3.0e-05"])
    text = spec_text(spec)
    (tmp_path / "job.yaml").write_text(text, encoding="utf-8")
    again = load_spec(tmp_path / "job.yaml")
    assert again == spec and spec_text(again) == text
    assert again.train.learning_rate == 3.0e-05 and again.artifacts.destinations == ["s3://b/p"]
    assert spec_digest(text) == sha256sum(text)


def test_equal_specs_give_one_text_and_a_set_changes_it(in_repo: Path) -> None:
    plain = spec_text(load_spec("jobs/smoke.yaml"))
    assert spec_text(load_spec("jobs/smoke.yaml", ["train.epochs=100"])) == plain  # smoke.yaml says epochs: 100
    assert spec_text(load_spec("jobs/smoke.yaml", ["train.epochs=101"])) != plain


def test_payload_is_checked_against_its_digest(in_repo: Path) -> None:
    text = spec_text(load_spec("jobs/smoke.yaml"))
    digest = sha256sum(text)
    assert read_payload({"DREAM_JOB_SPEC": text, "DREAM_JOB_SPEC_SHA256": digest}) == text
    assert read_payload({"JOB": "jobs/smoke.yaml"}) is None  # a hand-written launch: its job file runs
    tampered = text.replace("max_cost_yuan: 1.0", "max_cost_yuan: 900.0")
    assert tampered != text
    with pytest.raises(PayloadError) as error:
        read_payload({"DREAM_JOB_SPEC": tampered, "DREAM_JOB_SPEC_SHA256": digest})
    assert error.value.exit_code == 1
    assert error.value.message == (f"the job that reached this machine (sha256 {sha256sum(tampered)[:12]}...) is not "
                                   f"the one that was priced (`DREAM_JOB_SPEC_SHA256={digest[:12]}...`); nothing was "
                                   "run")
    with pytest.raises(PayloadError, match="no `DREAM_JOB_SPEC`"):
        read_payload({"DREAM_JOB_SPEC_SHA256": digest})
    with pytest.raises(PayloadError, match="without `DREAM_JOB_SPEC_SHA256`"):
        read_payload({"DREAM_JOB_SPEC": text})


# --- the caps --------------------------------------------------------------------------------


def test_cap_is_budget_hours_else_what_the_budget_buys_else_refused(in_repo: Path) -> None:
    spec = load_spec("jobs/dream-s1k.yaml", ["budget.max_cost_yuan=100", "budget.cny_per_usd=7.1"])
    assert cap_seconds(spec, {"BUDGET_HOURS": "2.5", "DREAM_JOB_USD_PER_HOUR": "3"})[0] == 9000.0
    # ¥100 / 7.1 / $2 per hour = 422.5 min, 422 whole minutes; less the 15-minute shutdown grace (600 s
    # SIGTERM -> SIGKILL, 300 s for the last upload) 407 min = 6.783 h, rounded down to 6.78 h = 24408 s,
    # as the launch's `BUDGET_HOURS` leaves it.
    seconds, source = cap_seconds(spec, {"BUDGET_HOURS": "", "DREAM_JOB_USD_PER_HOUR": "2"})
    assert seconds == pytest.approx(24408)
    assert source == "`budget.max_cost_yuan` ¥100 at `DREAM_JOB_USD_PER_HOUR=2`"
    for bare in ({}, {"BUDGET_HOURS": "0", "DREAM_JOB_USD_PER_HOUR": "0"}):
        with pytest.raises(TaskError) as error:
            cap_seconds(spec, bare)
        assert error.value.message == ("this task has no wall-clock cap (`BUDGET_HOURS`) and no price "
                                       "(`DREAM_JOB_USD_PER_HOUR`), so nothing would stop the machine; not started")
    with pytest.raises(TaskError, match="`BUDGET_HOURS=six` is not a number"):
        cap_seconds(spec, {"BUDGET_HOURS": "six"})
    with pytest.raises(TaskError, match="`BUDGET_HOURS=-1` is negative"):
        cap_seconds(spec, {"BUDGET_HOURS": "-1", "DREAM_JOB_USD_PER_HOUR": "2"})


def test_max_starts_defaults_when_unset_and_refuses_nonsense() -> None:
    assert max_starts({}) == max_starts({"DREAM_JOB_MAX_STARTS": ""}) == 10
    assert max_starts({"DREAM_JOB_MAX_STARTS": "3"}) == 3
    for bad in ("0", "2.5", "-1"):
        with pytest.raises(TaskError, match=f"`DREAM_JOB_MAX_STARTS={bad}` must be a whole number of at least 1"):
            max_starts({"DREAM_JOB_MAX_STARTS": bad})


def test_run_capped_passes_the_exit_code_and_stops_at_the_cap() -> None:
    assert run_capped(["sh", "-c", "exit 3"], 30) == 3
    start = time.monotonic()
    assert run_capped(["sleep", "30"], 1.0) is None
    assert time.monotonic() - start < 10
    # A job that ignores SIGTERM is killed `kill_after_s` later, with its children (one process group).
    start = time.monotonic()
    assert run_capped(["sh", "-c", "trap '' TERM; sleep 30 & wait"], 0.5, kill_after_s=1.0) is None
    assert time.monotonic() - start < 10


# --- the start count, where the run's state lives --------------------------------------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


def test_recoveries_keep_the_first_start_on_s3_and_the_start_past_the_limit_is_refused(
        s3_server: S3Server, aws_env: None) -> None:
    bucket = s3_server.create_bucket(f"t-{uuid.uuid4().hex[:12]}")
    where = f"s3://{bucket}/runs"
    first = begin(where, "run-1", now=1000.0, limit=3, writer=True, s3_endpoint_url=s3_server.endpoint_url)
    assert (first.first_started_at, first.starts) == (1000.0, 1)
    # A recovery on a new machine: the same store, a later clock.
    second = begin(where, "run-1", now=5000.0, limit=3, writer=True, s3_endpoint_url=s3_server.endpoint_url)
    assert (second.first_started_at, second.starts) == (1000.0, 2)
    # Node 1 of the same start reads, never counts.
    other_node = begin(where, "run-1", now=5001.0, limit=3, writer=False, s3_endpoint_url=s3_server.endpoint_url)
    assert (other_node.first_started_at, other_node.starts) == (1000.0, 2)
    assert begin(where, "run-1", now=6000.0, limit=3, writer=True, s3_endpoint_url=s3_server.endpoint_url).starts == 3
    with pytest.raises(TaskError) as error:
        begin(where, "run-1", now=7000.0, limit=3, writer=True, s3_endpoint_url=s3_server.endpoint_url)
    assert error.value.message == ("run `run-1` has already started 3 times (`DREAM_JOB_MAX_STARTS=3`): it keeps "
                                   "failing or being preempted, so it is not started again")
    stored = s3_server.client().get_object(Bucket=bucket, Key="runs/run-1/task.json")["Body"].read()
    assert json.loads(stored) == {"first_started_at": 1000.0, "starts": 3}
    # Another run under the same prefix counts on its own.
    assert begin(where, "run-2", now=8000.0, limit=3, writer=True, s3_endpoint_url=s3_server.endpoint_url).starts == 1


def test_state_lives_on_the_mount_else_the_first_s3_or_file_destination(in_repo: Path, tmp_path: Path) -> None:
    spec = load_spec("jobs/smoke.yaml", ["artifacts.destinations=[hf://you/x, s3://b/p/, file:///d]"])
    assert state_root(spec, Path("/runs"), mounted=True) == "file:///runs"
    assert state_root(spec, tmp_path, mounted=False) == "s3://b/p"
    only_hub = load_spec("jobs/smoke.yaml", ["artifacts.destinations=[hf://you/x]"])
    assert state_root(only_hub, tmp_path, mounted=False) == "hf://you/x"
    nowhere = load_spec("jobs/smoke.yaml", ["artifacts.destinations=[]"])
    assert state_root(nowhere, tmp_path, mounted=False) == tmp_path.as_uri()


def test_a_hub_only_job_keeps_its_start_in_the_model_repo(hub: HubStandIn) -> None:
    # The cheapest shipped job publishes to `hf://` only, on a cloud without a bucket mount.
    first = begin("hf://you/dream-s1k-lora-4090", "run-1", now=1000.0, limit=2, writer=True)
    second = begin("hf://you/dream-s1k-lora-4090", "run-1", now=5000.0, limit=2, writer=True)
    assert (first.starts, second.starts, second.first_started_at) == (1, 2, 1000.0)
    with pytest.raises(TaskError, match="has already started 2 times"):
        begin("hf://you/dream-s1k-lora-4090", "run-1", now=6000.0, limit=2, writer=True)
    repo = hub.repos["you/dream-s1k-lora-4090"]
    assert json.loads(repo["files"][".dream-job/run-1/task.json"]) == {"first_started_at": 1000.0, "starts": 2}
    # Created private on the first start, as a publish would (each write asks again: `exist_ok`).
    assert hub.created == 2 * [{"name": "dream-s1k-lora-4090", "organization": "you", "visibility": "private",
                                "type": "model"}]


# --- `dream-job task`, as sky.yaml's run script calls it -------------------------------------


def _task(env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DREAM_JOB_", "SKYPILOT_"))}
    return subprocess.run([sys.executable, "-m", "dream_job", "task"], cwd=REPO, capture_output=True, text=True,
                          env={**base, "HOME": str(home), **env}, timeout=300, check=False)


def _payload(*overrides: str) -> dict[str, str]:
    text = spec_text(load_spec(REPO / "jobs" / "smoke.yaml", list(overrides)))
    return {"DREAM_JOB_SPEC": text, "DREAM_JOB_SPEC_SHA256": sha256sum(text)}


def test_task_refuses_a_tampered_spec_before_anything_runs(tmp_path: Path) -> None:
    payload = _payload(f"artifacts.destinations=[{(tmp_path / 'dest').as_uri()}]")
    env = {**payload, "DREAM_JOB_SPEC": payload["DREAM_JOB_SPEC"].replace("epochs: 100", "epochs: 10"),
           "DREAM_JOB_RUN_ID": "r1", "BUDGET_HOURS": "1", "DREAM_JOB_USD_PER_HOUR": "1"}
    result = _task(env, tmp_path / "home")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: the job that reached this machine (sha256 ")
    assert "is not the one that was priced" in result.stderr
    assert not (tmp_path / "dest").exists() and not (tmp_path / "home" / "dream-job-runs").exists()


def test_task_without_cap_or_price_is_refused(tmp_path: Path) -> None:
    env = {**_payload(f"artifacts.destinations=[{(tmp_path / 'dest').as_uri()}]"), "DREAM_JOB_RUN_ID": "r1", "BUDGET_HOURS": "", "DREAM_JOB_USD_PER_HOUR": "0"}
    result = _task(env, tmp_path / "home")
    assert result.returncode == 1
    assert result.stderr.startswith("error: this task has no wall-clock cap (`BUDGET_HOURS`) and no price "
                                    "(`DREAM_JOB_USD_PER_HOUR`), so nothing would stop the machine; not started\n")


def test_task_runs_the_carried_spec_not_a_job_file(tmp_path: Path) -> None:
    # `JOB` names a file the machine does not have: the carried spec runs, from its own copy.
    env = {**_payload("name=carried-job", f"artifacts.destinations=[{(tmp_path / 'dest').as_uri()}]"),
           "JOB": "jobs/not-here.yaml", "DREAM_JOB_RUN_ID": "r1", "BUDGET_HOURS": "0.001",
           "DREAM_JOB_USD_PER_HOUR": "1"}  # 3.6 s: the cap stops it early
    home = tmp_path / "home"
    result = _task(env, home)
    assert "dream-job task: run `r1` of `carried-job` (sha256 " in result.stderr
    written = home / ".dream-job" / "r1" / "job.yaml"
    assert sha256sum(written.read_text(encoding="utf-8")) == env["DREAM_JOB_SPEC_SHA256"]
    assert result.returncode == 1
    assert "`dream-job run` of run `r1` stopped at the wall-clock cap (`BUDGET_HOURS=0.001`)" in result.stderr


def test_second_recovery_sees_the_first_start_and_the_start_past_the_limit_is_refused(
        s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.create_bucket(f"t-{uuid.uuid4().hex[:12]}")
    payload = _payload(f"artifacts.destinations=[s3://{bucket}/smoke]",
                       f"artifacts.s3_endpoint_url={s3_server.endpoint_url}")
    env = {**payload, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "SKYPILOT_TASK_ID": "sky-managed-1", "BUDGET_HOURS": "0.002", "DREAM_JOB_USD_PER_HOUR": "1",
           "DREAM_JOB_MAX_STARTS": "2"}
    first = _task(env, tmp_path / "machine-1")
    assert first.returncode == 1 and "stopped at the wall-clock cap" in first.stderr, first.stderr
    key = "smoke/sky-managed-1/task.json"
    started = json.loads(s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    assert started["starts"] == 1 and time.time() - started["first_started_at"] < 120
    # A recovery on a fresh machine (new HOME): the cap counts from the first start, so it is used up.
    second = _task(env, tmp_path / "machine-2")
    assert second.returncode == 1
    assert second.stderr.startswith("error: the wall-clock cap (`BUDGET_HOURS=0.002`, 0.00 h) of run "
                                    "`sky-managed-1` is used up since its first start; not started again\n")
    third = _task({**env, "BUDGET_HOURS": "5"}, tmp_path / "machine-3")
    assert third.returncode == 1
    assert third.stderr.startswith("error: run `sky-managed-1` has already started 2 times "
                                   "(`DREAM_JOB_MAX_STARTS=2`): it keeps failing or being preempted, so it is not "
                                   "started again\n")
    after = json.loads(s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    assert after == {"first_started_at": started["first_started_at"], "starts": 2}
