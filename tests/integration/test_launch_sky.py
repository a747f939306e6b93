"""`dream-job launch` with SkyPilot 0.14.1 itself, offline, up to SkyPilot's dry run (slow).

`tests/tools/launch_probe.py` runs the launch library path in the sky venv (`tests/tools/sky_env.py`:
temp HOME, seeded v8 catalogs that the estimate reads too, clouds faked as enabled); the SDK
calls are recorded and each task goes through `sky.execution.launch(..., dryrun=True)`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tools.ec2_server import Ec2Server
from tests.tools.sky_env import probe_result, run_probe, sky_env, sky_python  # noqa: F401  (fixtures)

JOB = "jobs/dream-s1k.yaml"
HUB = "artifacts.destinations=[hf://you/dream-s1k]"
JOB_RECOVERY = {"strategy": "EAGER_NEXT_REGION", "max_restarts_on_errors": 0, "recover_on_exit_codes": [3]}


def _aws(ec2: Ec2Server) -> dict[str, str]:
    """Env for the controller's AWS dry run: dummy keys, EC2 on the loopback stub (`DescribeImages` only)."""
    return {"AWS_ENDPOINT_URL_EC2": ec2.endpoint_url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1"}


def _launch(python: Path, env: dict[str, str], *args: str, ok: bool = True) -> tuple[dict, str]:
    # AWS enabled for the jobs controller (`budget.controller_infra: aws/us-east-1`); the offers come from `--set`.
    completed = run_probe(python, env, "launch_probe.py", JOB, "--clouds", "aws,lambda,runpod",
                          "--env", "RUNS_BUCKET=my-runs", *args)
    return probe_result(completed, ok=ok), completed.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_spot_offer_launches_a_managed_job_with_recovery_and_the_secrets_it_needs(
        sky_python: Path, sky_env: dict[str, str]) -> None:
    with Ec2Server() as ec2:  # the controller's AWS dry run looks its machine image up
        env = {**sky_env, "HF_TOKEN": "hf_test_value", **_aws(ec2)}
        result, _ = _launch(sky_python, env, "--spot", "--set", HUB, "--set", "budget.max_cost_yuan=600",
                            "--set", "budget.clouds=[runpod]")
    controller, call = result["calls"]
    # The jobs controller is placed (dry run) before `sky jobs launch` would upload anything.
    assert (controller["function"], controller["dryrun"]) == ("sky.launch", True)
    assert controller["dry_run_choice"]["instance_type"] == "m6i.xlarge"
    assert call["function"] == "sky.jobs.launch" and call["name"] == result["plan"]["run_id"]
    (resources,) = call["task"]["resources"]
    assert (resources["infra"], resources["instance_type"], resources["accelerators"], resources["use_spot"]) == (
        "runpod/US", "8x_A100-80GB_SECURE", {"A100-80GB": 8}, True)
    assert "image_id" not in resources  # RunPod runs its own image (SkyPilot 0.14.1 logs in as root)
    assert resources["job_recovery"] == JOB_RECOVERY
    # No `wait_for: none` here: the jobs controller would keep it with its own 10-minute autodown.
    assert resources["autostop"] == {"idle_minutes": 10, "down": True}
    envs = call["task"]["envs"]
    assert envs["JOB"] == JOB and envs["DREAM_JOB_RUN_ID"] == result["plan"]["run_id"]
    assert envs["DREAM_JOB_USD_PER_HOUR"] == "11.12" and float(envs["BUDGET_HOURS"]) == result["plan"]["budget_hours"]
    # The hub destination needs HF_TOKEN (its value from this environment); the unset AWS refs are left out.
    assert call["task"]["secret_names"] == ["HF_TOKEN"] and call["task"]["secrets_match_environment"]
    assert call["task"]["secret_refs"] == []
    assert call["task"]["storage_mounts"] == {}  # RunPod has no FUSE: the bucket mount is left out
    assert call["dry_run_choice"] == {"cloud": "RunPod", "instance_type": "8x_A100-80GB_SECURE",
                                      "accelerators": {"A100-80GB": 8}, "use_spot": True, "usd_per_hour": 11.12}
    assert result["record"]["job_id"] == 7 and "hf_test_value" not in str(result["record"])


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_on_demand_cluster_launch_gets_the_budget_as_hard_autostop_limit(
        sky_python: Path, sky_env: dict[str, str]) -> None:
    # The job's former checkpoint cadence (every 20 steps, synchronous) makes Lambda's 1x H100 the pick; with
    # `auto` and async saves its 8x A100-80GB is.
    result, _ = _launch(sky_python, sky_env, "--set", "budget.clouds=[lambda]", "--set", "budget.managed_job=false",
                        "--set", "budget.max_cost_yuan=400", "--set", "train.save_every_steps=20",
                        "--set", "train.async_save=false")
    (call,) = result["calls"]
    assert call["function"] == "sky.launch" and call["dryrun"] is False and result["plan"]["mode"] == "cluster"
    (resources,) = call["task"]["resources"]
    assert (resources["infra"], resources["instance_type"], resources["accelerators"], resources["use_spot"]) == (
        "lambda/us-east-1", "gpu_1x_h100_sxm5", {"H100": 1}, False)
    limit = result["plan"]["hard_limit_min"]
    assert limit == int(400 / 7.10 / 4.29 * 60)  # what ¥400 buys at $4.29/h
    # As `sky launch -i <limit> --wait-for none --down` passes them (the estimate's printed line).
    assert call["autostop"] == {"idle_minutes_to_autostop": str(limit), "down": "True", "wait_for": "none"}
    assert call["task"]["secret_names"] == [] and call["task"]["secret_refs"] == []
    assert call["task"]["storage_mounts"] == {"/runs": {"name": "my-runs", "mode": "MOUNT_CACHED"}}
    assert call["dry_run_choice"]["instance_type"] == "gpu_1x_h100_sxm5"
    assert result["record"]["run_dir"] == f"s3://my-runs/{result['plan']['run_id']}"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_dryrun_goes_through_skypilots_dry_run_in_managed_mode_too(sky_python: Path, sky_env: dict[str, str]) -> None:
    # The controller's AWS dry run looks its machine image up: a loopback EC2 answers (`ec2_server.py`).
    with Ec2Server() as ec2:
        result, _ = _launch(sky_python, {**sky_env, **_aws(ec2)}, "--mode", "managed", "--set", "budget.clouds=[lambda]",
                            "--set", "budget.max_cost_yuan=400", "--dryrun")
        assert "DescribeImages" in ec2.requests
    call, controller = result["calls"]
    assert call["function"] == "sky.launch" and call["dryrun"] is True
    assert call["task"]["resources"][0]["job_recovery"] == JOB_RECOVERY
    # Then the jobs controller, placed as `sky jobs launch` places it, through the same dry run.
    assert controller["function"] == "sky.launch" and controller["dryrun"] is True
    assert controller["name"] == "dream-job-controller-dryrun"
    (placed,) = controller["task"]["resources"]
    assert (placed["infra"], placed["instance_type"], placed["disk_size"]) == ("aws/us-east-1", "m6i.xlarge", 50)
    assert controller["dry_run_choice"] == {"cloud": "AWS", "instance_type": "m6i.xlarge", "accelerators": None,
                                            "use_spot": False, "usd_per_hour": 0.192}
    assert result["record"] == {"run_id": result["plan"]["run_id"], "job_id": None, "dryrun": True}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_missing_secret_stops_before_any_skypilot_call(sky_python: Path, sky_env: dict[str, str]) -> None:
    result, stderr = _launch(sky_python, sky_env, "--set", HUB, ok=False)
    assert result["calls"] == [] and "record" not in result
    assert ("error: missing secret `HF_TOKEN` (for the `hf://you/dream-s1k` destination) in this shell's "
            "environment; nothing was launched") in stderr
