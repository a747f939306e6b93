"""The estimate's launch line, pasted into SkyPilot's CLI, is `dream-job launch`'s task and the estimate's machine.

Slow: SkyPilot 0.14.1 in its own venv (`tests/tools/sky_env.py`), offline, on seeded v8 catalogs
with decoys (Vast's cheaper 40 GB A100s, Vast's 0.00 spot, AWS spot prices spread over zones).
`tests/tools/line_probe.py` plans each job as `dream-job estimate` does, runs the printed line
through SkyPilot's own click command up to its SDK submit, builds the task `dream-job launch`
submits, and asks SkyPilot's optimizer what each would run on.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.tools.sky_env import SEEDED_CLOUDS, probe_result, run_probe, sky_env, sky_python  # noqa: F401

pytestmark = pytest.mark.slow

# Jobs that run only where their local assets are (the CPU smoke job; the GPU rehearsal, whose
# assets `bench/rehearsal.py` writes): their launch stops at the estimate with one sentence.
LOCAL_ONLY = {
    "smoke.yaml": "error: no data report for `data.dataset` `jobs/assets/smoke/one-digit-carry.jsonl`, and the "
    "shipped length profile covers `simplescaling/s1K-1.1` only",
    "rehearsal-7b.yaml": "error: the estimate does not know the shape of `model.base` `runs/rehearsal-assets/7b/base`",
}
LAUNCHABLE = sorted(p.name for p in (REPO / "jobs").glob("*.yaml") if p.name not in LOCAL_ONLY)
HUB = "artifacts.destinations=[hf://you/x]"


def _probe(sky_python: Path, sky_env: dict[str, str], job: str, *sets: str) -> dict:
    args = [f"jobs/{job}", "--clouds", SEEDED_CLOUDS]
    for item in sets:
        args += ["--set", item]
    env = {**sky_env, "HF_TOKEN": "hf_probe", "DREAM_JOB_RUNS_BUCKET": "dream-job-line-probe"}
    return probe_result(run_probe(sky_python, env, "line_probe.py", *args))


def _assert_one_launch(result: dict) -> None:
    choice = result["choice"]
    assert result["cli"] == result["launch"], "the pasted line and `dream-job launch` build different tasks"
    assert result["cli_kwargs"].get("idle_minutes_to_autostop") == result["launch_kwargs"].get(
        "idle_minutes_to_autostop")
    for pick in (result["cli_pick"], result["launch_pick"]):
        assert (pick["cloud"], pick["instance_type"], pick["use_spot"]) == (
            choice["cloud"], choice["instance_type"], choice["spot"])
        assert pick["usd_per_hour"] == pytest.approx(choice["usd_per_hour"])
        assert pick["region"] == choice["region"]


@pytest.mark.parametrize("job", LAUNCHABLE)
def test_every_job_line_is_the_launch_task_and_the_estimated_machine(sky_python: Path, sky_env: dict[str, str],
                                                                      job: str) -> None:
    result = _probe(sky_python, sky_env, job)
    _assert_one_launch(result)
    assert f"--env JOB=jobs/{job}" in result["line"] and "--env DREAM_JOB_RUN_ID=" in result["line"]
    assert result["cli"]["envs"]["BUDGET_HOURS"] == result["launch"]["envs"]["BUDGET_HOURS"]
    # The job travels as content: the task SkyPilot parsed from the pasted line carries it, and its
    # sha256 is the digest on the line, which `dream-job task` checks on the machine.
    carried = result["cli"]["envs"]["DREAM_JOB_SPEC"]
    digest = re.search(r"--env DREAM_JOB_SPEC_SHA256=([0-9a-f]{64}) ", result["line"])
    assert digest and hashlib.sha256(carried.encode("utf-8")).hexdigest() == digest[1]
    assert yaml.safe_load(carried)["name"] == yaml.safe_load((REPO / "jobs" / job).read_text())["name"]


def test_vast_80gb_a100_is_pinned_past_the_cheaper_40gb_decoys(sky_python: Path, sky_env: dict[str, str]) -> None:
    result = _probe(sky_python, sky_env, "dream-s1k-full-length.yaml", HUB)
    assert (result["choice"]["cloud"], result["choice"]["instance_type"], result["choice"]["vram_gib"]) == (
        "vast", "1x-A100_PCIE-32-65536", 80.0)
    _assert_one_launch(result)
    assert "--infra 'vast/Oklahoma, US, NA' -t 1x-A100_PCIE-32-65536 --gpus A100:1 --no-use-spot" in result["line"]
    assert re.search(r"--secret HF_TOKEN \.dream-job/dream-s1k-full-length-\d{8}-\d{6}\.yaml$", result["line"])
    assert result["cli"]["storage_mounts"] == []  # Vast has no FUSE: the derived template has no bucket mount
    # What the old line (GPU name and cloud only) got from the same optimizer: the 40 GB card.
    unpinned = probe_result(run_probe(sky_python, sky_env, "sky_probe.py", "optimize", "sky.yaml", "--clouds", "vast",
                                      "--gpus", "A100:1", "--no-mounts", "--env", "BUDGET_HOURS=6",
                                      "--env", "DREAM_JOB_USD_PER_HOUR=3", "--env", "RUNS_BUCKET=unused"))
    assert (unpinned["instance_type"], unpinned["usd_per_hour"]) == ("1x-A100_SXM4-32-65536", 0.76)


def test_aws_spot_is_budgeted_at_the_dearest_zone_a_managed_job_may_recover_into(
        sky_python: Path, sky_env: dict[str, str]) -> None:
    # AWS only: with evaluation priced on one GPU, Lambda's single H100 undercuts 8x A100 overall.
    result = _probe(sky_python, sky_env, "dream-s1k.yaml", "budget.clouds=[aws]")
    assert result["mode"] == "managed"
    assert (result["choice"]["instance_type"], result["choice"]["usd_per_hour"]) == ("p4d.24xlarge", 2.47)
    _assert_one_launch(result)
    assert "--infra aws/us-east-1 -t p4d.24xlarge --gpus A100:8 --use-spot" in result["line"]
    assert "--env DREAM_JOB_USD_PER_HOUR=8.19" in result["line"]  # us-east-1c, not the cheapest zone's 2.47


def test_a_cluster_without_skypilots_zone_mapping_is_pinned_to_its_region_never_a_zone_id(
        sky_python: Path, sky_env: dict[str, str]) -> None:
    # No AWS credentials here: SkyPilot has no zone-name mapping, so the catalog's zone ids stay ids
    # (`tests/integration/test_launch_walk.py` pins a zone name with moto's mapping).
    result = _probe(sky_python, sky_env, "dream-s1k.yaml", "budget.managed_job=false", "budget.use_spot=false",
                    "budget.clouds=[aws]",
                    "budget.max_cost_yuan=400")
    assert result["mode"] == "cluster"
    _assert_one_launch(result)
    choice = result["choice"]
    assert choice["zone"] is None and "use1-az" not in result["line"]
    assert f"--infra aws/us-east-1 -t {choice['instance_type']}" in result["line"]
    assert result["cli_kwargs"]["wait_for"] == result["launch_kwargs"]["wait_for"] == "none"
    assert result["cli_kwargs"]["down"] == result["launch_kwargs"]["down"] == "True"
    assert f"--env DREAM_JOB_USD_PER_HOUR={choice['usd_per_hour']:g}" in result["line"]


@pytest.mark.parametrize("job", sorted(LOCAL_ONLY))
def test_local_only_jobs_are_not_launchable_and_say_why(sky_python: Path, sky_env: dict[str, str], job: str) -> None:
    completed = run_probe(sky_python, sky_env, "line_probe.py", f"jobs/{job}", "--clouds", SEEDED_CLOUDS)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == LOCAL_ONLY[job]
