"""SkyPilot in its own venv, offline, for the slow tests (`test_sky_yaml.py`, `test_launch_sky.py`).

SkyPilot pins `click<8.2`, the project needs click>=8.4.2, so `skypilot==0.14.1` lives in a
cached venv (`~/.cache/dream-job-test/sky-venv`, shared by parallel sessions under a lock) and
the probes in this folder run there as subprocesses with `HOME` and `SKY_RUNTIME_DIR` in a temp
folder seeded with tiny v8 catalogs: nothing lands in the real `~/.sky`, nothing is fetched.
The fixtures `sky_python` and `sky_env` are imported by the test modules that use them.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

CACHE = Path(os.environ.get("DREAM_JOB_TEST_CACHE", "~/.cache/dream-job-test")).expanduser()
SKY_VENV = CACHE / "sky-venv"
SKY_VERSION = "0.14.1"
TOOLS = REPO / "tests" / "tools"
RESULT_MARK = "SKY_PROBE_RESULT "

# A few real rows in SkyPilot's v8 catalog format (prices from budget/data/prices.csv, the
# skypilot-catalog snapshot read 2026-11-24). RunPod's GpuInfo stores GB in `SizeInMiB`, as the
# real catalog does. No `.md5` files: SkyPilot then treats them as user-provided, never refetched.
# `budget.estimate` reads the same files (`~/.sky/catalogs/v8` under the temp HOME).
CATALOGS = {
    "common/accelerators.csv": """\
AcceleratorName,Clouds
A100-80GB,"['Lambda', 'RunPod']"
H100,"['Lambda']"
RTX4090,"['RunPod']"
""",
    "lambda/vms.csv": """\
InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,Region,GpuInfo,SpotPrice
gpu_8x_a100_80gb_sxm4,A100-80GB,8,240,1800,22.32,us-east-1,"{'Gpus': [{'Name': 'A100-80GB', 'Manufacturer': 'NVIDIA', 'Count': 8.0, 'MemoryInfo': {'SizeInMiB': 81920}}], 'TotalGpuMemoryInMiB': 655360}",
gpu_8x_h100_sxm5,H100,8,208,1800,31.92,us-east-1,"{'Gpus': [{'Name': 'H100', 'Manufacturer': 'NVIDIA', 'Count': 8.0, 'MemoryInfo': {'SizeInMiB': 81920}}], 'TotalGpuMemoryInMiB': 655360}",
gpu_1x_h100_sxm5,H100,1,26,225,4.29,us-east-1,"{'Gpus': [{'Name': 'H100', 'Manufacturer': 'NVIDIA', 'Count': 1.0, 'MemoryInfo': {'SizeInMiB': 81920}}], 'TotalGpuMemoryInMiB': 81920}",
""",
    "runpod/vms.csv": """\
InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Region,SpotPrice,Price,AvailabilityZone,GpuInfo
8x_A100-80GB_SECURE,A100-80GB,8,128,936,US,11.12,11.12,US-KS-2,"{'Gpus': [{'Name': 'A100-80GB', 'Manufacturer': 'NVIDIA', 'Count': 8.0, 'MemoryInfo': {'SizeInMiB': 80}}], 'TotalGpuMemoryInMiB': 640}"
1x_RTX4090_SECURE,RTX4090,1,16,29,US,0.74,0.74,US-KS-2,"{'Gpus': [{'Name': 'RTX4090', 'Manufacturer': 'NVIDIA', 'Count': 1.0, 'MemoryInfo': {'SizeInMiB': 24}}], 'TotalGpuMemoryInMiB': 24}"
""",
}


@pytest.fixture(scope="module")
def sky_python() -> Path:
    """Return the python of a venv with skypilot==0.14.1, made once and cached."""
    python = SKY_VENV / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "sky-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions share the cache
        probe = "import importlib.metadata as m; print(m.version('skypilot'))"
        if python.exists() and subprocess.run([python, "-c", probe], capture_output=True, text=True,
                                              check=False).stdout.strip() == SKY_VERSION:
            return python
        shutil.rmtree(SKY_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(SKY_VENV)], check=True)
        install = subprocess.run([python, "-m", "pip", "install", "--quiet", f"skypilot=={SKY_VERSION}"],
                                 capture_output=True, text=True, timeout=900, check=False)
        if install.returncode != 0:
            shutil.rmtree(SKY_VENV, ignore_errors=True)
            pytest.skip(f"`pip install skypilot=={SKY_VERSION}` failed: {install.stderr[-800:]}")
    return python


@pytest.fixture
def sky_env(tmp_path: Path) -> dict[str, str]:
    """Environment for SkyPilot: state and seeded catalogs under a temp HOME, no usage reporting.

    SkyPilot's dry run checks that an `rsync` binary exists (it syncs nothing): a stub stands in
    where the machine has none.
    """
    home = tmp_path / "sky-home"
    for name, text in CATALOGS.items():
        path = home / ".sky" / "catalogs" / "v8" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "SKY_", "DREAM_JOB_"))}
    if shutil.which("rsync") is None:
        stub = tmp_path / "stub-bin" / "rsync"
        stub.parent.mkdir()
        stub.write_text("#!/bin/sh\necho 'rsync  version 3.2.7  protocol version 31 (test stub)'\n")
        stub.chmod(0o755)
        env["PATH"] = f"{stub.parent}{os.pathsep}{env['PATH']}"
    return {**env, "HOME": str(home), "SKY_RUNTIME_DIR": str(home), "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}


def run_probe(python: Path, env: dict[str, str], script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `tests/tools/<script>` with the sky venv's python, the repo as working dir and on PYTHONPATH."""
    env = {**env, "PYTHONPATH": str(REPO)}
    return subprocess.run([str(python), str(TOOLS / script), *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)


def probe_result(completed: subprocess.CompletedProcess[str], *, ok: bool = True) -> dict:
    """Return the probe's marked JSON line; `ok`: also assert it exited 0."""
    if ok:
        assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARK))
    return json.loads(line[len(RESULT_MARK):])
