"""Save and resume training state as torch.distributed.checkpoint (DCP) folders.

Job: own a run's `checkpoints/` folder (architecture.md). Input: named `Stateful` objects
(`train/state.py`: `ModelOptimizerState`, `TrainState`, a scheduler or data position in
`DictState`). Output:
`<root>/step-000120/` with DCP shards (`*.distcp`, `.metadata`) and a `COMPLETE` JSON marker.

Only a folder with the marker counts. Shards go to `.step-000120.partial/`, which rank 0 renames
to `step-000120/` once every rank is done, and only then writes the marker (after the rename, so
that a mount whose directory rename is a copy, like gcsfuse, never shows it before the shards).
Model and optimizer go through `get_state_dict` / `set_state_dict`: FSDP2 DTensor shards are saved
sharded, optimizer state is keyed by parameter FQN, and DCP reshards to another rank count on
load. DCP saves non-tensor values once, as replicated: they must be identical on every rank.

`save_async` (`train.async_save`) copies every rank's state to host RAM (`staging.HostStager`:
buffers kept for the run, pinned on CUDA), returns, and writes the shards in a background
thread over a gloo group of its own (the training collectives keep the default group). The
rename and the marker wait for that write: `wait` (collective) completes the checkpoint; the
trainer calls it once every rank's write is done, before the next save, on a stop, and at the
end. Until then the folder is a `.partial` one, which `latest_step` never counts.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.stateful import Stateful

from dream_job.errors import CheckpointError, DreamJobError
from dream_job.rundir import (
    COMPLETE_NAME, PARTIAL_STEP_RE, STEP_RE, checkpoint_name, complete_checkpoints, partial_checkpoint_name,
    write_json_atomically,
)
from dream_job.train.distributed import current_rank
from dream_job.train.staging import HostStager

logger = logging.getLogger(__name__)

# DCP gathers every rank's failure into a `CheckpointException`, a BaseException that
# `except Exception` misses; `set_state_dict` and the storage layer raise the others.
_DCP_ERRORS = (CheckpointException, RuntimeError, OSError, ValueError, KeyError)
_WRITE_HINT = "check free space and write access there"
_LOAD_HINT = (
    "the checkpoint does not fit this model or optimizer; resume with the spec that wrote it, "
    "or use a new `artifacts.run_dir`"
)


def _on_rank0(fn: Callable[[], None], what: str) -> None:
    """Run `fn` on rank 0; if it fails, every rank raises `CheckpointError` (none waits forever)."""
    error = None
    if current_rank() == 0:
        try:
            fn()
        except (OSError, DreamJobError) as exc:  # the atomic writer names the file in a `DreamJobError`
            error = "; ".join([f"{type(exc).__name__}: {exc}", *getattr(exc, "caused_by", [])])
    if dist.is_available() and dist.is_initialized():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise CheckpointError(f"cannot {what}", caused_by=[error], hint=_WRITE_HINT)


def _dcp_failure(exc: BaseException, message: str, hint: str) -> CheckpointError:
    """Return DCP's error as one `CheckpointError` with a line per failed rank."""
    if isinstance(exc, CheckpointException):  # its str() is every rank's whole traceback
        lines = [f"rank {rank}: {type(e).__name__}: {e}" for rank, (e, _) in sorted(exc.failures.items())]
    else:
        lines = [f"{type(exc).__name__}: {exc}"]
    return CheckpointError(message, caused_by=lines, hint=hint)


def _run_dcp(fn: Callable[..., Any], states: dict[str, Stateful], folder: Path, message: str, hint: str,
             **kwargs: Any) -> Any:
    """Call `dcp.save` / `dcp.load` / `dcp.async_save`; DCP's errors become one `CheckpointError` (a line per rank)."""
    try:
        with warnings.catch_warnings():  # DCP warns on every call made without a process group
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            return fn(states, checkpoint_id=folder, **kwargs)
    except CheckpointError as exc:  # a state's own check, e.g. a `TrainState` of another run
        exc.caused_by.append(f"while loading `{folder}`")
        raise
    except _DCP_ERRORS as exc:
        raise _dcp_failure(exc, message, hint) from exc


@dataclass
class _InFlight:
    """An asynchronous save whose shards are still being written."""

    step: int
    future: Future[Any]


class CheckpointManager:
    """Write, find, prune and load `step-NNNNNN/` DCP checkpoints under `root`.

    Every rank must see the same `root` (a local disk on one node, a shared one across nodes).

    Args:
        root: The checkpoints folder (`<run>/checkpoints`); created by the first save.
        keep: How many complete checkpoints to keep (≥ 1); older ones are deleted after a save.
        pin_memory: Stage asynchronous saves in pinned host memory (faster GPU->host copies; CUDA only).
    """

    def __init__(self, root: Path, *, keep: int, pin_memory: bool = False) -> None:
        if keep < 1:
            raise ValueError(f"`keep` must be ≥ 1, got `{keep}`")
        self.root = Path(root)
        self.keep = keep
        self.pin_memory = pin_memory
        self._warned: set[Path] = set()
        self._in_flight: _InFlight | None = None
        self._stager: HostStager | None = None
        self._group: Any = None  # the gloo group of the background writes (None: no process group)

    def folder(self, step: int) -> Path:
        """Return the folder of checkpoint `step` (`root/step-000120`)."""
        return self.root / checkpoint_name(step)

    def save(self, step: int, states: dict[str, Stateful]) -> Path:
        """Save `states` as checkpoint `step`; collective, every rank calls it.

        Completes an asynchronous save still in flight first (`wait`). Writes DCP shards into
        `root/.step-NNNNNN.partial/`; rank 0 renames it to `step-NNNNNN/` (replacing an earlier save
        of that step), writes `COMPLETE`, then deletes all but the newest `keep` complete checkpoints
        and every torn one. A crash leaves nothing `latest_step` accepts.

        Args:
            step: Optimizer steps done so far.
            states: Named state objects; use the same names to load.

        Returns:
            The complete checkpoint folder.

        Raises:
            CheckpointError: A rank cannot write its shards, or rank 0 cannot rename, mark or prune.
        """
        self.wait()
        partial = self._begin(step)
        # No barrier before `_complete`: DCP's save ends by gathering every rank's write results on
        # rank 0 (its coordinator), so rank 0 returns only after all shards are written.
        _run_dcp(dcp.save, states, partial, f"cannot write checkpoint `{partial}`", _WRITE_HINT)
        return self._complete(step)

    def save_async(self, step: int, states: dict[str, Stateful]) -> None:
        """Start saving `states` as checkpoint `step` in the background; collective, every rank calls it.

        Completes the previous asynchronous save first (one is in flight at most), copies the state
        to host RAM (training may change it once this returns) and leaves the write to a background
        thread. The checkpoint is complete (renamed, marked, older ones pruned) only after `wait`.

        Raises:
            CheckpointError: The previous save failed, or this one cannot be staged or started.
        """
        self.wait()
        partial = self._begin(step)
        if self._stager is None:
            # Host buffers reused by every save of the run: one copy of this rank's state.
            self._stager = HostStager(pin_memory=self.pin_memory)
            if dist.is_available() and dist.is_initialized():
                self._group = dist.new_group(backend="gloo")  # collective: every rank gets here together
        future = _run_dcp(dcp.async_save, states, partial, f"cannot write checkpoint `{partial}`", _WRITE_HINT,
                          process_group=self._group, async_stager=self._stager)
        self._in_flight = _InFlight(step, future)

    @property
    def in_flight(self) -> int | None:
        """The step of the asynchronous save not yet completed, or None."""
        return None if self._in_flight is None else self._in_flight.step

    @property
    def staging_bytes(self) -> int:
        """Host RAM held by the staging buffers of asynchronous saves (0 before the first one and after `close`)."""
        return 0 if self._stager is None else self._stager.host_bytes

    def write_done(self) -> bool:
        """Whether this rank's part of the asynchronous save has been written (True when none is in flight)."""
        return self._in_flight is None or self._in_flight.future.done()

    def wait(self) -> Path | None:
        """Wait for the asynchronous save in flight and complete it; collective. Returns its folder, or None.

        Raises:
            CheckpointError: A rank could not write its shards (the `.partial` folder stays, ignored), or
                rank 0 cannot rename, mark or prune.
        """
        if self._in_flight is None:
            return None
        pending, self._in_flight = self._in_flight, None
        partial = self.root / partial_checkpoint_name(pending.step)
        try:
            pending.future.result()
        except _DCP_ERRORS as exc:
            raise _dcp_failure(exc, f"cannot write checkpoint `{partial}`", _WRITE_HINT) from exc
        return self._complete(pending.step)

    def close(self) -> None:
        """Release the staging buffers of asynchronous saves (call after the last `wait`)."""
        if self._stager is not None:
            self._stager.close()
            self._stager = None

    def _begin(self, step: int) -> Path:
        """Make an empty `.step-NNNNNN.partial/` on rank 0 (collective) and return it."""
        partial = self.root / partial_checkpoint_name(step)

        def start() -> None:  # shards left by a crashed save must not mix with the new ones
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)

        _on_rank0(start, f"create checkpoint folder `{partial}`")
        return partial

    def _complete(self, step: int) -> Path:
        """Rename the written `.partial` folder of `step`, mark it `COMPLETE` and prune (rank 0; collective)."""
        final, partial = self.folder(step), self.root / partial_checkpoint_name(step)

        def finish() -> None:
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            marker = {"step": step, "time": now, "world_size": world_size}
            write_json_atomically(final / COMPLETE_NAME, marker, indent=None)
            self._prune()

        _on_rank0(finish, f"complete checkpoint `{final}`")
        if current_rank() == 0:
            logger.info("saved checkpoint %s", final)
        return final

    def complete_steps(self) -> list[int]:
        """Return the steps of complete checkpoints, oldest first; warn once per torn folder."""
        complete, torn = self._scan()
        if current_rank() == 0:
            for path in sorted(torn - self._warned):
                logger.warning("ignoring torn checkpoint `%s` (no `%s` marker)", path, COMPLETE_NAME)
        self._warned |= torn
        return [step for step, _ in complete]

    def latest_step(self) -> int | None:
        """Return the newest step with a complete checkpoint, or None if there is none."""
        steps = self.complete_steps()
        return steps[-1] if steps else None

    def newest_intact_step(self) -> int | None:
        """Return the newest complete checkpoint that is intact on disk, warning about each newer damaged one.

        Raises:
            CheckpointError: Complete checkpoints exist but every one is damaged (exit 1, names the fix).
        """
        steps = self.complete_steps()
        skipped: list[tuple[Path, str]] = []
        for step in reversed(steps):
            problem = self.damage(step)
            if problem is None:
                for folder, why in skipped if current_rank() == 0 else ():
                    logger.warning("skipping damaged checkpoint `%s` (%s): resuming from `%s`", folder, why,
                                   self.folder(step))
                return step
            skipped.append((self.folder(step), problem))
        if skipped:
            folder, why = skipped[0]
            raise CheckpointError(
                f"every checkpoint in `{self.root}` is damaged: the newest, `{folder.name}`, because {why}",
                path=folder, caused_by=[f"`{f.name}`: {w}" for f, w in skipped[1:]],
                hint=f"restore them from a synced copy (`artifacts.sync_every_steps`), or delete `{self.root}` to "
                     "train from the start",
            )
        return None

    def damage(self, step: int) -> str | None:
        """Return what is wrong with complete checkpoint `step` on disk (None: intact), without loading it.

        Reads its `.metadata` (the DCP index) and checks that every shard file it names is there and
        long enough for the bytes it lists, so a damaged checkpoint is found before `dcp.load`
        (whose failures print tracebacks of their own) and the resume can fall back to an older one.
        """
        from torch.distributed.checkpoint import FileSystemReader

        folder = self.folder(step)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                metadata = FileSystemReader(str(folder)).read_metadata()
            storage = dict(metadata.storage_data or {})
        except Exception as exc:  # garbage, a truncated pickle, a missing file: any of them means damaged
            return f"its `.metadata` cannot be read ({type(exc).__name__})"
        needed: dict[str, int] = {}
        for info in storage.values():
            path, end = getattr(info, "relative_path", None), getattr(info, "offset", 0) + getattr(info, "length", 0)
            if not isinstance(path, str):
                return "its `.metadata` does not list its shard files"
            needed[path] = max(needed.get(path, 0), end)
        for name, size in sorted(needed.items()):
            shard = folder / name
            if not shard.is_file():
                return f"its shard `{name}` is missing"
            if shard.stat().st_size < size:
                return f"its shard `{name}` is cut short ({shard.stat().st_size} of {size} bytes)"
        return None

    def load(self, step: int, states: dict[str, Stateful]) -> None:
        """Load checkpoint `step` into `states` in place; collective, every rank calls it.

        The number of ranks may differ from the save's (DCP reshards DTensors).

        Args:
            step: A step listed by `complete_steps`.
            states: Named state objects; every name, and every key inside, must be in the checkpoint.

        Raises:
            CheckpointError: The folder is missing or torn, DCP cannot read it or it does not fit
                `states`, or a `TrainState` belongs to another run.
        """
        folder = self.folder(step)
        if not (folder / COMPLETE_NAME).is_file():
            raise CheckpointError(
                f"checkpoint `{folder}` is missing or torn (no `{COMPLETE_NAME}` marker)",
                hint=f"complete checkpoints in `{self.root}`: {self.complete_steps() or 'none'}",
            )
        _run_dcp(dcp.load, states, folder, f"cannot load checkpoint `{folder}`", _LOAD_HINT)
        if current_rank() == 0:
            logger.info("loaded checkpoint %s", folder)

    def _scan(self) -> tuple[list[tuple[int, Path]], set[Path]]:
        """Return the complete checkpoints as (step, folder), oldest first, and the torn folders."""
        complete = complete_checkpoints(self.root)
        done = {path for _, path in complete}
        torn = {path for path in (self.root.iterdir() if self.root.is_dir() else ())
                if path not in done and (STEP_RE.fullmatch(path.name) or PARTIAL_STEP_RE.fullmatch(path.name))}
        return complete, torn

    def _prune(self) -> None:
        """Delete all but the newest `keep` complete checkpoints, and every torn one (rank 0)."""
        complete, torn = self._scan()  # at the end of `save`, so torn folders are crash leftovers
        for path in [*(path for _, path in complete[: -self.keep]), *torn]:
            shutil.rmtree(path)
