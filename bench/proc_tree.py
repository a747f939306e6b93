"""What a process tree holds right now: its pids, values from `/proc`, and the GPU's used memory.

Shared by the benches that follow the CLI's processes (bench/rehearsal.py, bench/host_memory.py).
Linux only (`/proc`); the GPU through NVML, empty on a machine without one.
"""

from __future__ import annotations

from pathlib import Path

GIB = 2**30


def tree_pids(root: int) -> list[int]:
    """Return the pids of `root` and all its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, found = [root], []
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def proc_value(path: str, key: str) -> int:
    """Return the number after `key` in a `/proc` file (`/proc/<pid>/status`, `/proc/<pid>/io`); 0 if absent."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def memory_of(pid: int) -> dict[str, int]:
    """One process's resident memory in bytes (zeros once it is gone).

    RssAnon / RssFile from `status`; Pss_Anon / Pss_File from `smaps_rollup`: a page shared by n
    processes (the libraries in every inductor worker, pages inherited by `fork`) counts 1/n in
    each, so the tree's sum is what the node holds, as a cgroup charges it.
    """
    values = {"RssAnon": 0, "RssFile": 0, "Pss_Anon": 0, "Pss_File": 0}
    for name in ("status", "smaps_rollup"):
        try:
            for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
                key = line.split(":", 1)[0]
                if key in values:
                    values[key] = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    return values


class Gpu:
    """Device-wide used memory through NVML (whatever holds it: context, allocator cache, other processes)."""

    def __init__(self) -> None:
        self.handle = None
        self.name = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.name = pynvml.nvmlDeviceGetName(self.handle)
            self.name = self.name.decode() if isinstance(self.name, bytes) else self.name
            self._info = pynvml.nvmlDeviceGetMemoryInfo
        except Exception:  # no NVML (CPU machine): GPU columns stay empty
            self.handle = None

    def used_gib(self) -> float | None:
        """Return the device's used memory in GiB, None without NVML."""
        return None if self.handle is None else self._info(self.handle).used / GIB
