"""`dream-job launch`, `logs` and `status RUN` without SkyPilot: the prompt, secrets, modes, records.

SkyPilot cannot be imported in the project's environment (click pin), so these tests patch the
one SkyPilot-facing module (`dream_job.launch.sky_api`) or the launch call and assert what
reached it; `test_launch_sky.py` runs the same path against SkyPilot itself (slow).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dream_job.cli import app
from dream_job.launch import plan_launch, sky_api
from dream_job.launch.records import save_record
from dream_job.spec import load_spec

runner = CliRunner()
JOB = "jobs/dream-s1k.yaml"
SECRET = "hf_do_not_print_me"
ON_DEMAND = ("budget.use_spot=false", "budget.clouds=[aws]", "budget.max_cost_yuan=400")  # an AWS on-demand offer


@pytest.fixture
def laptop(tmp_path: Path, in_repo: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A laptop with SkyPilot 'installed', no price catalog (the shipped snapshot), no secrets; launches recorded."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DREAM_JOB_HOME", str(tmp_path / "dream-job-home"))
    for name in ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("dream_job.launch.require_skypilot", lambda: None)
    calls: list[Any] = []

    def fake_launch(plan: Any, *, dryrun: bool = False) -> dict[str, Any]:
        calls.append((plan, dryrun))
        return {"run_id": plan.run_id}

    monkeypatch.setattr("dream_job.launch.launch", fake_launch)
    return calls


def test_launch_asks_and_a_no_launches_nothing(laptop: list[Any]) -> None:
    result = runner.invoke(app, ["launch", JOB], input="n\n")
    assert result.exit_code == 1 and laptop == []
    assert "launch? [y/N]" in result.stderr
    assert result.stderr.endswith("error: not launched: the prompt was declined\n\n"
                                  "hint: pass `--yes` to launch without asking\n")


def test_launch_shows_the_choice_and_cost_then_launches_on_yes(laptop: list[Any]) -> None:
    result = runner.invoke(app, ["launch", JOB], input="y\n")
    assert result.exit_code == 0, result.output
    (plan, dryrun), = laptop
    assert not dryrun and result.stdout.splitlines()[-1] == plan.run_id  # (the runner echoes the typed `y`)
    assert f"offer: {plan.accelerators} on {plan.cloud}" in result.stderr and f"¥{plan.cost_cny:.2f}" in result.stderr
    assert f"dream-job logs {plan.run_id}" in result.stderr


def test_launch_yes_skips_the_prompt(laptop: list[Any]) -> None:
    result = runner.invoke(app, ["launch", JOB, "--yes"])
    assert result.exit_code == 0, result.output
    assert "launch?" not in result.stderr and len(laptop) == 1


def test_missing_secret_is_named_before_the_prompt_and_any_launch(laptop: list[Any]) -> None:
    result = runner.invoke(app, ["launch", JOB, "--yes", "--set", "artifacts.destinations=[hf://you/dream-s1k]"])
    assert result.exit_code == 1 and laptop == []
    assert result.stderr == (
        "error: missing secret `HF_TOKEN` (for the `hf://you/dream-s1k` destination) in this shell's environment; "
        "nothing was launched\n\nhint: export it and launch again: `export HF_TOKEN=...`\n")


def test_secret_values_never_reach_the_output_or_the_record(laptop: list[Any], monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    result = runner.invoke(app, ["launch", JOB, "--yes", "--set", "artifacts.destinations=[hf://you/dream-s1k]",
                                 "--set", "budget.max_cost_yuan=300"])
    assert result.exit_code == 0, result.output
    (plan, _), = laptop
    assert plan.secrets == ("HF_TOKEN",) and SECRET not in repr(plan) and SECRET not in result.output
    record = save_record(plan, 3, "2026-11-24T12:00:00Z")
    assert SECRET not in (tmp_path / "dream-job-home" / "launches" / f"{plan.run_id}.json").read_text()
    assert record["secrets"] == ["HF_TOKEN"]


def test_launch_without_skypilot_says_how_to_install_it(in_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sky", None)  # `import sky` raises ImportError
    result = runner.invoke(app, ["launch", JOB, "--yes"])
    assert result.exit_code == 1
    assert result.stderr == ("error: SkyPilot is not installed in this environment (it stays out of the container's)"
                             "\n\nhint: install the launcher extra in its own environment: "
                             "`pip install 'dream-job[launcher]'`\n")


def _plan(*overrides: str, **kwargs: Any) -> Any:
    return plan_launch(load_spec(JOB, list(overrides)), Path(JOB), task_yaml=Path("sky.yaml"), environ={}, **kwargs)


def test_spot_offers_launch_as_managed_jobs_on_demand_ones_as_the_job_says(laptop: list[Any]) -> None:
    spot = _plan("budget.managed_job=false")
    assert spot.spot and spot.mode == "managed" and spot.autostop is None
    on_demand = _plan("budget.managed_job=false", *ON_DEMAND)
    assert not on_demand.spot and on_demand.mode == "cluster"
    assert on_demand.autostop == {"idle_minutes": on_demand.hard_limit_min, "down": True, "wait_for": "none"}
    assert _plan(*ON_DEMAND).mode == "managed"  # budget.managed_job: true
    forced = _plan(mode="cluster")
    assert forced.spot and forced.mode == "cluster" and forced.autostop["wait_for"] == "none"


def test_plan_caps_envs_and_template_secrets(laptop: list[Any]) -> None:
    plan = _plan(*ON_DEMAND, mode="cluster", envs=["RUNS_BUCKET=my-runs"])
    assert plan.hard_limit_min == int(400 / 7.10 / plan.usd_per_hour * 60)
    assert plan.budget_hours == int((plan.hard_limit_min - 15) / 60 * 100) / 100
    assert plan.envs["JOB"] == JOB and plan.envs["DREAM_JOB_RUN_ID"] == plan.run_id
    assert plan.envs["BUDGET_HOURS"] == f"{plan.budget_hours:g}" and plan.envs["RUNS_BUCKET"] == "my-runs"
    assert plan.envs["DREAM_JOB_USD_PER_HOUR"] == f"{plan.usd_per_hour:g}"
    assert plan.secrets == () and plan.drop_secrets == ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    assert plan.run_dir == f"s3://my-runs/{plan.run_id}"


def test_spot_flag_without_a_spot_offer_is_an_error(laptop: list[Any]) -> None:
    result = runner.invoke(app, ["launch", JOB, "--spot", "--yes", "--set", "budget.use_spot=false",
                                 "--set", "budget.max_cost_yuan=400"])
    assert result.exit_code == 1 and laptop == []
    assert result.stderr.startswith("error: no spot offer runs `dream-s1k` within its budget ¥400\n")


def _record(tmp_path: Path, mode: str = "managed") -> dict[str, Any]:
    plan = _plan("budget.max_cost_yuan=400", "artifacts.destinations=[file:///tmp/published]",
                 mode=mode, envs=["RUNS_BUCKET=my-runs"])
    return save_record(plan, 12, "2026-11-24T12:00:00Z")


def test_status_of_a_launched_run_shows_state_recoveries_and_spend(laptop: list[Any], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    record = _record(tmp_path)
    seen: list[Any] = []
    monkeypatch.setattr(sky_api, "job_state", lambda r: seen.append(r) or {
        "state": "RUNNING", "recoveries": 2, "started_at": None, "ended_at": None, "failure": None})
    run_dir = tmp_path / "mounted-run"
    run_dir.mkdir()
    (run_dir / "cost.json").write_text(json.dumps({"started_at": time.time() - 1800, "usd_per_hour": 2.0,
                                                   "cny_per_usd": 7.1, "budget_yuan": 400.0}))
    result = runner.invoke(app, ["status", record["run_id"], "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert seen[0]["job_id"] == 12
    assert "state: RUNNING\nrecoveries: 2\nspent: ¥7.10 of ¥400\n" in result.stdout  # 0.5 h x $2 x 7.1
    assert f"next: `dream-job logs {record['run_id']}`" in result.stdout
    as_json = json.loads(runner.invoke(app, ["status", record["run_id"], "--run-dir", str(run_dir), "--json"]).stdout)
    assert as_json["launch"]["state"] == "RUNNING" and as_json["launch"]["spent_yuan"] == 7.1


def test_status_of_the_job_file_adds_its_newest_launch_and_suggests_pull(laptop: list[Any], tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    record = _record(tmp_path)
    monkeypatch.setattr(sky_api, "job_state", lambda r: {
        "state": "SUCCEEDED", "recoveries": 0, "started_at": None, "ended_at": None, "failure": None})
    result = runner.invoke(app, ["status", JOB, "--run-dir", str(tmp_path / "nothing-here")])
    assert result.exit_code == 0, result.output
    assert "stage preflight" in result.stdout  # the local run dir table, as before
    assert f"launch: `{record['run_id']}`: managed" in result.stdout
    assert "next: `dream-job pull file:///tmp/published ./dream-s1k`" in result.stdout


def test_status_and_logs_of_an_unknown_run_name_the_record_folder(laptop: list[Any], tmp_path: Path) -> None:
    for verb in ("status", "logs"):
        result = runner.invoke(app, [verb, "dream-s1k-20990101-000000"])
        assert result.exit_code == 1
        assert result.stderr.startswith(f"error: no launch of `dream-s1k-20990101-000000` recorded in "
                                        f"`{tmp_path / 'dream-job-home' / 'launches'}`\n")


def test_logs_follow_the_skypilot_job_and_fail_with_it(laptop: list[Any], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    record = _record(tmp_path, mode="cluster")
    codes = iter([0, 100])
    seen: list[Any] = []
    monkeypatch.setattr(sky_api, "tail_logs", lambda r, follow: seen.append((r["sky_name"], r["job_id"], follow))
                        or next(codes))
    assert runner.invoke(app, ["logs", record["run_id"]]).exit_code == 0
    failed = runner.invoke(app, ["logs", JOB, "--no-follow"])  # the job file finds its newest run
    assert seen == [(record["sky_name"], 12, True), (record["sky_name"], 12, False)]
    assert failed.exit_code == 1
    assert failed.stderr.startswith(f"error: run `{record['run_id']}` did not succeed (SkyPilot's exit code 100)")
