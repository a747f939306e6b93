"""Run processes under a cgroup memory limit (v2 `memory.max` or v1 `memory.limit_in_bytes`), as root.

Used by the slow host-memory test and by bench/host_memory.py: a process started with
`MemoryLimit.preexec` (and everything it starts) is charged to the cgroup; an allocation past the
limit that the kernel cannot reclaim (page cache is reclaimed first) is OOM-killed. `peak_bytes`
is the cgroup's own peak (`memory.peak` / `memory.max_usage_in_bytes`, page cache included).
"""

from __future__ import annotations

import os
from pathlib import Path

V2_ROOT = Path("/sys/fs/cgroup")
V1_ROOT = Path("/sys/fs/cgroup/memory")


class MemoryLimit:
    """A fresh cgroup named `name` limited to `limit_bytes` of memory (swap off where the controller allows)."""

    def __init__(self, name: str, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        if (V2_ROOT / "cgroup.controllers").is_file() and "memory" in (V2_ROOT / "cgroup.controllers").read_text():
            self.version, self.path = 2, V2_ROOT / name
        else:
            self.version, self.path = 1, V1_ROOT / name
        if self.path.exists():
            self.path.rmdir()
        if self.version == 2 and "memory" not in (V2_ROOT / "cgroup.subtree_control").read_text().split():
            # Children get the memory controller only where the parent hands it down; this fails
            # (EBUSY) where the parent itself holds processes, and `available` says so.
            (V2_ROOT / "cgroup.subtree_control").write_text("+memory")
        self.path.mkdir()
        if self.version == 2:
            (self.path / "memory.max").write_text(str(limit_bytes))
            if (self.path / "memory.swap.max").exists():
                (self.path / "memory.swap.max").write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            if (self.path / "memory.memsw.limit_in_bytes").exists():
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
            (self.path / "memory.max_usage_in_bytes").write_text("0")

    @staticmethod
    def available() -> str | None:
        """None when a memory cgroup can be made here, else why not (for a skip message)."""
        if os.geteuid() != 0:
            return "not root"
        try:
            probe = MemoryLimit(f"dream-job-probe-{os.getpid()}", 2**30)
        except OSError as exc:
            return f"cannot create a memory cgroup under `{V2_ROOT}` ({exc})"
        probe.remove()
        return None

    def preexec(self) -> None:
        """For `subprocess.Popen(preexec_fn=...)`: move the new process into the cgroup before it runs."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_bytes(self) -> int:
        """The cgroup's peak memory so far (page cache included)."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        path = self.path / name
        return int(path.read_text()) if path.exists() else -1

    def oom_kills(self) -> int:
        """How many processes the cgroup's limit killed."""
        if self.version == 2:
            events = dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
            return int(events.get("oom_kill", 0))
        control = dict(line.split() for line in (self.path / "memory.oom_control").read_text().splitlines())
        return int(control.get("oom_kill", 0))

    def remove(self) -> None:
        """Delete the cgroup (its processes must have exited)."""
        if self.path.exists():
            self.path.rmdir()
