"""`sky.yaml`: its `run` script under bash with the real `dream-job task` (fast); SkyPilot itself (slow).

The slow tests run `tests/tools/sky_probe.py` with `skypilot==0.14.1` in its own cached venv, with
`HOME` and `SKY_RUNTIME_DIR` in a temp folder (`tests/tools/sky_env.py`): the file
must pass SkyPilot's own validation (and a broken copy must not), and SkyPilot's optimizer,
with clouds faked as enabled and tiny catalogs seeded in SkyPilot's v8 CSV format, must choose
the cheapest candidate. Offline throughout: the catalogs are never fetched. These run SkyPilot in
process; `tests/integration/test_sky_server.py` sends the file through SkyPilot's API server.

What the optimizer does not check: bucket mounts need FUSE, which RunPod and Vast lack, so the
cheapest choice below (RunPod) is one SkyPilot's provisioner would then skip for the next
candidate; sky.yaml's `file_mounts` comment says how to run there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dream_job.errors import EXIT_TRANSIENT
from dream_job.launch.payload import spec_text
from dream_job.launch.task import DEFAULT_MAX_STARTS
from dream_job.spec import load_spec
from tests.conftest import REPO
from tests.tools.sky_env import probe_result, run_probe, sky_env, sky_python  # noqa: F401  (fixtures)

SKY_YAML = REPO / "sky.yaml"


def _sky_config() -> dict:
    return yaml.safe_load(SKY_YAML.read_text(encoding="utf-8"))


# --- fast: the file and its `run` script -----------------------------------------------------


def test_sky_yaml_recovers_on_the_transient_exit_code_only() -> None:
    resources = _sky_config()["resources"]
    # Exit 1 (fix something) is never retried; exit 3 is, and `dream-job task` bounds the starts.
    assert resources["job_recovery"]["recover_on_exit_codes"] == [EXIT_TRANSIENT]
    assert resources["job_recovery"]["max_restarts_on_errors"] == 0
    assert resources["autostop"] == {"idle_minutes": 10, "down": True}
    # No secrets declared: a launch passes (and asks for) only those the job needs, by name.
    assert "secrets" not in _sky_config()


def test_sky_yaml_names_no_image_that_does_not_exist() -> None:
    # The no-image path is the default; a user's own image comes from `make image` (docs/image.md).
    assert "image_id" not in _sky_config()["resources"]
    assert "ghcr.io/dream-job" not in SKY_YAML.read_text(encoding="utf-8")


def test_sky_yaml_leaves_the_caps_to_the_launch_line() -> None:
    envs = _sky_config()["envs"]
    # `null`: SkyPilot refuses a launch that does not set them (the slow test below checks it does).
    assert envs["BUDGET_HOURS"] is None and envs["DREAM_JOB_USD_PER_HOUR"] is None
    assert int(envs["DREAM_JOB_MAX_STARTS"]) == DEFAULT_MAX_STARTS  # what `dream-job task` assumes without it


def test_sky_yaml_sets_no_env_that_skypilots_api_server_rejects() -> None:
    # SKYPILOT_RUNPOD_DOCKER_USERNAME turns into the resources field `_docker_username_for_runpod`,
    # which SkyPilot 0.14.1's API server rejects for every cloud (tests/integration/test_sky_server.py).
    assert not [name for name in _sky_config()["envs"] if name.startswith("SKYPILOT_")]


def _machine(tmp_path: Path, **envs: str) -> dict[str, str]:
    """A node without the image: HOME holds the venv `setup` makes (here: this project's), SkyPilot's env."""
    home = tmp_path / "home"
    (home / "dream-job-venv" / "bin").mkdir(parents=True)
    (home / "dream-job-venv" / "bin" / "activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    task_envs = {k: str(v) for k, v in _sky_config()["envs"].items() if v is not None}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DREAM_JOB_", "SKYPILOT_", "AWS_"))}
    return {**base, **task_envs, "HOME": str(home), "SKYPILOT_NODE_IPS": "10.0.0.1\n10.0.0.2",
            "SKYPILOT_NUM_NODES": "1", "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NUM_GPUS_PER_NODE": "0",
            "SKYPILOT_TASK_ID": "sky-managed-2026-11-24-12-00-00-000000_dream_1-0", **envs}


def _run_script(env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    if Path("/opt/dream-job/image/entrypoint.sh").exists():
        pytest.skip("inside the dream-job image the script takes the image branch")
    return subprocess.run(["bash", "-c", _sky_config()["run"]], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


def _carried(*overrides: str) -> dict[str, str]:
    text = spec_text(load_spec(REPO / "jobs" / "smoke.yaml", list(overrides)))
    return {"DREAM_JOB_SPEC": text, "DREAM_JOB_SPEC_SHA256": hashlib.sha256(text.encode()).hexdigest()}


def test_run_script_refuses_a_launch_without_caps(tmp_path: Path) -> None:
    result = _run_script(_machine(tmp_path, BUDGET_HOURS="", DREAM_JOB_USD_PER_HOUR="0"))
    assert result.returncode == 1
    assert result.stderr.startswith("error: this task has no wall-clock cap (`BUDGET_HOURS`) and no price "
                                    "(`DREAM_JOB_USD_PER_HOUR`), so nothing would stop the machine; not started\n")


def test_run_script_runs_the_carried_job_not_the_one_in_the_workdir(tmp_path: Path) -> None:
    # The workdir's `jobs/dream-s1k.yaml` (`JOB`) is not what was priced: the carried job runs.
    env = _machine(tmp_path, **_carried("name=carried", f"artifacts.destinations=[{(tmp_path / 'd').as_uri()}]"),
                   BUDGET_HOURS="0.0005", DREAM_JOB_USD_PER_HOUR="1", DREAM_JOB_RUN_ID="r-1")
    result = _run_script(env)
    assert "dream-job task: run `r-1` of `carried` (sha256 " in result.stderr, result.stderr
    assert f"run dir {tmp_path / 'home' / 'dream-job-runs' / 'r-1'}" in result.stderr
    assert result.returncode == 1 and "stopped at the wall-clock cap (`BUDGET_HOURS=0.0005`)" in result.stderr
    # The start is counted next to the run's results (its `file://` destination): a recovery keeps it.
    assert json.loads((tmp_path / "d" / "r-1" / "task.json").read_text())["starts"] == 1
    again = _run_script(env)
    assert again.returncode == 1 and "is used up since its first start" in again.stderr


def test_run_script_refuses_a_job_that_differs_from_the_printed_digest(tmp_path: Path) -> None:
    carried = _carried()
    env = _machine(tmp_path, DREAM_JOB_SPEC=carried["DREAM_JOB_SPEC"] + "# edited on the way\n",
                   DREAM_JOB_SPEC_SHA256=carried["DREAM_JOB_SPEC_SHA256"], BUDGET_HOURS="1",
                   DREAM_JOB_USD_PER_HOUR="1")
    result = _run_script(env)
    assert result.returncode == 1
    assert "is not the one that was priced" in result.stderr.splitlines()[0]
    assert not (tmp_path / "home" / "dream-job-runs").exists()


# --- slow: SkyPilot 0.14.1 -------------------------------------------------------------------


# What the estimate's line passes; sky.yaml leaves them `null`, so SkyPilot refuses a launch without them.
CAPS = ("--env", "BUDGET_HOURS=6", "--env", "DREAM_JOB_USD_PER_HOUR=3")
# The user's own run bucket (sky.yaml leaves `RUNS_BUCKET` null too: none is shipped).
BUCKET = ("--env", "RUNS_BUCKET=my-runs")


def _probe(python: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_probe(python, env, "sky_probe.py", *args)


def _result(completed: subprocess.CompletedProcess[str]) -> dict:
    return probe_result(completed)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_skypilot_accepts_sky_yaml(sky_python: Path, sky_env: dict[str, str]) -> None:
    task = _result(_probe(sky_python, sky_env, "load", str(SKY_YAML), *CAPS, *BUCKET))
    print(json.dumps(task["resources"], indent=1))  # shown with -s: what SkyPilot made of the file
    assert task["name"] == "dream-job"
    assert [r["accelerators"] for r in task["resources"]] == [{"A100-80GB": 8}, {"H100": 8}]
    for resources in task["resources"]:
        assert "image_id" not in resources  # the cloud's image and `setup`, unless DREAM_JOB_IMAGE is set
        assert resources["use_spot"] is False and resources["disk_size"] == 500
        assert resources["autostop"] == {"idle_minutes": 10, "down": True}
        assert resources["job_recovery"] == {"strategy": "EAGER_NEXT_REGION", "max_restarts_on_errors": 0,
                                             "recover_on_exit_codes": [3]}
        assert "_docker_username_for_runpod" not in resources  # the API server would reject the task
    assert task["secret_refs"] == []
    assert set(task["envs"]) >= {"JOB", "DREAM_JOB_USD_PER_HOUR", "BUDGET_HOURS"}
    assert task["storage_mounts"]["/runs"]["name"] == "my-runs"  # `--env` reaches the bucket name
    assert task["storage_mounts"]["/runs"]["mode"] == "MOUNT_CACHED"
    # The task and the pipeline read the node variables SkyPilot exports, spelled as SkyPilot spells them.
    # Every module that runs on the node: the task, the pipeline package, the run dir package, the variable table.
    package = REPO / "dream_job"
    node_files = [package / "launch" / "task.py", package / "environment.py",
                  *sorted((package / "pipeline").glob("*.py")), *sorted((package / "rundir").glob("*.py"))]
    sources = "".join(path.read_text(encoding="utf-8") for path in node_files)
    used = set(re.findall(r"""["'](SKYPILOT_[A-Z_]+)["']""", sources))
    assert {"SKYPILOT_NUM_NODES", "SKYPILOT_NODE_RANK", "SKYPILOT_NODE_IPS", "SKYPILOT_TASK_ID"} <= used
    assert used <= set(task["node_env_names"])


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_skypilot_refuses_a_bare_launch_without_caps(sky_python: Path, sky_env: dict[str, str]) -> None:
    completed = _probe(sky_python, sky_env, "load", str(SKY_YAML), *BUCKET)
    assert completed.returncode == 1
    assert "Environment variable 'BUDGET_HOURS' is None" in completed.stderr, completed.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize(("old", "new", "message"), [
    ("- accelerators: H100:8", "- acceleratorz: H100:8", "did you mean 'accelerators'"),
    ("mode: MOUNT_CACHED", "mode: SYNC", "'SYNC' is not one of"),
    ("max_restarts_on_errors: 0", "max_restarts_on_errors: -1", "-1 is less than the minimum of 0"),
])
def test_skypilot_rejects_a_broken_copy(sky_python: Path, sky_env: dict[str, str], tmp_path: Path,
                                        old: str, new: str, message: str) -> None:
    text = SKY_YAML.read_text(encoding="utf-8")
    assert old in text
    broken = tmp_path / "sky.yaml"
    broken.write_text(text.replace(old, new))
    completed = _probe(sky_python, sky_env, "load", str(broken), *CAPS, *BUCKET)
    assert completed.returncode == 1
    assert message in completed.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_skypilot_refuses_sky_yaml_until_the_user_names_a_run_bucket(sky_python: Path,
                                                                    sky_env: dict[str, str]) -> None:
    # No global default bucket: `sky launch sky.yaml` with the caps but no bucket stops at parse time, before
    # anything is provisioned.
    completed = _probe(sky_python, sky_env, "load", str(SKY_YAML), *CAPS)
    assert completed.returncode == 1
    assert ("ValueError: Environment variable 'RUNS_BUCKET' is None. Please set a value for it in task YAML or "
            "with --env flag.") in completed.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize(("clouds", "extra", "expected"), [
    # All candidates priced: RunPod's 8x A100-80GB ($11.12/h) beats Lambda's ($22.32) and H100:8 ($31.92).
    ("lambda,runpod", [], ("RunPod", "8x_A100-80GB_SECURE", {"A100-80GB": 8}, 11.12)),
    # Only Lambda: the A100-80GB:8 candidate is cheaper than the H100:8 one.
    ("lambda", [], ("Lambda", "gpu_8x_a100_80gb_sxm4", {"A100-80GB": 8}, 22.32)),
    # The estimate's override for the LoRA job, run without the bucket mount (RunPod has no FUSE).
    ("lambda,runpod", ["--gpus", "RTX4090:1", "--no-mounts"], ("RunPod", "1x_RTX4090_SECURE", {"RTX4090": 1}, 0.74)),
    # `--gpus H100:1` (full_8bit) overrides both candidates.
    ("lambda,runpod", ["--gpus", "H100:1"], ("Lambda", "gpu_1x_h100_sxm5", {"H100": 1}, 4.29)),
])
def test_skypilot_optimizer_picks_the_cheapest_candidate(sky_python: Path, sky_env: dict[str, str], clouds: str,
                                                         extra: list[str], expected: tuple) -> None:
    choice = _result(_probe(sky_python, sky_env, "optimize", str(SKY_YAML), "--clouds", clouds, *CAPS, *BUCKET,
                            *extra))
    assert (choice["cloud"], choice["instance_type"], choice["accelerators"], choice["usd_per_hour"]) == expected
    assert choice["use_spot"] is False
