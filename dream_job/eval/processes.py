"""Evaluation on several GPUs: one `dream-job eval --shard i/n` process per GPU, each with a whole model.

Decoding is data-parallel and needs no communication: each process takes every n-th batch
(`shards.py`) and appends what it decodes to its own part files; the parent waits for all of
them, then folds the parts into the items files and writes the summary (`run.evaluate`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from dream_job.errors import SpecError, StageError, child_exit_code
from dream_job.eval.models import eval_device
from dream_job.eval.shards import PARTS_DIR
from dream_job.rundir import EVAL_DIR, locked_run_dir, write_json_atomically
from dream_job.spec import JobSpec

logger = logging.getLogger(__name__)

WORKER_SPEC_NAME = "job.json"  # in `eval/parts/`: the spec the processes read, as the parent validated it
_POLL_S = 0.5
_STOP_GRACE_S = 30.0  # SIGTERM ends a child at once (no handler there); then SIGKILL
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def eval_processes(spec: JobSpec) -> int:
    """Return how many processes decode together: `eval.processes`, else one per visible GPU (one on the CPU).

    Raises:
        SpecError: `eval.processes` asks for more processes than there are GPUs.
    """
    gpus = torch.cuda.device_count() if eval_device(spec).type == "cuda" else 0
    wanted = spec.eval.processes
    if wanted is None:
        return max(gpus, 1)
    if gpus and wanted > gpus:
        raise SpecError(f"`eval.processes` is {wanted} but {gpus} GPU(s) are visible",
                        hint=f"set `--set eval.processes={gpus}` or less, or leave it null (one per GPU)")
    return wanted


def _visible_gpus() -> list[str]:
    """Return the GPU ids a child may be given, as CUDA_VISIBLE_DEVICES names them (or by index)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [g.strip() for g in listed.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def evaluate_in_processes(spec: JobSpec, *, model_label: str, model_dir: Path | None, count: int) -> None:
    """Run `count` shard processes of `dream-job eval` for one model and wait for all of them.

    Each process gets its own GPU (`CUDA_VISIBLE_DEVICES`) when evaluating on CUDA. When one fails,
    the others are stopped (SIGTERM: each keeps the batches it wrote) and this raises. A signal or
    exception here stops them the same way before it propagates.

    Raises:
        StageError: A process failed (its own message is printed above); exit code as the child's.
    """
    parts = spec.run_dir() / EVAL_DIR / PARTS_DIR
    spec_path = parts / WORKER_SPEC_NAME
    write_json_atomically(spec_path, spec.model_dump(mode="json"))
    model = model_label if model_label in ("base", "final") else str(model_dir)  # as `dream-job eval --model` reads it
    gpus = _visible_gpus() if eval_device(spec).type == "cuda" else []
    children: list[subprocess.Popen[bytes]] = []
    # Held (or re-entered) here so that the children inherit it rather than wait for it.
    with locked_run_dir(spec.run_dir(), verb="dream-job eval"), contextlib.ExitStack() as cleanup:
        cleanup.callback(spec_path.unlink, missing_ok=True)
        cleanup.callback(_stop, children)
        for index in range(count):
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[index]
            else:  # on the CPU the processes share the cores rather than each start a thread per core
                env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // count)))
            command = [sys.executable, "-m", "dream_job", "eval", str(spec_path), "--model", model,
                       "--shard", f"{index}/{count}"]
            children.append(subprocess.Popen(command, env=env, preexec_fn=_tie_to_parent))
        logger.info("evaluating `%s` in %d processes%s", model_label, count,
                    f" (GPUs {', '.join(gpus[:count])})" if gpus else "")
        failed = _wait_all(children)
        if failed is not None:
            index, code = failed
            raise StageError(
                f"evaluation process {index} of {count} (`{model_label}`) exited with code {code}",
                hint="its error is printed above; run the same command again: the batches decoded so far are kept",
                exit_code=child_exit_code(code),
            )


def _tie_to_parent() -> None:
    """In the child before it starts: ignore Ctrl-C and get SIGTERM when the parent dies.

    Ctrl-C reaches the parent, which stops the children (one error line, not one per process);
    the death signal stops them when the parent is killed outright (`kill -9`, an OOM kill), so no
    process keeps a GPU and writes parts after the run dir's lock is gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not sys.platform.startswith("linux"):
        return  # no death signal elsewhere: a killed parent leaves its children to finish their share
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() == 1:  # the parent died before the line above took effect
        os._exit(3)


def _wait_all(children: list[subprocess.Popen[bytes]]) -> tuple[int, int] | None:
    """Wait until every child ended or one failed; return (index, exit code) of the first that failed."""
    while True:
        codes = [child.poll() for child in children]
        for index, code in enumerate(codes):
            if code not in (None, 0):
                return index, code
        if all(code == 0 for code in codes):
            return None
        time.sleep(_POLL_S)


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM the children still running and wait for them (killing any that outlive the grace period)."""
    running = [child for child in children if child.poll() is None]
    for child in running:
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_S
    for child in running:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
