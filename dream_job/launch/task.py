"""`dream-job task`: what a SkyPilot task runs on each node (sky.yaml's `run` is this one command).

In order, before any work:
1. The job. The spec the launch carried (`DREAM_JOB_SPEC`, checked against `DREAM_JOB_SPEC_SHA256`
   by `payload.read_payload`) is written to `~/.dream-job/<run id>/job.yaml` and run from there;
   a hand-written launch without it runs `JOB`, relative to the synced workdir (the working
   directory), never a copy baked into the image.
2. The caps. `BUDGET_HOURS` of wall clock from the run's first start, else the hours the job's own
   `budget.max_cost_yuan` buys at `DREAM_JOB_USD_PER_HOUR`; with neither the task refuses (a task
   nothing stops is never started). At most `DREAM_JOB_MAX_STARTS` starts (first start plus every
   recovery: preemption, exit 3). Both live in `<run id>/task.json` where the run's state lives
   (`state_root`): the bucket mounted at `/runs`, else the job's first `s3://` or `file://`
   destination, else its `hf://` repo, so a recovery on a new machine keeps counting. Only node 0
   writes it.
3. `dream-job run <job> --set artifacts.run_dir=<run root>/<run id>` under the cap: SIGTERM at the
   cap (training saves a checkpoint and exits), SIGKILL `KILL_AFTER_S` later.

See docs/recovery.md. No torch, no SkyPilot.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

# The shutdown grace lives with the cap rule the estimate accepts offers by: at the cap SIGTERM, SIGKILL
# `KILL_AFTER_S` later, then the last upload; a cap from the job's own budget leaves it too.
from budget.caps import KILL_AFTER_S, run_cap
from dream_job.costs import PRICE_ENV
from dream_job.errors import DreamJobError, InputError
from dream_job.launch.payload import read_payload, spec_digest
from dream_job.rundir import RUN_ID_ENV, write_text_atomically
from dream_job.spec import JobSpec, load_spec

logger = logging.getLogger(__name__)

# Task envs (sky.yaml `envs`, the launch line's `--env`).
JOB_ENV = "JOB"
BUDGET_HOURS_ENV = "BUDGET_HOURS"
USD_PER_HOUR_ENV = PRICE_ENV  # the in-job budget guard reads the same variable
MAX_STARTS_ENV = "DREAM_JOB_MAX_STARTS"
# SkyPilot's (reference/skypilot.md §4).
TASK_ID_ENV = "SKYPILOT_TASK_ID"
NODE_RANK_ENV = "SKYPILOT_NODE_RANK"

DEFAULT_MAX_STARTS = 10
RUNS_MOUNT = Path("/runs")  # sky.yaml's `file_mounts` target
STATE_NAME = "task.json"
EXIT_CAP = 1


class TaskError(DreamJobError):
    """The task refuses to start: no cap, the cap used up, too many starts, no job file (exit 1)."""


@dataclass(frozen=True)
class Start:
    """This start of the run: when the first one was, how many there have been (this one included)."""

    first_started_at: float
    starts: int
    state_url: str


def node_rank(environ: Mapping[str, str]) -> int:
    """Return SkyPilot's node rank (0 on the head node and on one-node tasks)."""
    return int(environ.get(NODE_RANK_ENV) or 0)


def run_id(environ: Mapping[str, str]) -> str:
    """Return the run id: `DREAM_JOB_RUN_ID` (set by the launch), else `SKYPILOT_TASK_ID` (kept across recoveries).

    Raises:
        TaskError: Neither is set (not a SkyPilot task).
    """
    found = environ.get(RUN_ID_ENV) or environ.get(TASK_ID_ENV)
    if not found:
        raise TaskError(f"neither `{RUN_ID_ENV}` nor `{TASK_ID_ENV}` is set, so this run has no id to keep its "
                        "state under", hint=f"run it as a SkyPilot task, or set `{RUN_ID_ENV}=<run id>`")
    return found


def resolve_job(environ: Mapping[str, str], workdir: Path, scratch: Path) -> tuple[Path, JobSpec, str | None]:
    """Return the job file to run, its spec and the digest it was checked against (None: a plain `JOB` file).

    Raises:
        PayloadError: The carried spec differs from its digest (see `payload.read_payload`).
        TaskError: No carried spec and no `JOB` file in `workdir`.
        SpecError: The job does not validate with this machine's dream-job.
    """
    text = read_payload(environ)
    if text is not None:
        path = scratch / "job.yaml"
        write_text_atomically(path, text)
        return path, load_spec(path), spec_digest(text)
    job = environ.get(JOB_ENV)
    if not job:
        raise TaskError(f"the task carries no job: neither `DREAM_JOB_SPEC` nor `{JOB_ENV}` is set",
                        hint="launch with the line `dream-job estimate JOB_FILE` prints")
    path = Path(job) if Path(job).is_absolute() else workdir / job
    if not path.is_file():
        raise TaskError(f"job file `{job}` is not in the workdir `{workdir}`", path=path,
                        hint="launch from the repo root (sky.yaml's `workdir: .`) with a job file under it")
    return path, load_spec(path), None


def cap_seconds(spec: JobSpec, environ: Mapping[str, str]) -> tuple[float, str]:
    """Return the wall-clock cap in seconds and where it came from.

    `BUDGET_HOURS` when set above 0; else what `budget.max_cost_yuan` buys at `DREAM_JOB_USD_PER_HOUR`
    less the shutdown grace, by the rule the launch computes `BUDGET_HOURS` with (`budget.caps.run_cap`).

    Raises:
        TaskError: Neither a cap nor a price: nothing would stop the machine.
    """
    hours = _number(environ, BUDGET_HOURS_ENV)
    if hours < 0:
        raise TaskError(f"`{BUDGET_HOURS_ENV}={environ[BUDGET_HOURS_ENV]}` is negative",
                        hint=f"pass the cap the estimate printed: `--env {BUDGET_HOURS_ENV}=<hours>`")
    if hours > 0:
        return hours * 3600, f"`{BUDGET_HOURS_ENV}={environ[BUDGET_HOURS_ENV]}`"
    usd = _number(environ, USD_PER_HOUR_ENV)
    if usd > 0:
        # The launch's own rule (`budget.caps.run_cap`), at the machine's price alone: a hand-written
        # launch names no jobs controller, so none is counted.
        cap = run_cap(spec.budget.max_cost_yuan, cny_per_usd=spec.budget.cny_per_usd, usd_per_hour=usd)
        if cap.budget_hours > 0:
            return cap.budget_hours * 3600, (f"`budget.max_cost_yuan` ¥{spec.budget.max_cost_yuan:g} at "
                             f"`{USD_PER_HOUR_ENV}={environ[USD_PER_HOUR_ENV]}`")
    raise TaskError(f"this task has no wall-clock cap (`{BUDGET_HOURS_ENV}`) and no price (`{USD_PER_HOUR_ENV}`), "
                    "so nothing would stop the machine; not started",
                    hint="launch with the line `dream-job estimate JOB_FILE` prints (it sets both), or pass "
                         f"`--env {BUDGET_HOURS_ENV}=<hours>`")


def _number(environ: Mapping[str, str], name: str) -> float:
    raw = (environ.get(name) or "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise TaskError(f"`{name}={raw}` is not a number", hint=f"pass `--env {name}=<number>`") from None
    if not math.isfinite(value):
        raise TaskError(f"`{name}={raw}` is not a finite number", hint=f"pass `--env {name}=<number>`")
    return value


def max_starts(environ: Mapping[str, str]) -> int:
    """Return `DREAM_JOB_MAX_STARTS` (default `DEFAULT_MAX_STARTS` when unset or empty)."""
    if not (environ.get(MAX_STARTS_ENV) or "").strip():
        return DEFAULT_MAX_STARTS
    value = _number(environ, MAX_STARTS_ENV)
    if value < 1 or value != int(value):
        raise TaskError(f"`{MAX_STARTS_ENV}={environ.get(MAX_STARTS_ENV)}` must be a whole number of at least 1",
                        hint=f"pass `--env {MAX_STARTS_ENV}={DEFAULT_MAX_STARTS}`")
    return int(value)


def run_root(home: Path, runs_mount: Path = RUNS_MOUNT) -> tuple[Path, bool]:
    """Return the folder that holds run dirs and whether it is the bucket mount (else the machine's disk)."""
    if os.path.ismount(runs_mount):
        return runs_mount, True
    return home / "dream-job-runs", False


def state_root(spec: JobSpec, root: Path, mounted: bool) -> str:
    """Return where the run's `task.json` lives: the mounted run root, else the first destination.

    `s3://` and `file://` destinations come before `hf://` (there it is a commit in the model repo).
    Without a mount or a destination it stays on this machine's disk (`root`): only a run that
    cannot recover elsewhere (a cluster launch; the estimate refuses FUSE-less offers for such jobs).
    """
    if not mounted:
        for schemes in (("s3://", "file://"), ("hf://",)):
            for destination in spec.artifacts.destinations:
                if destination.startswith(schemes):
                    return destination.rstrip("/")
    return root.resolve().as_uri()


def begin(state_url: str, run: str, *, now: float, limit: int, writer: bool,
          s3_endpoint_url: str | None = None) -> Start:
    """Count this start of run `run` in `<state_url>/<run>/task.json` and return it.

    The first start records the time; each later one (a recovery) adds one to the count. Only the
    `writer` (node 0) writes; other nodes read what node 0 wrote (or take `now` before it has).

    Raises:
        TaskError: This start would be number `limit + 1`.
        ArtifactError: The store cannot be read or written (exit 3 when transient).
    """
    from dream_job.artifacts import state_store
    from dream_job.artifacts.s3 import S3Settings

    settings = S3Settings(endpoint_url=s3_endpoint_url) if state_url.startswith("s3://") else None
    store = state_store(state_url, s3=settings)
    key = f"{run}/{STATE_NAME}"
    text = store.read_text(key)
    state = json.loads(text) if text else {"first_started_at": now, "starts": 0}
    if not writer:
        return Start(float(state["first_started_at"]), int(state["starts"]), state_url)
    starts = int(state["starts"]) + 1
    if starts > limit:
        raise TaskError(f"run `{run}` has already started {starts - 1} times (`{MAX_STARTS_ENV}={limit}`): it keeps "
                        "failing or being preempted, so it is not started again",
                        hint=f"read its log; to allow more starts relaunch with `--env {MAX_STARTS_ENV}={limit * 2}`")
    state = {"first_started_at": float(state["first_started_at"]), "starts": starts}
    store.write_text(key, json.dumps(state) + "\n")
    return Start(state["first_started_at"], starts, state_url)


def run_capped(command: list[str], seconds_left: float, *, kill_after_s: float = KILL_AFTER_S) -> int | None:
    """Run `command` in its own process group; return its exit code, or None when the cap stopped it.

    At `seconds_left` the group gets SIGTERM, and SIGKILL `kill_after_s` later if still there.
    SIGTERM/SIGINT sent to this process (SkyPilot cancelling) are passed on to the group.
    """
    child = subprocess.Popen(command, start_new_session=True)

    def forward(signum: int, frame: FrameType | None) -> None:
        _signal_group(child, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            return child.wait(timeout=max(seconds_left, 0.0))
        except subprocess.TimeoutExpired:
            pass
        logger.warning("wall-clock cap reached: SIGTERM to the job, SIGKILL in %.0f s", kill_after_s)
        _signal_group(child, signal.SIGTERM)
        try:
            child.wait(timeout=kill_after_s)
        except subprocess.TimeoutExpired:
            _signal_group(child, signal.SIGKILL)
            child.wait()
        return None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _signal_group(child: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(child.pid, signum)
    except ProcessLookupError:
        pass  # already gone


def run_task(environ: Mapping[str, str] | None = None, *, workdir: Path | None = None, home: Path | None = None,
             runs_mount: Path = RUNS_MOUNT, now: float | None = None) -> int:
    """Run the task on this node (see the module docstring); return the exit code for SkyPilot.

    Raises:
        PayloadError, TaskError, SpecError, ArtifactError: Before `dream-job run` starts, with the reason.
        InputError: The cap stopped the run (exit 1; the newest checkpoint is kept).
    """
    environ = os.environ if environ is None else environ
    workdir = Path.cwd() if workdir is None else workdir
    home = Path.home() if home is None else home
    run = run_id(environ)
    job_path, spec, digest = resolve_job(environ, workdir, home / ".dream-job" / run)
    cap_s, cap_from = cap_seconds(spec, environ)
    root, mounted = run_root(home, runs_mount)
    rank = node_rank(environ)
    start = begin(state_root(spec, root, mounted), run, now=time.time() if now is None else now,
                  limit=max_starts(environ), writer=rank == 0, s3_endpoint_url=spec.artifacts.s3_endpoint_url)
    left_s = cap_s - ((time.time() if now is None else now) - start.first_started_at)
    if left_s <= 0:
        raise TaskError(f"the wall-clock cap ({cap_from}, {cap_s / 3600:.2f} h) of run `{run}` is used up since its "
                        f"first start; not started again", hint=f"to resume, relaunch with a larger cap: "
                        f"`--env {BUDGET_HOURS_ENV}=<hours>` and `--env {RUN_ID_ENV}={run}`")
    run_dir = root / run
    print(f"dream-job task: run `{run}` of `{spec.name}`" + (f" (sha256 {digest[:12]}, as priced)" if digest else
          f" from `{job_path}`") + f", node {rank}, start {start.starts}, {left_s / 3600:.2f} h left of {cap_from}; "
          f"state in {start.state_url}/{run}; run dir {run_dir}", file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "dream_job", "run", str(job_path), "--set", f"artifacts.run_dir={run_dir}"]
    code = run_capped(command, left_s)
    if code is not None and code < 0:  # killed by a signal: report it as a shell would (128 + signal)
        code = 128 - code
    if code is None:
        raise InputError(f"`dream-job run` of run `{run}` stopped at the wall-clock cap ({cap_from})",
                         path=run_dir, hint=f"the newest checkpoint is in `{run_dir}`; relaunch with a larger cap "
                         f"(`--env {BUDGET_HOURS_ENV}=<hours> --env {RUN_ID_ENV}={run}`) to resume")
    return code
