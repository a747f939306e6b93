"""`dream-job launch`, `logs` and `status RUN` without SkyPilot: the prompt, secrets, modes, records.

SkyPilot cannot be imported in the project's environment (click pin), so these tests patch the
one SkyPilot-facing module (`dream_job.launch.sky_api`) or the launch call and assert what
reached it; `test_launch_sky.py` runs the same path against SkyPilot itself (slow).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from dream_job.cli import app
from dream_job.launch import LaunchError, plan_launch, sky_api
from dream_job.launch.image import describe_image
from dream_job.launch.records import save_record
from dream_job.spec import load_spec
from tests.conftest import REPO

runner = CliRunner()
JOB = "jobs/dream-s1k.yaml"
SECRET = "hf_do_not_print_me"
# An AWS on-demand offer: 1x H100 `p5.4xlarge` with the job's former checkpoint cadence (with `auto`,
# one save, 8x A100 `p4d.24xlarge` is cheaper).
ON_DEMAND = ("budget.use_spot=false", "budget.clouds=[aws]", "budget.max_cost_yuan=400", "train.save_every_steps=20",
             "train.async_save=false")
# The shipped snapshot's prices are dated 2026-11-24: the CLI tests accept them on any day; the plan
# tests pin the clock instead.
ANY_DAY = ["--set", "budget.max_catalog_age_days=36500"]
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
BUCKET = {"DREAM_JOB_RUNS_BUCKET": "my-runs"}  # the user's own run bucket setting
CONTROLLER_CONFIG = ".dream-job/sky-controller-aws-us-east-1-m6i-xlarge.yaml"


@pytest.fixture
def laptop(tmp_path: Path, in_repo: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A laptop with SkyPilot 'installed', no price catalog (the shipped snapshot), no secrets, its own run
    bucket set (`DREAM_JOB_RUNS_BUCKET`); launches recorded."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DREAM_JOB_RUNS_BUCKET", BUCKET["DREAM_JOB_RUNS_BUCKET"])
    monkeypatch.delenv("SKY_RUNTIME_DIR", raising=False)
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
    result = runner.invoke(app, ["launch", JOB, *ANY_DAY], input="n\n")
    assert result.exit_code == 1 and laptop == []
    assert "launch? [y/N]" in result.stderr
    assert result.stderr.endswith("error: not launched: the prompt was declined\n\n"
                                  "hint: pass `--yes` to launch without asking\n")


def test_launch_shows_the_choice_and_cost_then_launches_on_yes(laptop: list[Any]) -> None:
    result = runner.invoke(app, ["launch", JOB, *ANY_DAY], input="y\n")
    assert result.exit_code == 0, result.output
    (plan, dryrun), = laptop
    assert not dryrun and result.stdout.splitlines()[-1] == plan.run_id  # (the runner echoes the typed `y`)
    assert f"offer: {plan.accelerators} `{plan.instance_type}` pinned to `{plan.infra}`" in result.stderr
    assert f"¥{plan.cost_cny:.2f}" in result.stderr
    assert f"dream-job logs {plan.run_id}" in result.stderr


def test_launch_yes_skips_the_prompt(laptop: list[Any]) -> None:
    result = runner.invoke(app, ["launch", JOB, *ANY_DAY, "--yes"])
    assert result.exit_code == 0, result.output
    assert "launch?" not in result.stderr and len(laptop) == 1


def test_missing_secret_is_named_before_the_prompt_and_any_launch(laptop: list[Any]) -> None:
    result = runner.invoke(app, ["launch", JOB, *ANY_DAY, "--yes", "--set",
                                 "artifacts.destinations=[hf://you/dream-s1k]"])
    assert result.exit_code == 1 and laptop == []
    assert result.stderr == (
        "error: missing secret `HF_TOKEN` (for the `hf://you/dream-s1k` destination) in this shell's environment; "
        "nothing was launched\n\nhint: export it and launch again: `export HF_TOKEN=...`\n")


def test_secret_values_never_reach_the_output_or_the_record(laptop: list[Any], monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    result = runner.invoke(app, ["launch", JOB, *ANY_DAY, "--yes",
                                 "--set", "artifacts.destinations=[hf://you/dream-s1k]",
                                 "--set", "budget.max_cost_yuan=300"])
    assert result.exit_code == 0, result.output
    (plan, _), = laptop
    assert plan.secrets == ("HF_TOKEN",) and SECRET not in repr(plan) and SECRET not in result.output
    record = save_record(plan, 3, "2026-11-24T12:00:00Z")
    assert SECRET not in (tmp_path / "dream-job-home" / "launches" / f"{plan.run_id}.json").read_text()
    assert record["secrets"] == ["HF_TOKEN"]


def test_launch_without_skypilot_says_how_to_install_it(in_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sky", None)  # `import sky` raises ImportError
    result = runner.invoke(app, ["launch", JOB, *ANY_DAY, "--yes"])
    assert result.exit_code == 1
    assert result.stderr == ("error: SkyPilot is not installed in this environment (it stays out of the container's)"
                             "\n\nhint: from the repo root, install the launcher extra into a venv of its own: "
                             "`python3 -m venv .venv-launcher && .venv-launcher/bin/pip install -e '.[launcher]'`, "
                             "then run `.venv-launcher/bin/dream-job`\n")


def test_a_new_user_without_a_run_bucket_is_told_what_to_set_before_anything_launches(
        laptop: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DREAM_JOB_RUNS_BUCKET")
    result = runner.invoke(app, ["launch", JOB, *ANY_DAY, "--yes", *(f"--set={s}" for s in ON_DEMAND)])
    assert result.exit_code == 2 and laptop == []
    assert result.stderr == (
        "error: not launched: no run bucket is set: on `aws` the run dir lives on an S3 bucket of your own, named "
        "before launching (bucket names are global, so none is shipped); SkyPilot creates it: `export "
        "DREAM_JOB_RUNS_BUCKET=dream-job-runs-<your name>`, or pass `--env RUNS_BUCKET=<name>`\n")
    # The estimate says the same sentence and prints the line with a placeholder no shell runs as a name.
    estimate = runner.invoke(app, ["estimate", JOB, *ANY_DAY, *(f"--set={s}" for s in ON_DEMAND)])
    assert estimate.exit_code == 0, estimate.output
    assert "no run bucket is set" in estimate.stdout
    assert re.search(r"--env 'RUNS_BUCKET=<your-new-bucket>' \.dream-job/dream-s1k-\d{8}-\d{6}\.yaml$",
                     estimate.stdout.splitlines()[-1])
    # `--env RUNS_BUCKET=...` names it too, and goes onto the line.
    named = _plan(*ON_DEMAND, mode="cluster", envs=["RUNS_BUCKET=their-runs"], environ={})
    assert named.runs_bucket == "their-runs" and named.run_dir == f"s3://their-runs/{named.run_id}"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _plan(*overrides: str, **kwargs: Any) -> Any:
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("environ", BUCKET)
    return plan_launch(load_spec(JOB, list(overrides)), Path(JOB), task_yaml=Path("sky.yaml"), **kwargs)


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
    assert plan.guard_usd_per_hour == plan.usd_per_hour == 6.88  # p5.4xlarge on-demand, one price in us-east-1
    # ¥400 / 7.10 / $6.88/h = 8.19 h = 491.3 min -> 491; less the 15 min shutdown grace: 476 min = 7.933 h.
    assert (plan.hard_limit_min, plan.budget_hours) == (491, 7.93)
    assert plan.hours <= plan.budget_hours
    assert plan.envs["JOB"] == JOB and plan.envs["DREAM_JOB_RUN_ID"] == plan.run_id
    assert plan.envs["BUDGET_HOURS"] == f"{plan.budget_hours:g}" and plan.envs["RUNS_BUCKET"] == "my-runs"
    assert plan.envs["DREAM_JOB_USD_PER_HOUR"] == f"{plan.usd_per_hour:g}"
    assert plan.secrets == ()  # sky.yaml declares none; the job's destinations need none
    assert plan.run_dir == f"s3://my-runs/{plan.run_id}"


# Inputs a shipped job needs that a clean checkout lacks, and the variants the launch walk prices
# (`test_launch_walk.py`); smoke's data report comes from its own prep run (`smoke_report`).
SHIPPED_VARIANTS = [
    ("jobs/dream-s1k.yaml", []), ("jobs/dream-s1k.yaml", ["budget.clouds=[lambda]"]),
    ("jobs/dream-s1k.yaml", ["budget.clouds=[aws]", "budget.managed_job=false", "budget.use_spot=false",
                             "budget.max_cost_yuan=400"]),
    ("jobs/dream-s1k-lora-4090.yaml", []), ("jobs/dream-s1k-lora-4090.yaml", ["budget.clouds=[runpod]"]),
    ("jobs/dream-s1k-full-length.yaml", []),
    ("jobs/dream-s1k-full-length.yaml", ["artifacts.destinations=[hf://you/x]"]),
    ("jobs/rehearsal-7b.yaml", ["model.base=Dream-org/Dream-v0-Base-7B", "data.dataset=simplescaling/s1K-1.1"]),
    ("jobs/smoke.yaml", ["budget.max_cost_yuan=3"]),
]


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`jobs/smoke.yaml`'s data report from a real `dream-job prep` (its dataset has no shipped length profile)."""
    from budget import load_data_report

    run_dir = tmp_path_factory.mktemp("smoke-prep") / "run"
    result = runner.invoke(app, ["prep", str(REPO / "jobs" / "smoke.yaml"), "--set", f"artifacts.run_dir={run_dir}"])
    assert result.exit_code == 0, result.output[-3000:]
    return load_data_report(run_dir / "data" / "data_report.json")


def test_every_shipped_jobs_pick_ends_within_the_cap_its_launch_sets(laptop: list[Any],
                                                                    smoke_report: dict[str, Any]) -> None:
    assert {job for job, _ in SHIPPED_VARIANTS} == {f"jobs/{p.name}" for p in (REPO / "jobs").glob("*.yaml")}
    for job, sets in SHIPPED_VARIANTS:
        report = smoke_report if job == "jobs/smoke.yaml" else None
        plan = plan_launch(load_spec(job, sets), Path(job), task_yaml=Path("sky.yaml"), now=NOW, environ=BUCKET,
                           for_launch=False, data_report=report)
        choice = plan.estimate.choice
        assert choice.hours <= plan.budget_hours == choice.budget_hours, (job, sets)
        assert plan.envs["BUDGET_HOURS"] == f"{plan.budget_hours:g}"
        assert not any("BUDGET_HOURS" in note for note in plan.notes)


def test_a_pick_its_own_cap_would_stop_is_not_launched(laptop: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import budget

    real = budget.estimate

    def disagreeing(*args: Any, **kwargs: Any) -> Any:  # an estimate whose choice outlasts the launch's cap
        result = real(*args, **kwargs)
        return dataclasses.replace(result, choice=dataclasses.replace(result.choice, hours=6.47))

    monkeypatch.setattr(budget, "estimate", disagreeing)
    with pytest.raises(LaunchError) as raised:
        _plan("budget.clouds=[aws]", "budget.max_cost_yuan=400")
    # As above: ¥400 buys 403 min at $8.382/h, `BUDGET_HOURS` 6.46 h. 6.47 h needs 388.2 -> 389 + 15 = 404 min
    # = 404 / 60 x ¥59.5122/h = ¥400.72 -> ¥401.
    assert raised.value.message == (
        "not launched: `dream-s1k` on 8x A100 (aws) needs 6.47 h but `budget.max_cost_yuan` ¥400 buys 403 min, so "
        "`BUDGET_HOURS` would stop it at 6.46 h (15 min shutdown grace)")
    assert raised.value.hint == "raise it: `--set budget.max_cost_yuan=401`"
    assert laptop == []


def test_spot_flag_without_a_spot_offer_is_an_error(laptop: list[Any]) -> None:
    result = runner.invoke(app, ["launch", JOB, *ANY_DAY, "--spot", "--yes", "--set", "budget.use_spot=false",
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
    assert "stage prep" in result.stdout  # the local run dir table, as before
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


def test_launch_refuses_prices_older_than_the_limit_and_says_how_to_refresh(laptop: list[Any]) -> None:
    with pytest.raises(LaunchError) as raised:
        _plan(now=datetime(2027, 2, 3, tzinfo=UTC))
    plan = _plan()
    assert raised.value.message == (
        f"not launched: the {plan.cloud} prices are 71 days old (2026-11-24), older than "
        "`budget.max_catalog_age_days` (14): refresh them before launching")
    folder = Path(os.environ["HOME"]) / ".sky" / "catalogs" / "v8"
    assert raised.value.hint == (f"refresh them with `rm -f {folder / plan.cloud / 'vms.csv'} && sky gpus list "
                                 f"--infra {plan.cloud}`, or accept them with `--set budget.max_catalog_age_days=71`")
    # The estimate shows the same prices with the warning instead (its first line), and a line to paste.
    result = runner.invoke(app, ["estimate", JOB, "--set", "budget.max_catalog_age_days=1"])
    assert result.exit_code == 0, result.output
    assert "│ WARNING     │ prices are" in result.stdout
    as_json = json.loads(runner.invoke(app, ["estimate", JOB, "--set", "budget.max_catalog_age_days=1",
                                             "--json"]).stdout)
    assert as_json["stale_price_warning"].endswith("older than `budget.max_catalog_age_days` (1): refresh them before "
                                                   "launching")
    assert as_json["launch_command"].startswith(f"SKYPILOT_PROJECT_CONFIG={CONTROLLER_CONFIG} sky jobs launch -n "
                                                "dream-s1k-")


def test_the_plan_pins_the_priced_machine_and_its_line_says_everything(laptop: list[Any]) -> None:
    cluster = _plan(*ON_DEMAND, mode="cluster", envs=["RUNS_BUCKET=my-runs"])
    assert (cluster.infra, cluster.instance_type, cluster.accelerators) == ("aws/us-east-1", "p5.4xlarge", "H100:1")
    assert cluster.sky_command() == (
        f"sky launch -c {cluster.sky_name} --infra aws/us-east-1 -t p5.4xlarge --gpus H100:1 --no-use-spot "
        f"-i {cluster.hard_limit_min} --wait-for none --down --env JOB=jobs/dream-s1k.yaml "
        f"--env DREAM_JOB_USD_PER_HOUR=6.88 --env BUDGET_HOURS={cluster.budget_hours:g} "
        f"--env DREAM_JOB_RUN_ID={cluster.run_id} --env DREAM_JOB_SPEC_SHA256={_sha256(cluster.spec_yaml)} "
        f"--env RUNS_BUCKET=my-runs .dream-job/{cluster.run_id}.yaml")
    # A managed spot job may recover into any zone of us-east-1: the guard counts the dearest.
    spot = _plan("budget.clouds=[aws]", "budget.max_cost_yuan=400")
    assert (spot.mode, spot.instance_type, spot.usd_per_hour) == ("managed", "p4d.24xlarge", 2.47)
    assert spot.guard_usd_per_hour == 8.19 and spot.envs["DREAM_JOB_USD_PER_HOUR"] == "8.19"
    assert ("guard", "`DREAM_JOB_USD_PER_HOUR=8.19`: the highest price among the zones of `us-east-1` a managed job "
            "may recover into (the cheapest, $2.47, is what SkyPilot shows)") in spot.lines()
    assert spot.sky_command().startswith(f"SKYPILOT_PROJECT_CONFIG={CONTROLLER_CONFIG} sky jobs launch -n "
                                         f"{spot.run_id} --infra aws/us-east-1 -t p4d.24xlarge --gpus A100:8 "
                                         "--use-spot --env JOB=jobs/dream-s1k.yaml ")
    # `train.save_every_steps: auto` reaches the machine resolved for this offer (the whole run: one save), in the
    # carried job the digest covers; the upload cadence follows (`auto` uploads every save).
    carried = yaml.safe_load(spot.spec_yaml)
    assert (carried["train"]["save_every_steps"], carried["artifacts"]["sync_every_steps"]) == (177, 177)
    assert spot.estimate.choice.save_every_steps == 177 and "SAVE_EVERY" not in spot.sky_command()
    assert (f"--env DREAM_JOB_RUN_ID={spot.run_id} --env DREAM_JOB_SPEC_SHA256={_sha256(spot.spec_yaml)} "
            "--env RUNS_BUCKET=my-runs .dream-job/") in spot.sky_command()
    # The jobs controller: placed by the project config the line names, priced from the shipped row (no catalog).
    assert yaml.safe_load(Path(CONTROLLER_CONFIG).read_text()) == {
        "jobs": {"controller": {"resources": {"infra": "aws/us-east-1", "instance_type": "m6i.xlarge",
                                              "disk_size": 50}}}}
    controller = dict(spot.lines())["controller"]
    assert controller.startswith("`m6i.xlarge` on `aws/us-east-1` at $0.192/h (price of 2026-12-07, snapshot "
                                 "controller_prices.csv")
    assert f"¥{spot.estimate.choice.controller_cny:.2f} of the estimate" in controller
    assert spot.estimate.choice.controller_cny == pytest.approx((spot.hours + 10 / 60) * 0.192 * 7.10)
    # ¥400 / 7.10 / ($8.19 guard + $0.192 controller) = 6.72 h = 403.3 min -> 403; less 15: 388 min = 6.467 h.
    assert (spot.hard_limit_min, spot.budget_hours) == (403, 6.46)
    assert dict(cluster.lines())["controller"].startswith("none: a cluster (`sky launch`)")


def test_a_cloud_without_fuse_gets_the_template_without_mounts(laptop: list[Any], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the derived template is written under the working directory
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "j.yaml").write_text((REPO / JOB).read_text())
    (tmp_path / "sky.yaml").write_text((REPO / "sky.yaml").read_text())
    plan = plan_launch(load_spec("jobs/j.yaml", ["budget.clouds=[vast]", "budget.use_spot=false",
                                                 "artifacts.destinations=[hf://you/x]", "train.method=lora"]),
                       Path("jobs/j.yaml"), task_yaml=Path("sky.yaml"), environ={}, now=NOW, for_launch=False)
    assert plan.dropped == ("file_mounts", "envs.RUNS_BUCKET")
    assert plan.task_file() == Path(f".dream-job/{plan.run_id}.yaml")
    assert plan.runs_bucket is None and "RUNS_BUCKET" not in plan.env_overrides  # no mount, no bucket to name
    derived = yaml.safe_load(plan.task_file().read_text())
    source = yaml.safe_load((tmp_path / "sky.yaml").read_text())
    assert derived == {**{k: v for k, v in source.items() if k != "file_mounts"},
                       "envs": {**{k: v for k, v in source["envs"].items() if k != "RUNS_BUCKET"},
                                "DREAM_JOB_SPEC": plan.spec_yaml}}
    assert plan.sky_command().endswith(f"--secret HF_TOKEN .dream-job/{plan.run_id}.yaml")
    assert plan.image is None and ("image", describe_image(None)) in plan.lines()
    # The user's own image (`make image`), named in the launching shell, goes into the task file...
    image = {"DREAM_JOB_IMAGE": "ghcr.io/you/dream-job:0.1.0"}
    vast = plan_launch(load_spec("jobs/j.yaml", ["budget.clouds=[vast]", "budget.use_spot=false",
                                                 "artifacts.destinations=[hf://you/x]", "train.method=lora"]),
                       Path("jobs/j.yaml"), task_yaml=Path("sky.yaml"), environ=image, now=NOW, for_launch=False)
    assert vast.image == "docker:ghcr.io/you/dream-job:0.1.0"
    assert yaml.safe_load(vast.task_file().read_text())["resources"]["image_id"] == vast.image
    assert ("image", f"`{vast.image}` (dependencies baked in; `setup` installs nothing)") in vast.lines()
    # ...except on RunPod, which runs its own: SkyPilot 0.14.1 cannot log in to a non-root one there.
    runpod = plan_launch(load_spec("jobs/j.yaml", ["budget.clouds=[runpod]", "budget.use_spot=false",
                                                   "artifacts.destinations=[hf://you/x]", "train.method=lora"]),
                         Path("jobs/j.yaml"), task_yaml=Path("sky.yaml"), environ=image, now=NOW, for_launch=False)
    assert runpod.dropped == ("file_mounts", "envs.RUNS_BUCKET", "resources.image_id")
    derived = yaml.safe_load(runpod.task_file().read_text())
    assert "image_id" not in derived["resources"] and runpod.image is None
    assert derived["resources"] == source["resources"]


def test_the_task_file_carries_the_priced_job_and_the_line_its_digest(laptop: list[Any], tmp_path: Path) -> None:
    plan = _plan(*ON_DEMAND, "train.epochs=2", mode="cluster", envs=["RUNS_BUCKET=my-runs"])
    carried = yaml.safe_load(plan.task_file().read_text())["envs"]["DREAM_JOB_SPEC"]
    assert carried == plan.spec_yaml
    assert f"--env DREAM_JOB_SPEC_SHA256={_sha256(carried)} " in plan.sky_command()
    (tmp_path / "carried.yaml").write_text(carried)
    assert load_spec(tmp_path / "carried.yaml") == load_spec(JOB, [*ON_DEMAND, "train.epochs=2"])
    # The printed line holds the digest, never the spec itself: it stays short enough to read.
    assert "DREAM_JOB_SPEC=" not in plan.sky_command() and len(plan.sky_command()) < 600


def test_estimates_keep_only_the_newest_task_files(laptop: list[Any], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs").mkdir()
    (tmp_path / JOB).write_text((REPO / JOB).read_text())
    (tmp_path / "sky.yaml").write_text((REPO / "sky.yaml").read_text())
    folder = tmp_path / ".dream-job"
    folder.mkdir()
    earlier = []  # 25 task files of earlier estimates, oldest first
    for i in range(25):
        path = folder / f"dream-s1k-20261101-0000{i:02d}.yaml"
        path.write_text("# Derived from `sky.yaml` by dream-job for `aws` (left out: nothing) for run ...\nname: x\n")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
        earlier.append(path)
    users = folder / "notes-20261101-000000.yaml"  # named like a run, not written by dream-job: kept
    users.write_text("# mine\n")
    os.utime(users, (0, 0))
    plan = plan_launch(load_spec(JOB), Path(JOB), task_yaml=Path("sky.yaml"), environ=BUCKET, now=NOW,
                       for_launch=False)
    # The new line's file and the 19 newest earlier ones: the last 20 estimates' lines still paste.
    assert sorted(folder.glob("dream-s1k-*.yaml")) == sorted([plan.task_file().resolve(), *earlier[6:]])
    assert users.exists() and Path(CONTROLLER_CONFIG).exists()
    assert plan.sky_command().endswith(f" {plan.task_file()}") and plan.task_file().is_file()
