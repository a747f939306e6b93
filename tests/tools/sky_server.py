"""SkyPilot's real local API server, offline, for `tests/integration/test_sky_server.py`.

The SkyPilot CLI (`sky`) and dream-job's CLI run as subprocesses of the sky venv
(`tests/tools/sky_env.py`) against one API server per test module, started with `sky api start`
exactly as SkyPilot starts it for a user, and stopped with `sky api stop` (then, if it is still
there, by killing the process group SkyPilot started it in). Offline and isolated:

- `HOME` and `SKY_RUNTIME_DIR` in a temp folder holding the seeded v8 catalogs (`CATALOGS`, which
  `budget.estimate` reads too, plus `AUX_CATALOGS`, files only SkyPilot's dry run reads), and
  `~/.sky/config.yaml` with `allowed_clouds` (the seeded clouds, so `sky check` probes no other);
  the server listens on a free loopback port (`SKYPILOT_API_SERVER_LOCAL_PORT`), never the
  default 46580 a user's own server would use; usage collection off.
- Clouds: `tests/tools/sky_site/sitecustomize.py`, on `PYTHONPATH`, makes the seeded clouds pass
  the credential check in every process (CLI, server, request workers); the server's own
  `sky check` records them as enabled, the rest runs unpatched.
- AWS: S3 (the task's `/runs` bucket mount) is the SeaweedFS server of `tests/s3server.py`
  (`AWS_ENDPOINT_URL_S3`), EC2 the `DescribeImages`-only endpoint of `tests/tools/ec2_server.py`
  (`AWS_ENDPOINT_URL_EC2`); every other AWS endpoint (STS, ...) is a closed loopback port, so
  SkyPilot's identity and zone look-ups fail fast, as they do without credentials.
- dream-job's CLI runs from the repo (`PYTHONPATH`) with the launcher extra's dependencies
  installed into the sky venv (`launcher_python`), as `pip install '.[launcher]'` gives a user.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.s3server import S3Server
from tests.tools.ec2_server import Ec2Server
from tests.tools.moto_aws import MotoAws, moto_image_id
from tests.tools.sky_env import AUX_CATALOGS, CACHE, CATALOGS, SEEDED_CLOUDS, SKY_VENV, SKY_VERSION, TOOLS

SITE_DIR = TOOLS / "sky_site"
CLOUDS_ENV = "DREAM_JOB_TEST_SKY_CLOUDS"  # read by sky_site/sitecustomize.py
SERVER_MODULE = "sky.server.server"  # SkyPilot's API_SERVER_CMD: `python -m sky.server.server --port=N`
LAUNCHER_MARK = "dream-job-launcher-requirements.txt"



# SkyPilot colours its output; the tests read it as plain text.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain_text(completed: subprocess.CompletedProcess[str]) -> str:
    """Return a finished command's stdout and stderr without SkyPilot's colour codes."""
    return ANSI.sub("", completed.stdout + completed.stderr)


def chosen_rows(output: str) -> list[dict[str, str]]:
    """The ✔ row of each `Considered resources` table SkyPilot printed, in order."""
    rows = []
    for line in output.splitlines():
        if line.rstrip().endswith("✔"):
            cells = re.split(r"\s{2,}", line.strip())  # INFRA, INSTANCE, vCPUs, Mem, GPUS, COST, ✔
            rows.append({"infra": cells[0], "instance": cells[1], "gpus": cells[4], "usd": cells[5]})
    return rows


def launcher_requirements() -> list[str]:
    """Return what `pip install '.[launcher]'` installs besides the project: core + laptop + SkyPilot (pinned)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    requirements = list(project["dependencies"])
    for item in extras["launcher"]:
        if item.startswith("dream-job["):  # the extra names other extras of the project
            for extra in item[len("dream-job["):-1].split(","):
                requirements += extras[extra.strip()]
        elif item.startswith("skypilot"):
            requirements.append(f"skypilot=={SKY_VERSION}")
        else:
            requirements.append(item)
    return sorted(set(requirements))


@pytest.fixture(scope="module")
def launcher_python(sky_python: Path) -> Path:
    """The sky venv's python with the launcher extra's dependencies (typer, boto3, ...) installed."""
    wanted = "\n".join(launcher_requirements()) + "\n"
    mark = SKY_VENV / LAUNCHER_MARK
    with open(CACHE / "sky-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the venv is shared with parallel sessions
        if not mark.is_file() or mark.read_text(encoding="utf-8") != wanted:
            install = subprocess.run([str(sky_python), "-m", "pip", "install", "--quiet", *wanted.split()],
                                     capture_output=True, text=True, timeout=900, check=False)
            if install.returncode != 0:
                pytest.skip(f"installing the launcher extra's dependencies failed: {install.stderr[-800:]}")
            mark.write_text(wanted, encoding="utf-8")
    return sky_python


def free_port() -> int:
    """Return a loopback TCP port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_pids(port: int) -> list[int]:
    """PIDs of SkyPilot API server processes started for `port` (by their command line in /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if SERVER_MODULE in args and f"--port={port}" in args:
            pids.append(int(entry.name))
    return pids


def tree_state(folder: Path) -> dict[str, float]:
    """Every path under `folder` with its mtime (empty when the folder does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.lstat().st_mtime for p in sorted(folder.rglob("*"))}


class SkyServer:
    """One SkyPilot API server on a temp HOME; `sky(...)` and `dream_job(...)` run the CLIs against it."""

    def __init__(self, python: Path, folder: Path, s3: Any, ec2_url: str, *, aws_url: str | None = None,
                 aux_catalogs: dict[str, str] | None = None) -> None:
        """`s3`: the S3 server (SeaweedFS, or moto); `aws_url`: one endpoint for every AWS service (moto), which
        then passes SkyPilot's real `sky check aws` (only the other seeded clouds are faked)."""
        self.python = python
        self.home = folder / "home"
        self.port = free_port()
        self.s3 = s3
        for name, text in {**CATALOGS, **(aux_catalogs or AUX_CATALOGS)}.items():
            path = self.home / ".sky" / "catalogs" / "v8" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        (self.home / ".sky" / "config.yaml").write_text(f"allowed_clouds: [{SEEDED_CLOUDS.replace(',', ', ')}]\n",
                                                        encoding="utf-8")
        path = os.environ["PATH"]
        if shutil.which("rsync") is None:  # SkyPilot's launch checks for it; a dry run syncs nothing
            stub = folder / "stub-bin" / "rsync"
            stub.parent.mkdir(parents=True)
            stub.write_text("#!/bin/sh\necho 'rsync  version 3.2.7  protocol version 31 (test stub)'\n")
            stub.chmod(0o755)
            path = f"{stub.parent}{os.pathsep}{path}"
        # The user's own SkyPilot, AWS, hub and dream-job settings stay out.
        keep = {k: v for k, v in os.environ.items()
                if not k.startswith(("SKYPILOT_", "SKY_", "DREAM_JOB_", "AWS_", "HF_"))}
        self.env = {
            **keep, "PATH": path, "HOME": str(self.home), "SKY_RUNTIME_DIR": str(self.home),
            "SKYPILOT_DISABLE_USAGE_COLLECTION": "1", "SKYPILOT_API_SERVER_LOCAL_PORT": str(self.port),
            "PYTHONPATH": f"{SITE_DIR}{os.pathsep}{REPO}",
            CLOUDS_ENV: SEEDED_CLOUDS if aws_url is None else ",".join(
                c for c in SEEDED_CLOUDS.split(",") if c != "aws"),
            "AWS_ENDPOINT_URL": aws_url or f"http://127.0.0.1:{free_port()}", "AWS_ENDPOINT_URL_S3": s3.endpoint_url,
            "AWS_ENDPOINT_URL_EC2": ec2_url,
            "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1", "HF_HUB_OFFLINE": "1", "NO_COLOR": "1",
        }
        self.pids: list[int] = []

    def run(self, args: list[str], *, stdin: str = "", env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run `args` in the repo with the server's environment (plus `env`), output captured."""
        return subprocess.run(args, env={**self.env, **(env or {})}, cwd=REPO, input=stdin, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def sky(self, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run the sky venv's `sky` CLI."""
        return self.run([str(self.python.parent / "sky"), *args], stdin=stdin, env=env)

    def dream_job(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run dream-job's CLI (this repo) in the sky venv: the launch calls SkyPilot's client SDK."""
        return self.run([str(self.python), "-m", "dream_job", *args], env=env)

    def start(self) -> SkyServer:
        """Start the server with `sky api start` and note its PIDs."""
        started = self.sky("api", "start")
        self.pids = server_pids(self.port)
        if started.returncode != 0 or not self.pids:
            self.stop()
            raise RuntimeError(f"`sky api start` failed ({started.returncode}):\n{started.stdout[-2000:]}\n"
                               f"{started.stderr[-2000:]}\n{self.log_tail()}")
        return self

    def stop(self) -> None:
        """`sky api stop`; then SIGKILL the process group of any server process still alive (SkyPilot
        starts the server in a new session, so the group holds its workers and nothing else)."""
        self.sky("api", "stop")
        for pid in set(self.pids) | set(server_pids(self.port)):
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while server_pids(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)

    def log_tail(self, num_chars: int = 3000) -> str:
        """Return the end of the server's log."""
        log = self.home / ".sky" / "api_server" / "server.log"
        return log.read_text(errors="replace")[-num_chars:] if log.is_file() else "(no server log)"


@pytest.fixture(scope="module")
def sky_server(launcher_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SkyServer]:
    """A started SkyPilot API server (see the module docstring) shared by one test module; stopped after it,
    with no server process left and nothing written to the real `~/.sky`."""
    real_sky = Path.home() / ".sky"
    before = tree_state(real_sky)
    s3 = S3Server(tmp_path_factory.mktemp("sky-s3")).start()
    with Ec2Server() as ec2:
        server = SkyServer(launcher_python, tmp_path_factory.mktemp("sky-server"), s3, ec2.endpoint_url)
        try:
            yield server.start()
        finally:
            server.stop()
            s3.stop()
    assert server_pids(server.port) == [], "the SkyPilot API server outlived `sky api stop` and SIGKILL"
    assert tree_state(real_sky) == before, "the real ~/.sky changed while the test server ran"


def start_on_moto(python: Path, folder: Path) -> tuple[SkyServer, MotoAws]:
    """Start `moto_server` and a SkyPilot API server whose AWS it is (`sky_server_on_moto`); the caller stops both."""
    aws = MotoAws(folder).start()
    image = moto_image_id(aws.python)
    aux = {**AUX_CATALOGS, "aws/images.csv": "\n".join(
        line if not line.startswith("skypilot:") else ",".join(line.split(",")[:4] + [image] + line.split(",")[5:])
        for line in AUX_CATALOGS["aws/images.csv"].splitlines()) + "\n"}
    server = SkyServer(python, folder / "sky", aws, aws.endpoint_url, aws_url=aws.endpoint_url, aux_catalogs=aux)
    try:
        return server.start(), aws
    except BaseException:
        aws.stop()
        raise


@pytest.fixture(scope="module")
def sky_server_on_moto(launcher_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SkyServer]:
    """A started SkyPilot API server whose AWS is `moto_server` (`tests/tools/moto_aws.py`): AWS passes the real
    `sky check`, SkyPilot maps the catalog's zone ids to moto's zone names, S3 buckets live in moto; the
    other seeded clouds as in `sky_server`. Stopped after the module, nothing left in the real `~/.sky`."""
    real_sky = Path.home() / ".sky"
    before = tree_state(real_sky)
    server, aws = start_on_moto(launcher_python, tmp_path_factory.mktemp("sky-moto"))
    try:
        yield server
    finally:
        server.stop()
        aws.stop()
    assert server_pids(server.port) == [], "the SkyPilot API server outlived `sky api stop` and SIGKILL"
    assert tree_state(real_sky) == before, "the real ~/.sky changed while the test server ran"
