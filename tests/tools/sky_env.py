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
# skypilot-catalog snapshot read 2026-11-24; Vast's names and regions as its v8 catalog 01b8cdda
# writes them), with decoys a launch must not fall for: Vast's 40 GB A100s (one card, and two
# cards whose `GpuInfo` holds their 80 GB total) cheaper than its 80 GB one, Vast's 0.00 spot
# prices, AWS spot prices spread over the zones of a region, AWS zones as zone *ids* (`use1-az6`,
# what the real catalog holds; SkyPilot maps them to the account's zone names), RunPod's GB in
# `SizeInMiB`. AWS also lists `m6i.xlarge`, the jobs controller's machine (`budget/controller.py`).
# No `.md5` files: SkyPilot then treats them as user-provided, never refetched.
# `budget.estimate` reads the same files (`~/.sky/catalogs/v8` under the temp HOME); every cloud
# of the shipped snapshot is here, so no snapshot price mixes in.
def _gpu_info(name: str, mib: int, count: int) -> str:
    return ('"{\'Gpus\': [{\'Name\': \'%s\', \'Manufacturer\': \'NVIDIA\', \'Count\': %d.0, \'MemoryInfo\': '
            '{\'SizeInMiB\': %d}}], \'TotalGpuMemoryInMiB\': %d}"' % (name, count, mib, mib * count))


CATALOGS = {
    "common/accelerators.csv": """\
AcceleratorName,Clouds
A100,"['AWS', 'Lambda', 'Vast']"
A100-80GB,"['AWS', 'Lambda', 'RunPod']"
H100,"['AWS', 'Lambda']"
H100-SXM,"['RunPod']"
RTX4090,"['RunPod', 'Vast']"
""",
    "lambda/vms.csv": f"""\
InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,Region,GpuInfo,SpotPrice
gpu_8x_a100_80gb_sxm4,A100-80GB,8,240,1800,22.32,us-east-1,{_gpu_info('A100-80GB', 81920, 8)},
gpu_8x_h100_sxm5,H100,8,208,1800,31.92,us-east-1,{_gpu_info('H100', 81920, 8)},
gpu_1x_h100_sxm5,H100,1,26,225,4.29,us-east-1,{_gpu_info('H100', 81920, 1)},
gpu_1x_h100_sxm5,H100,1,26,225,4.49,us-west-1,{_gpu_info('H100', 81920, 1)},
""",
    "runpod/vms.csv": f"""\
InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Region,SpotPrice,Price,AvailabilityZone,GpuInfo
8x_A100-80GB_SECURE,A100-80GB,8,128,936,US,11.12,11.12,US-KS-2,{_gpu_info('A100-80GB', 80, 8)}
1x_A100-80GB_SECURE,A100-80GB,1,16,117,US,1.39,1.39,US-KS-2,{_gpu_info('A100-80GB', 80, 1)}
1x_H100-SXM_SECURE,H100-SXM,1,16,125,US,3.29,3.29,US-KS-2,{_gpu_info('H100-SXM', 80, 1)}
1x_RTX4090_SECURE,RTX4090,1,16,29,US,0.74,0.74,US-KS-2,{_gpu_info('RTX4090', 24, 1)}
4x_RTX4090_SECURE,RTX4090,4,64,116,US,2.96,2.96,US-KS-2,{_gpu_info('RTX4090', 24, 4)}
""",
    "vast/vms.csv": f"""\
InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region
1x-A100_PCIE-32-65536,A100,1,32,64.0,{_gpu_info('A100', 81920, 1)},0.87,0.00,"Oklahoma, US, NA"
1x-A100_SXM4-32-65536,A100,1,32,64.0,{_gpu_info('A100', 40960, 1)},0.76,0.00,"Georgia, US, NA"
2x-A100_SXM4-32-65536,A100,2,32,64.0,{_gpu_info('A100', 81920, 2)},1.49,0.00,"Slovenia, SI, EU"
1x-RTX_4090-32-65536,RTX4090,1,32,64,{_gpu_info('RTX4090', 24564, 1)},0.40,0.00,"Germany, DE, EU"
4x-RTX_4090-32-65536,RTX4090,4,32,64,{_gpu_info('RTX4090', 98256, 4)},1.39,0.00,"Germany, DE, EU"
""",
    "aws/vms.csv": f"""\
InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone,Arch
p4d.24xlarge,A100,8,96.0,1152.0,{_gpu_info('A100', 40960, 8)},21.96,2.47,us-east-1,use1-az6,x86_64
p4d.24xlarge,A100,8,96.0,1152.0,{_gpu_info('A100', 40960, 8)},21.96,7.88,us-east-1,use1-az1,x86_64
p4d.24xlarge,A100,8,96.0,1152.0,{_gpu_info('A100', 40960, 8)},21.96,8.19,us-east-1,use1-az2,x86_64
p4de.24xlarge,A100-80GB,8,96.0,1152.0,{_gpu_info('A100-80GB', 81920, 8)},27.45,8.65,us-east-1,use1-az2,x86_64
p4de.24xlarge,A100-80GB,8,96.0,1152.0,{_gpu_info('A100-80GB', 81920, 8)},27.45,9.97,us-east-1,use1-az6,x86_64
p5.4xlarge,H100,1,16.0,256.0,{_gpu_info('H100', 81920, 1)},6.88,,us-east-1,use1-az6,x86_64
p5.48xlarge,H100,8,192.0,2048.0,{_gpu_info('H100', 81920, 8)},55.04,10.20,us-east-1,use1-az6,x86_64
p5.48xlarge,H100,8,192.0,2048.0,{_gpu_info('H100', 81920, 8)},55.04,25.80,us-east-1,use1-az1,x86_64
m6i.xlarge,,,4.0,16.0,,0.192,0.0668,us-east-1,use1-az6,x86_64
m6i.xlarge,,,4.0,16.0,,0.192,0.0710,us-east-1,use1-az1,x86_64
m6i.xlarge,,,4.0,16.0,,0.192,0.0699,us-east-1,use1-az2,x86_64
""",
}
SEEDED_CLOUDS = "aws,lambda,runpod,vast"

# Catalog files SkyPilot's dry run reads besides `vms.csv` (it fetches them when missing): the AWS
# machine image for the pinned region (fake AMI ids; the dry run only looks them up) and the quota
# codes (none listed: SkyPilot then skips its quota check, as for any unlisted instance type).
AUX_CATALOGS = {
    "aws/images.csv": """\
Tag,Region,OS,OSVersion,ImageId,CreationDate
skypilot:custom-cpu-ubuntu,us-east-1,ubuntu,22.04,ami-00000000000000c01,2026-11-24T00:00:00.000Z
skypilot:custom-gpu-ubuntu,us-east-1,ubuntu,22.04,ami-00000000000000g01,2026-11-24T00:00:00.000Z
skypilot:custom-gpu-ubuntu-cuda13,us-east-1,ubuntu,22.04,ami-00000000000000g13,2026-11-24T00:00:00.000Z
""",
    "aws/instance_quota_mapping.csv": "InstanceType,OnDemandInstanceCode,SpotInstanceCode\n",
}


def cached_venv(venv: Path, package: str, version: str, requirements: list[str]) -> Path:
    """Return the python of `venv` with `requirements` installed, made once and cached under a lock.

    The venv is reused while `package` reports `version`; a failed pip install skips the test.
    """
    python = venv / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions share the cache
        probe = f"import importlib.metadata as m; print(m.version({package!r}))"
        if python.exists() and subprocess.run([python, "-c", probe], capture_output=True, text=True,
                                              check=False).stdout.strip() == version:
            return python
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        install = subprocess.run([python, "-m", "pip", "install", "--quiet", *requirements],
                                 capture_output=True, text=True, timeout=900, check=False)
        if install.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.skip(f"`pip install {' '.join(requirements)}` failed: {install.stderr[-800:]}")
    return python


@pytest.fixture(scope="module")
def sky_python() -> Path:
    """Return the python of a venv with skypilot==0.14.1, made once and cached."""
    return cached_venv(SKY_VENV, "skypilot", SKY_VERSION, [f"skypilot=={SKY_VERSION}"])


@pytest.fixture
def sky_env(tmp_path: Path) -> dict[str, str]:
    """Environment for SkyPilot: state and seeded catalogs under a temp HOME, no usage reporting.

    SkyPilot's dry run checks that an `rsync` binary exists (it syncs nothing): a stub stands in
    where the machine has none.
    """
    home = tmp_path / "sky-home"
    for name, text in {**CATALOGS, **AUX_CATALOGS}.items():
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
