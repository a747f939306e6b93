"""AWS emulated by `moto[server]` on loopback, for SkyPilot's real `sky check aws` and AWS launch path.

One moto server answers every AWS service the launch touches (STS for the identity `sky check`
and the zone mapping ask for, EC2 for `DescribeAvailabilityZones` and `DescribeImages`, S3 for
the run bucket). moto lives in its own cached venv (`~/.cache/dream-job-test/moto-venv`, built
under a lock like the sky venv) and runs as `moto_server` on a free loopback port; stopped by
its PID. Its account id is moto's default (123456789012), its zones moto's own table
(`us-east-1a` is zone id `use1-az6`, as a real account might have it).
"""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.tools.sky_env import CACHE, cached_venv

MOTO_VENV = CACHE / "moto-venv"
MOTO_VERSION = "5.2.5"
ACCESS_KEY, SECRET_KEY = "testing", "testing"  # moto takes any keys


def moto_python() -> Path:
    """Return the python of a venv with `moto[server]`, made once and cached (skips the test if pip fails)."""
    return cached_venv(MOTO_VENV, "moto", MOTO_VERSION, [f"moto[server]=={MOTO_VERSION}"])


def moto_image_id(python: Path) -> str:
    """Return an image id moto's EC2 knows (its bundled AMI list): SkyPilot's dry run looks the image up."""
    out = subprocess.run([str(python), "-c", "import moto, pathlib; print(pathlib.Path(moto.__file__).parent)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    amis = json.loads(gzip.decompress((Path(out) / "ec2" / "resources" / "amis.json.gz").read_bytes()))
    return next(a["ami_id"] for a in amis if a.get("root_device_name") == "/dev/sda1")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoAws:
    """`moto_server` on a free loopback port: `endpoint_url`, dummy keys, and an S3 client for assertions."""

    access_key, secret_key = ACCESS_KEY, SECRET_KEY

    def __init__(self, folder: Path) -> None:
        self.python = moto_python()
        self.port = _free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "moto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoAws:
        """Start the server and wait until it answers (at most 60 s)."""
        server = self.python.parent / "moto_server"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"moto_server did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        """Stop the server (by its PID)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)

    def client(self, service: str = "s3") -> Any:
        """A boto3 client for `service` on this server."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def create_bucket(self, name: str) -> str:
        """Create bucket `name` as someone else would (not through SkyPilot); return its name."""
        self.client().create_bucket(Bucket=name)
        return name
