"""`sky.yaml`: its `run` script under bash with a fake `dream-job` (fast); SkyPilot itself (slow).

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

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from dream_job.errors import EXIT_TRANSIENT
from tests.conftest import REPO
from tests.tools.sky_env import probe_result, run_probe, sky_env, sky_python  # noqa: F401  (fixtures)

SKY_YAML = REPO / "sky.yaml"


def _sky_config() -> dict:
    return yaml.safe_load(SKY_YAML.read_text(encoding="utf-8"))


# --- fast: the file and its `run` script -----------------------------------------------------


def test_sky_yaml_recovers_on_the_transient_exit_code_only() -> None:
    resources = _sky_config()["resources"]
    assert resources["job_recovery"]["recover_on_exit_codes"] == [EXIT_TRANSIENT]
    assert resources["autostop"] == {"idle_minutes": 10, "down": True}
    # No secrets declared: a launch passes (and asks for) only those the job needs, by name.
    assert "secrets" not in _sky_config()


def test_sky_yaml_sets_no_env_that_skypilots_api_server_rejects() -> None:
    # SKYPILOT_RUNPOD_DOCKER_USERNAME turns into the resources field `_docker_username_for_runpod`,
    # which SkyPilot 0.14.1's API server rejects for every cloud (tests/integration/test_sky_server.py).
    assert not [name for name in _sky_config()["envs"] if name.startswith("SKYPILOT_")]


def _fake_machine(tmp_path: Path, *, dream_job_rc: int = 0, dream_job_sleep_s: float = 0) -> dict[str, str]:
    """A HOME with the no-image venv (a fake `dream-job` that logs its arguments) and SkyPilot's env."""
    home = tmp_path / "home"
    bin_dir = home / "dream-job-venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    fake = bin_dir / "dream-job"
    fake.write_text(f"#!/usr/bin/env bash\necho \"$@\" >> \"$HOME/calls.log\"\nsleep {dream_job_sleep_s}\n"
                    f"exit {dream_job_rc}\n")
    fake.chmod(0o755)
    envs = {k: str(v) for k, v in _sky_config()["envs"].items()}
    return {**envs, "HOME": str(home), "PATH": os.environ["PATH"], "SKYPILOT_NODE_IPS": "10.0.0.1\n10.0.0.2",
            "SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": "1", "SKYPILOT_NUM_GPUS_PER_NODE": "8",
            "SKYPILOT_TASK_ID": "sky-managed-2026-11-24-12-00-00-000000_dream_1-0"}


def _run_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if Path("/opt/dream-job/image/entrypoint.sh").exists():
        pytest.skip("inside the dream-job image the script takes the image branch")
    return subprocess.run(["bash", "-c", _sky_config()["run"]], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_run_script_runs_the_pipeline_in_the_task_run_dir(tmp_path: Path) -> None:
    env = _fake_machine(tmp_path)
    result = _run_script(env)
    assert result.returncode == 0, result.stderr
    run_dir = f"{env['HOME']}/dream-job-runs/{env['SKYPILOT_TASK_ID']}"
    calls = (Path(env["HOME"]) / "calls.log").read_text()
    assert calls == f"run jobs/dream-s1k.yaml --set artifacts.run_dir={run_dir}\n"


def test_run_script_names_the_run_dir_by_the_launchers_run_id(tmp_path: Path) -> None:
    env = {**_fake_machine(tmp_path), "DREAM_JOB_RUN_ID": "dream-s1k-20261124-120000"}  # set by `dream-job launch`
    assert _run_script(env).returncode == 0
    run_dir = f"{env['HOME']}/dream-job-runs/dream-s1k-20261124-120000"
    calls = (Path(env["HOME"]) / "calls.log").read_text()
    assert calls == f"run jobs/dream-s1k.yaml --set artifacts.run_dir={run_dir}\n"


def test_run_script_passes_the_transient_exit_code_through(tmp_path: Path) -> None:
    result = _run_script(_fake_machine(tmp_path, dream_job_rc=EXIT_TRANSIENT))
    assert result.returncode == EXIT_TRANSIENT


def test_run_script_caps_wall_clock_across_restarts(tmp_path: Path) -> None:
    env = {**_fake_machine(tmp_path, dream_job_sleep_s=30), "BUDGET_HOURS": "0.0006"}  # 2 s
    start = time.monotonic()
    first = _run_script(env)
    assert time.monotonic() - start < 20
    assert first.returncode == 1
    assert "stopped at the wall-clock cap `BUDGET_HOURS=0.0006`" in first.stderr
    # A recovery of the same task (same SKYPILOT_TASK_ID) finds the cap used up and never starts.
    (Path(env["HOME"]) / "calls.log").unlink()
    second = _run_script(env)
    assert second.returncode == 1
    assert "is used up" in second.stderr
    assert not (Path(env["HOME"]) / "calls.log").exists()


# --- slow: SkyPilot 0.14.1 -------------------------------------------------------------------


def _probe(python: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_probe(python, env, "sky_probe.py", *args)


def _result(completed: subprocess.CompletedProcess[str]) -> dict:
    return probe_result(completed)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_skypilot_accepts_sky_yaml(sky_python: Path, sky_env: dict[str, str]) -> None:
    task = _result(_probe(sky_python, sky_env, "load", str(SKY_YAML), "--env", "RUNS_BUCKET=my-runs"))
    print(json.dumps(task["resources"], indent=1))  # shown with -s: what SkyPilot made of the file
    assert task["name"] == "dream-job"
    assert [r["accelerators"] for r in task["resources"]] == [{"A100-80GB": 8}, {"H100": 8}]
    for resources in task["resources"]:
        assert resources["image_id"] == {"null": "docker:ghcr.io/dream-job/dream-job:0.1.0"}
        assert resources["use_spot"] is False and resources["disk_size"] == 500
        assert resources["autostop"] == {"idle_minutes": 10, "down": True}
        assert resources["job_recovery"] == {"strategy": "EAGER_NEXT_REGION", "max_restarts_on_errors": 2,
                                             "recover_on_exit_codes": [3]}
        assert "_docker_username_for_runpod" not in resources  # the API server would reject the task
    assert task["secret_refs"] == []
    assert set(task["envs"]) >= {"JOB", "DREAM_JOB_USD_PER_HOUR", "BUDGET_HOURS"}
    assert task["storage_mounts"]["/runs"]["name"] == "my-runs"  # `--env` reaches the bucket name
    assert task["storage_mounts"]["/runs"]["mode"] == "MOUNT_CACHED"
    # `run` uses exactly the node variables SkyPilot exports, spelled as SkyPilot spells them.
    used = set(re.findall(r"\$\{?(SKYPILOT_[A-Z_]+)", task["run"]))
    assert used == set(task["node_env_names"])


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize(("old", "new", "message"), [
    ("- accelerators: H100:8", "- acceleratorz: H100:8", "did you mean 'accelerators'"),
    ("mode: MOUNT_CACHED", "mode: SYNC", "'SYNC' is not one of"),
    ("max_restarts_on_errors: 2", "max_restarts_on_errors: -1", "-1 is less than the minimum of 0"),
])
def test_skypilot_rejects_a_broken_copy(sky_python: Path, sky_env: dict[str, str], tmp_path: Path,
                                        old: str, new: str, message: str) -> None:
    text = SKY_YAML.read_text(encoding="utf-8")
    assert old in text
    broken = tmp_path / "sky.yaml"
    broken.write_text(text.replace(old, new))
    completed = _probe(sky_python, sky_env, "load", str(broken), "--env", "RUNS_BUCKET=my-runs")
    assert completed.returncode == 1
    assert message in completed.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_skypilot_refuses_sky_yaml_until_the_user_names_a_run_bucket(sky_python: Path,
                                                                    sky_env: dict[str, str]) -> None:
    # No global default bucket: a bare `sky launch sky.yaml` stops at parse time, before anything is provisioned.
    completed = _probe(sky_python, sky_env, "load", str(SKY_YAML))
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
    choice = _result(_probe(sky_python, sky_env, "optimize", str(SKY_YAML), "--clouds", clouds,
                            "--env", "RUNS_BUCKET=my-runs", *extra))
    assert (choice["cloud"], choice["instance_type"], choice["accelerators"], choice["usd_per_hour"]) == expected
    assert choice["use_spot"] is False
