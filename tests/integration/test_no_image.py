"""The no-image path: sky.yaml's `setup` then `run` on a machine with nothing installed (slow).

The "machine" is a clean HOME with a copy of the workdir as SkyPilot syncs it (the repo's tracked
files) and a PATH with only the system and `uv` (what `setup` would fetch with curl: installed
here from PyPI into the test cache). `setup` builds `~/dream-job-venv` for real: Python 3.11, the
pinned requirements from the package index, the project from the workdir. The only stand-in is
torch: the CPU wheel of the same minor series instead of the CUDA one (`DREAM_JOB_TORCH`, a few GB
less). `run` then runs the carried smoke job in that venv, as on a cloud's default image.
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dream_job.launch.payload import spec_text
from dream_job.spec import load_spec
from tests.conftest import REPO

CACHE = Path(os.environ.get("DREAM_JOB_TEST_CACHE", "~/.cache/dream-job-test")).expanduser()
UV_VERSION = "0.13.8"
TORCH_VERSION = "2.13.0"


def _uv() -> Path:
    """Return a `uv` binary in the test cache, installed from PyPI once."""
    target = CACHE / f"uv-{UV_VERSION}"
    binary = target / "bin" / "uv"
    if not binary.exists():
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target),
                                 f"uv=={UV_VERSION}"], capture_output=True, text=True, timeout=600, check=False)
        if result.returncode != 0 or not binary.exists():
            pytest.skip(f"`pip install uv=={UV_VERSION}` failed: {result.stderr[-500:]}")
    return binary


def _torch_wheel() -> Path:
    folders = [*os.environ.get("PIP_FIND_LINKS", "").split(), "/opt/wheels"]
    for folder in folders:
        hits = sorted(glob.glob(os.path.join(folder, f"torch-{TORCH_VERSION}+cpu-cp311-cp311-*x86_64.whl")))
        if hits:
            return Path(hits[-1])
    pytest.skip(f"no CPU wheel of torch {TORCH_VERSION} for cp311 in {folders}")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_setup_then_run_on_a_bare_machine(tmp_path: Path) -> None:
    if Path("/opt/dream-job/image/entrypoint.sh").exists():
        pytest.skip("inside the dream-job image the scripts take the image branch")
    task = yaml.safe_load((REPO / "sky.yaml").read_text(encoding="utf-8"))
    workdir, home, tools = tmp_path / "sky_workdir", tmp_path / "home", tmp_path / "tools"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    workdir.mkdir()
    subprocess.run(["tar", "-C", str(REPO), "--null", "-T", "-", "-cf", str(tmp_path / "workdir.tar")],
                   input=files, check=True)
    subprocess.run(["tar", "-C", str(workdir), "-xf", str(tmp_path / "workdir.tar")], check=True)
    tools.mkdir()
    (tools / "uv").symlink_to(_uv())
    keep = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "LANG", "TMPDIR", "HTTPS_PROXY", "HTTP_PROXY",
            "NO_PROXY", "https_proxy", "http_proxy", "no_proxy")
    env = {**{k: os.environ[k] for k in keep if k in os.environ}, "HOME": str(home),
           "PATH": f"{tools}:/usr/local/bin:/usr/bin:/bin", "UV_CACHE_DIR": str(CACHE / "uv-cache"),
           "DREAM_JOB_TORCH": str(_torch_wheel())}
    home.mkdir()

    setup = subprocess.run(["bash", "-c", task["setup"]], cwd=workdir, env=env, capture_output=True, text=True,
                           timeout=1500, check=False)
    assert setup.returncode == 0, (setup.stdout + setup.stderr)[-4000:]
    venv = home / "dream-job-venv"
    version = subprocess.run([str(venv / "bin" / "dream-job"), "--version"], capture_output=True, text=True,
                             check=True, env=env).stdout
    assert version == "dream-job 0.1.0\n"
    # A second `setup` on the same machine (a `sky exec`, a restarted task) keeps the venv and succeeds.
    again = subprocess.run(["bash", "-c", task["setup"]], cwd=workdir, env=env, capture_output=True, text=True,
                           timeout=600, check=False)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]

    published = tmp_path / "published"
    text = spec_text(load_spec(REPO / "jobs" / "smoke.yaml", ["train.epochs=2", "eval.limit=4", "eval.batch_size=4",
                                                              f"artifacts.destinations=[{published.as_uri()}]"]))
    run_env = {**env, "DREAM_JOB_SPEC": text, "DREAM_JOB_SPEC_SHA256": hashlib.sha256(text.encode()).hexdigest(),
               "JOB": "jobs/dream-s1k.yaml", "DREAM_JOB_RUN_ID": "bare-1", "BUDGET_HOURS": "1",
               "DREAM_JOB_USD_PER_HOUR": "1", "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NUM_NODES": "1",
               "SKYPILOT_NODE_IPS": "127.0.0.1", "SKYPILOT_NUM_GPUS_PER_NODE": "0"}
    run = subprocess.run(["bash", "-c", task["run"]], cwd=workdir, env=run_env, capture_output=True, text=True,
                         timeout=1200, check=False)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert "dream-job task: run `bare-1` of `smoke` (sha256 " in run.stderr
    run_dir = home / "dream-job-runs" / "bare-1"
    assert {p.stem for p in (run_dir / "stages").glob("*.done")} == {"prep", "train", "eval", "publish"}
    assert (published / "config.json").is_file() and (published / "MANIFEST.sha256").is_file()
    # The packages are the venv's (`setup` installed them; this test's environment was never on PATH).
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import dream_job, torch; print(torch.__version__); "
                            "print(dream_job.__file__)"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    assert probe[0] == f"{TORCH_VERSION}+cpu" and probe[1].startswith(str(venv))
