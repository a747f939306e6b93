"""`sky.yaml` and `dream-job launch` through SkyPilot 0.14.1's real API server, offline (slow).

One local API server per module (`tests/tools/sky_server.py`: started by `sky api start` on a
temp HOME with the seeded catalogs, clouds passing `sky check`, S3 on SeaweedFS, a loopback EC2
that answers `DescribeImages`), and the CLIs as real subprocesses of the sky venv against it:

- `sky launch --dryrun -y sky.yaml`: validation, optimizer, the chosen cloud's feature check
  (with failover) and the cluster config, nothing provisioned.
- `sky jobs launch sky.yaml`: 0.14.1 has no `--dryrun` here; without `-y` the client has the
  server validate and optimize the task, prints the choice and asks `Proceed?`. Answering `n`
  stops there (exit 1, "Aborted!") before anything is submitted: that is the dry-run form.
- `dream-job launch JOB --dryrun` for every file in `jobs/`: dream-job's CLI from this repo in
  the sky venv; the launch calls SkyPilot's client SDK (`sky.launch(..., dryrun=True)`) and the
  server prints the machine it chose, which must be the offer dream-job priced.

SkyPilot's printed table is the thing asserted on: cloud, instance, GPUs and price of the
chosen (✔) row, with expected values computed from the seeded catalogs.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.tools.sky_env import CATALOGS, sky_python  # noqa: F401  (fixture)
from tests.tools.sky_server import (  # noqa: F401  (fixtures)
    SkyServer, chosen_rows, free_port, launcher_python, plain_text, sky_server,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SKY_YAML = "sky.yaml"
# sky.yaml leaves the caps `null`: a launch by hand passes them, as the estimate's line does.
CAPS = ("--env", "BUDGET_HOURS=6", "--env", "DREAM_JOB_USD_PER_HOUR=3")
JOBS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "jobs").glob("*.yaml"))
# Clouds among the seeded ones where SkyPilot can mount the task's S3 bucket (RunPod and Vast cannot).
MOUNT_CLOUDS = {"aws", "lambda"}
# `sky.yaml`'s candidates (`resources.any_of`), as (GPU, count).
SKY_YAML_CANDIDATES = {("H100", 8), ("A100-80GB", 8)}


def table_sizes(output: str) -> list[int]:
    """Number of candidate rows in each `Considered resources` table."""
    sizes, count, inside = [], 0, False
    for line in output.splitlines():
        if line.startswith("Considered resources"):
            inside, count = True, -1  # the header row comes first
        elif inside and line.startswith("-") and count > 0:
            sizes.append(count)
            inside = False
        elif inside and line.strip() and not line.startswith("-"):
            count += 1
    return sizes


def catalog_rows() -> list[dict[str, str]]:
    """Every seeded on-demand catalog row, with its cloud."""
    rows = []
    for name, text in CATALOGS.items():
        if name.endswith("/vms.csv"):
            for row in csv.DictReader(io.StringIO(text)):
                rows.append({**row, "cloud": name.split("/")[0]})
    return rows


def cheapest(candidates: set[tuple[str, int]], clouds: set[str]) -> dict[str, str]:
    """The cheapest on-demand catalog row for any of `candidates` on `clouds` (SkyPilot's optimizer, by hand)."""
    rows = [r for r in catalog_rows() if r["cloud"] in clouds
            and r["AcceleratorName"] and (r["AcceleratorName"], int(float(r["AcceleratorCount"]))) in candidates]
    return min(rows, key=lambda r: float(r["Price"]))


def _launch_job(server: SkyServer, job: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return server.dream_job("launch", job, "--dryrun", *args, **kwargs)  # type: ignore[arg-type]


# --- `sky launch --dryrun` and `sky jobs launch` on sky.yaml ------------------------------------


def test_sky_launch_dryrun_accepts_sky_yaml_and_fails_over_to_a_cloud_that_mounts_the_bucket(
        sky_server: SkyServer) -> None:
    completed = sky_server.sky("launch", "--dryrun", "-y", "--env", "RUNS_BUCKET=dream-job-test-sky-launch", *CAPS,
                               SKY_YAML)
    output = plain_text(completed)
    assert completed.returncode == 0, output[-4000:]
    assert "Dryrun finished." in output and "_docker_username_for_runpod" not in output
    first, final = chosen_rows(output)
    # The optimizer takes the cheapest candidate anywhere; its feature check then refuses the bucket
    # mount there, and the dry run fails over as a launch would, to the cheapest cloud that mounts it.
    best = cheapest(SKY_YAML_CANDIDATES, {"aws", "lambda", "runpod", "vast"})
    assert best["cloud"] == "runpod"  # the seeded catalogs make the failover happen
    assert (first["instance"], float(first["usd"])) == (best["InstanceType"], float(best["Price"]))
    assert "storage_mounting" in output and "not supported by RunPod" in output
    mounted = cheapest(SKY_YAML_CANDIDATES, MOUNT_CLOUDS)
    assert final["infra"].lower().startswith(mounted["cloud"])
    assert (final["instance"], final["gpus"], float(final["usd"])) == (
        mounted["InstanceType"], f"{mounted['AcceleratorName']}:{mounted['AcceleratorCount']}", float(mounted["Price"]))
    # SkyPilot creates a missing bucket of `file_mounts` even in a dry run.
    buckets = {b["Name"] for b in sky_server.s3.client().list_buckets()["Buckets"]}
    assert "dream-job-test-sky-launch" in buckets


def test_sky_jobs_launch_is_validated_and_optimized_by_the_server_then_stopped_at_the_prompt(
        sky_server: SkyServer) -> None:
    completed = sky_server.sky("jobs", "launch", "--env", "RUNS_BUCKET=dream-job-test-jobs-launch", *CAPS,
                               SKY_YAML, stdin="n\n")
    output = plain_text(completed)
    assert completed.returncode == 1, output[-4000:]
    assert "Managed job 'dream-job' will be launched on (estimated):" in output
    assert "Launching a managed job 'dream-job'. Proceed?" in output and "Aborted!" in output
    (choice,) = chosen_rows(output)
    best = cheapest(SKY_YAML_CANDIDATES, {"aws", "lambda", "runpod", "vast"})
    assert choice["infra"].lower().startswith(best["cloud"])
    assert (choice["instance"], float(choice["usd"])) == (best["InstanceType"], float(best["Price"]))
    # Nothing was submitted: no managed job, no cluster (not even the jobs controller).
    queue = plain_text(sky_server.sky("jobs", "queue"))
    assert "No in-progress managed jobs" in queue
    assert "No existing clusters" in plain_text(sky_server.sky("status"))


# --- `dream-job launch --dryrun` for every job ---------------------------------------------------


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`jobs/smoke.yaml`'s data report from a real `dream-job prep` (its dataset has no shipped profile)."""
    run_dir = tmp_path_factory.mktemp("smoke-prep") / "run"
    prep = subprocess.run([sys.executable, "-m", "dream_job", "prep", "jobs/smoke.yaml", "--set",
                           f"artifacts.run_dir={run_dir}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    assert prep.returncode == 0, prep.stderr[-3000:]
    return run_dir / "data" / "data_report.json"


def job_inputs(job: str, smoke_report: Path) -> list[str]:
    """Inputs a job needs that a clean checkout lacks (a job not listed needs none)."""
    return {
        # Token lengths from its own prep run; ¥1 buys no cloud GPU for the 0.3 h it needs, and ¥2 a `BUDGET_HOURS`
        # cap shorter than that after the 15 min shutdown grace (the estimate's error names ¥3).
        "jobs/smoke.yaml": ["--data-report", str(smoke_report), "--set", "budget.max_cost_yuan=3"],
        # `bench/rehearsal.py` writes its 7B folder and data; the hub model and dataset have the same shape.
        "jobs/rehearsal-7b.yaml": ["--set", "model.base=Dream-org/Dream-v0-Base-7B",
                                   "--set", "data.dataset=simplescaling/s1K-1.1"],
    }.get(job, [])


OFFER = re.compile(r"^offer: (?P<gpus>\S+) `(?P<instance>[^`]+)` pinned to `(?P<cloud>[^/`]+)/(?P<place>[^`]+)`, "
                   r"(?P<market>spot|on-demand), \$(?P<usd>[0-9.]+)/h", re.MULTILINE)


@pytest.mark.parametrize("job", JOBS)
def test_dream_job_launch_dryrun_gets_the_priced_machine_from_skypilots_server(
        sky_server: SkyServer, smoke_report: Path, job: str) -> None:
    bucket = f"dream-job-test-{Path(job).stem}"
    completed = _launch_job(sky_server, job, "--env", f"RUNS_BUCKET={bucket}", *job_inputs(job, smoke_report),
                            env={"HF_TOKEN": "hf_test_value"})
    output = plain_text(completed)
    assert completed.returncode == 0, output[-4000:]
    offer = OFFER.search(output)
    assert offer, output[-3000:]
    run_id = re.search(r"^run: `([^`]+)`", output, re.MULTILINE)[1]  # type: ignore[index]
    assert f"Running on cluster: {run_id}" in output and "Dryrun finished." in output
    assert completed.stdout.strip().splitlines()[-1] == run_id  # stdout ends with the run id alone
    # The offer is pinned (cloud, place, instance): SkyPilot considers that one machine only and takes it.
    # A managed job's dry run then places its jobs controller (`budget.controller_infra`): one machine again.
    managed = " as managed job (`sky jobs launch`" in output
    assert table_sizes(output) == ([1, 1] if managed else [1])
    choice, *controller = chosen_rows(output)
    if managed:
        assert [(c["infra"].split(" ")[0], c["instance"], c["usd"]) for c in controller] == [
            ("AWS", "m6i.xlarge", "0.19")]
    spot = offer["market"] == "spot"
    assert choice["instance"] == offer["instance"] + ("[Spot]" if spot else "")
    assert choice["gpus"] == offer["gpus"] and float(choice["usd"]) == float(offer["usd"])
    # AWS: this server has no AWS identity, so SkyPilot cannot map the catalog's zone ids to names and shows
    # the id of the region's zone it picked (`test_launch_walk.py` checks zone names, with moto's mapping).
    place = offer["place"].lower()
    shown = choice["infra"].lower()
    assert shown.startswith(f"{offer['cloud']} ({place}") or (
        offer["cloud"] == "aws" and place == "us-east-1" and re.fullmatch(r"aws \(use1-az\d\)", shown)), shown
    # ... and that machine and price are in the seeded catalog.
    prices = {float(r["SpotPrice"] if spot else r["Price"]) for r in catalog_rows()
              if r["cloud"] == offer["cloud"] and r["InstanceType"] == offer["instance"]}
    assert float(offer["usd"]) in prices


# --- SkyPilot's errors reach the user as one sentence --------------------------------------------


def test_a_task_the_server_rejects_is_one_sentence_naming_the_file_and_the_job(
        sky_server: SkyServer, tmp_path: Path) -> None:
    # The RunPod user as SkyPilot documents it: `sky.Task.from_yaml` takes it, the 0.14.1 server does not.
    text = (REPO / SKY_YAML).read_text(encoding="utf-8")
    anchor = "  RUNS_BUCKET: null\n"
    assert anchor in text
    copy = tmp_path / "sky-runpod-user.yaml"
    copy.write_text(text.replace(anchor, anchor + "  SKYPILOT_RUNPOD_DOCKER_USERNAME: dreamjob\n"), encoding="utf-8")

    by_hand = sky_server.sky("launch", "--dryrun", "-y", "--env", "RUNS_BUCKET=dream-job-test-rejected", *CAPS,
                             str(copy))
    assert by_hand.returncode == 1
    assert "Found unsupported field '_docker_username_for_runpod'" in plain_text(by_hand)  # SkyPilot's bug, still there

    completed = _launch_job(sky_server, "jobs/dream-s1k.yaml", "--env", "RUNS_BUCKET=dream-job-test-rejected",
                            "--sky-yaml", str(copy))
    assert completed.returncode == 1
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    run_id = re.search(r"^run: `([^`]+)`", completed.stderr, re.MULTILINE)[1]  # type: ignore[index]
    assert errors == [f"error: SkyPilot rejects run `{run_id}` of `jobs/dream-s1k.yaml` (task `{copy}`)"]
    assert ("caused by: InvalidSkyPilotConfigError: Invalid resources YAML: Found unsupported field "
            "'_docker_username_for_runpod'.") in completed.stderr
    assert f"hint: fix `{copy}` as SkyPilot says" in completed.stderr
    assert "a bug in dream-job" not in completed.stderr and "Traceback" not in completed.stderr


def test_a_bucket_skypilot_did_not_create_is_one_sentence_with_the_bucket_hint(sky_server: SkyServer) -> None:
    bucket = sky_server.s3.create_bucket("dream-job-test-not-skypilots")
    completed = _launch_job(sky_server, "jobs/dream-s1k.yaml", "--env", f"RUNS_BUCKET={bucket}")
    assert completed.returncode == 1
    assert "error: SkyPilot rejects run `" in completed.stderr
    assert (f"caused by: StorageSpecError: Attempted to mount a non-sky managed bucket '{bucket}' without "
            "specifying the storage source.") in completed.stderr
    assert "hint: the run bucket is `RUNS_BUCKET`: pass a bucket name SkyPilot may create" in completed.stderr
    assert "a bug in dream-job" not in completed.stderr and "Traceback" not in completed.stderr


def test_an_api_server_that_cannot_be_reached_is_transient(sky_server: SkyServer) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens; not the local port, so none is started
    completed = _launch_job(sky_server, "jobs/dream-s1k.yaml", "--env", "RUNS_BUCKET=dream-job-test-unreachable",
                            env={"SKYPILOT_API_SERVER_ENDPOINT": endpoint})
    assert completed.returncode == 3, completed.stderr[-3000:]
    assert "error: SkyPilot's API server cannot be reached, so run `" in completed.stderr
    assert "caused by: ApiServerConnectionError:" in completed.stderr and endpoint in completed.stderr
    assert "a bug in dream-job" not in completed.stderr
