"""Every shipped job's printed line, as a new user runs it, through SkyPilot 0.14.1's real API server (slow).

The walk of issue 24: `dream-job estimate JOB` prints a line; the user pastes it (`sky jobs launch`
or `sky launch`, whichever it is) and answers `n` at SkyPilot's confirmation prompt, after the
server validated and optimized the task; then `dream-job launch JOB --dryrun` takes the path the
real launch takes, up to SkyPilot's dry run: the task (storage validated, the run bucket created
in S3), and for a managed job the jobs controller, placed by the project config the line names
and dry-run on its machine. One API server for the module (`sky_server_on_moto`): offline, its own
venv, catalogs seeded from real rows (`tests/tools/sky_env.py`, AWS zones as zone ids), AWS
emulated by moto on loopback (the real `sky check aws`, zone-id mapping and S3), RunPod, Vast and
Lambda passing `sky check` by `tests/tools/sky_site`.

Asserted on SkyPilot's own printed tables: its pick equals the estimate's (instance type,
region/zone, price), the GPU memory of the machine it picked (from the seeded catalog row) is the
memory the estimate planned with, and the controller is the machine and price the estimate counted.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.tools.sky_env import CATALOGS, sky_python  # noqa: F401  (fixture)
from tests.tools.sky_server import SkyServer, chosen_rows, launcher_python, plain_text, sky_server_on_moto  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

HUB = "artifacts.destinations=[hf://you/x]"
# (case, job, --set overrides, the cloud and market the estimate must choose, managed or cluster).
CASES = [
    ("vast-4090", "jobs/dream-s1k-lora-4090.yaml", [], ("vast", False, "managed")),
    # RunPod lists its spot price equal to on-demand: the on-demand offer wins the tie.
    ("runpod-4090", "jobs/dream-s1k-lora-4090.yaml", ["budget.clouds=[runpod]"], ("runpod", False, "managed")),
    ("aws-spot", "jobs/dream-s1k.yaml", [], ("aws", True, "managed")),
    # Lambda's 8x A100-80GB runs 0.52 h for ¥84 but ¥100 caps it at `BUDGET_HOURS` 0.36 h (15 min shutdown grace,
    # $22.32 + $0.192 controller): the estimate asks for ¥126 (`test_a_budget_whose_cap_ends_too_early_...`).
    ("lambda-on-demand", "jobs/dream-s1k.yaml", ["budget.clouds=[lambda]", "budget.max_cost_yuan=126"],
     ("lambda", False, "managed")),
    ("aws-cluster-zone", "jobs/dream-s1k.yaml", ["budget.clouds=[aws]", "budget.managed_job=false",
                                                 "budget.use_spot=false", "budget.max_cost_yuan=400"],
     ("aws", False, "cluster")),
    ("vast-a100-80gb", "jobs/dream-s1k-full-length.yaml", [HUB], ("vast", False, "managed")),
    ("rehearsal-7b", "jobs/rehearsal-7b.yaml", ["model.base=Dream-org/Dream-v0-Base-7B",
                                                "data.dataset=simplescaling/s1K-1.1"], None),
]
SHIPPED = {p.relative_to(REPO).as_posix() for p in (REPO / "jobs").glob("*.yaml")}
# The CPU smoke job needs its own prep run's data report (no shipped length profile); see test_sky_server.py.
NOT_WALKED = {"jobs/smoke.yaml"}


def catalog_gpu_gib(cloud: str, instance_type: str) -> float:
    """Memory per GPU of `instance_type` in the seeded catalog (`GpuInfo`; Vast's is the machine's total)."""
    for row in csv.DictReader(io.StringIO(CATALOGS[f"{cloud}/vms.csv"])):
        if row["InstanceType"] == instance_type:
            info = ast.literal_eval(row["GpuInfo"])
            count = float(row["AcceleratorCount"])
            mib = info["TotalGpuMemoryInMiB"] / count if cloud == "vast" else info["Gpus"][0]["MemoryInfo"]["SizeInMiB"]
            return mib / 1024 if cloud != "runpod" else float(mib)  # RunPod writes GB into the MiB field
    raise AssertionError(f"{instance_type} not in the seeded {cloud} catalog")


def split_line(line: str) -> tuple[dict[str, str], list[str]]:
    """The printed line as (leading `K=V` environment, `sky` argv)."""
    words = shlex.split(line)
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[0] == "sky", line
    return env, words


def expected_infra(choice: dict) -> str:
    """SkyPilot's INFRA cell for the estimate's place: on AWS the zone the estimate priced (pinned for a
    cluster, the region's cheapest for a managed job), `AWS (us-east-1a)`; elsewhere the region, `RunPod (US)`."""
    names = {"aws": "AWS", "lambda": "Lambda", "runpod": "RunPod", "vast": "Vast"}
    place = (choice["zone"] if choice["cloud"] == "aws" else None) or choice["region"]
    return f"{names[choice['cloud']]} ({place})" if place else names[choice["cloud"]]


def test_every_launchable_shipped_job_is_walked() -> None:
    assert {job for _, job, _, _ in CASES} | NOT_WALKED == SHIPPED


@pytest.mark.parametrize(("case", "job", "sets", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_printed_line_is_what_skypilot_launches(sky_server_on_moto: SkyServer, case: str, job: str,
                                                    sets: list[str], expected: tuple | None) -> None:
    server = sky_server_on_moto
    bucket = f"dream-job-walk-{case}"
    env = {"DREAM_JOB_RUNS_BUCKET": bucket, "HF_TOKEN": "hf_walk", "AWS_ACCESS_KEY_ID": server.s3.access_key,
           "AWS_SECRET_ACCESS_KEY": server.s3.secret_key}
    set_args = [arg for item in sets for arg in ("--set", item)]

    # 1. The estimate, as the user reads it: the choice, the controller, and the line (its last stdout line).
    shown = server.dream_job("estimate", job, *set_args, env=env)
    assert shown.returncode == 0, plain_text(shown)[-4000:]
    line = shown.stdout.strip().splitlines()[-1]
    estimate = json.loads(server.dream_job("estimate", job, *set_args, "--json", env=env).stdout)
    choice = estimate["choice"]
    managed = line.split("sky ", 1)[1].startswith("jobs launch")
    if expected is not None:
        assert (choice["cloud"], choice["spot"], "managed" if managed else "cluster") == expected
    assert "use1-az" not in line  # zone ids never reach SkyPilot's `--infra`
    budget_hours = float(re.search(r" --env BUDGET_HOURS=([0-9.]+) ", line)[1])  # type: ignore[index]
    assert choice["hours"] <= budget_hours  # the launch's own cap never stops the estimate's pick
    zone_pinned = not managed and choice["zone"] is not None
    if zone_pinned:
        assert f"--infra aws/us-east-1/{choice['zone']} " in line and re.fullmatch(r"us-east-1[a-f]", choice["zone"])

    # 2. The line, pasted: SkyPilot's server validates and optimizes it, the user answers `n`.
    line_env, argv = split_line(line)
    pasted = server.sky(*argv[1:], stdin="n\n", env={**env, **line_env})
    output = plain_text(pasted)
    assert pasted.returncode == 1 and "Aborted!" in output, output[-4000:]
    assert "Error" not in output.replace("Aborted!", ""), output[-4000:]
    (pick,) = chosen_rows(output)
    spot = " [Spot]" if choice["spot"] else ""
    assert pick["instance"].replace("[Spot]", " [Spot]").replace("  ", " ") == choice["instance_type"] + spot
    assert pick["infra"] == expected_infra(choice)
    assert float(pick["usd"]) == pytest.approx(choice["usd_per_hour"], abs=0.005)  # SkyPilot shows cents
    assert catalog_gpu_gib(choice["cloud"], choice["instance_type"]) == pytest.approx(_vram(estimate), rel=0.01)

    # 3. `dream-job launch --dryrun`: the same task through SkyPilot's dry run, then its controller.
    dry = server.dream_job("launch", job, *set_args, "--dryrun", env=env)
    dry_output = plain_text(dry)
    assert dry.returncode == 0, dry_output[-5000:]
    rows = chosen_rows(dry_output)
    assert rows[0]["instance"] == pick["instance"] and float(rows[0]["usd"]) == float(pick["usd"])
    assert rows[0]["infra"] == pick["infra"]
    if managed:
        controller = estimate["controller"]
        assert line_env == {"SKYPILOT_PROJECT_CONFIG": ".dream-job/sky-controller-aws-us-east-1-m6i-xlarge.yaml"}
        assert len(rows) == 2, dry_output[-5000:]
        # SkyPilot's table shows cents.
        assert rows[1]["instance"] == controller["instance_type"]
        assert float(rows[1]["usd"]) == pytest.approx(controller["usd_per_hour"], abs=0.005)
        assert rows[1]["infra"].startswith("AWS (us-east-1")
        assert "controller: `m6i.xlarge` on `aws/us-east-1` at $0.192/h" in dry_output
    else:
        assert len(rows) == 1 and line_env == {}
    # Storage: where the task mounts the run bucket, SkyPilot validated it and created it in S3.
    buckets = {b["Name"] for b in server.s3.client().list_buckets()["Buckets"]}
    mounts = choice["cloud"] in ("aws", "lambda")
    assert (bucket in buckets) == mounts
    assert (f"--env RUNS_BUCKET={bucket}" in line) == mounts


def test_a_budget_whose_cap_ends_too_early_is_refused_with_the_budget_that_launches(
        sky_server_on_moto: SkyServer) -> None:
    # Lambda's only machine that runs the job, 8x A100-80GB, needs 0.519 h: ¥100 buys 37 min at $22.512/h
    # (with the controller), `BUDGET_HOURS` 0.36 h after the 15 min grace; 0.52 h + 15 min = 47 min = ¥125.20.
    shown = sky_server_on_moto.dream_job("estimate", "jobs/dream-s1k.yaml", "--set", "budget.clouds=[lambda]",
                                         env={"DREAM_JOB_RUNS_BUCKET": "dream-job-walk-lambda"})
    output = plain_text(shown)
    assert shown.returncode == 1, output[-3000:]
    assert "hint: raise the budget to at least ¥126: `--set budget.max_cost_yuan=126`" in output, output[-3000:]


def _vram(estimate: dict) -> float:
    choice = estimate["choice"]
    return next(c["vram_gib"] for c in estimate["candidates"]
                if (c["cloud"], c["instance_type"], c["spot"], c["method"]) == (
                    choice["cloud"], choice["instance_type"], choice["spot"], choice["method"]))


def test_a_task_yamls_own_config_section_cannot_place_the_controller(sky_server_on_moto: SkyServer,
                                                                     tmp_path: Path) -> None:
    # Why the line names a project config file: SkyPilot's client lets a task's `config:` through, its
    # server enforces the keys a task may override (`OVERRIDEABLE_CONFIG_KEYS_IN_TASK`), and
    # `jobs.controller.resources` is not one of them.
    text = (REPO / "sky.yaml").read_text(encoding="utf-8")
    copy = tmp_path / "sky-with-config.yaml"
    copy.write_text(text + "config:\n  jobs:\n    controller:\n      resources:\n        infra: aws/us-east-1\n",
                    encoding="utf-8")
    completed = sky_server_on_moto.sky("jobs", "launch", "--env", "RUNS_BUCKET=dream-job-walk-config",
                                       "--env", "BUDGET_HOURS=6", "--env", "DREAM_JOB_USD_PER_HOUR=3", str(copy),
                                       stdin="n\n")
    output = plain_text(completed)
    assert completed.returncode == 1 and "Aborted!" not in output, output[-3000:]
    assert ("InvalidSkyPilotConfigError: Invalid resources.config override: Found unsupported field 'jobs'."
            in output), output[-3000:]
