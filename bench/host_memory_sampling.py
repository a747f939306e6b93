"""Run one `dream-job` command to its end while sampling its process tree's memory (bench/host_memory.py).

`run_command` starts the command, records its output lines and the time each metrics step
appears, and samples the tree every 50 ms: proportional set sizes (`smaps_rollup` Pss_Anon /
Pss_File, shared pages counted once) and `status` RssAnon / RssFile sums. `Command.peak` gives a
time window's peaks; `train_stages` cuts a `dream-job train` process into weight load, first
step, steady step, checkpoint save and export by its log lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proc_tree import GIB, memory_of, tree_pids

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Sample:
    t: float
    anon: int  # Pss_Anon of the tree (RssAnon where smaps_rollup is missing)
    file: int  # Pss_File of the tree (RssFile where smaps_rollup is missing)
    main_anon: int
    main_file: int
    processes: int
    rss_anon: int = 0  # RssAnon and RssFile summed over the tree (shared pages counted in each process)
    rss_file: int = 0


@dataclass
class Command:
    """One CLI process: its samples, timestamped output lines and file events, exit code."""

    label: str
    args: list[str]
    started: float = 0.0
    ended: float = 0.0
    code: int | None = None
    samples: list[Sample] = field(default_factory=list)
    lines: list[tuple[float, str]] = field(default_factory=list)
    steps: dict[int, float] = field(default_factory=dict)

    def first(self, needle: str) -> float | None:
        return next((t for t, text in self.lines if needle in text), None)

    def all(self, needle: str) -> list[float]:
        return [t for t, text in self.lines if needle in text]

    def peak(self, start: float | None, end: float | None) -> dict[str, Any] | None:
        """The stage's peaks: of anon + file over the tree, and of each alone."""
        if start is None or end is None:
            return None
        inside = [s for s in self.samples if start <= s.t <= end]
        if not inside:  # a stage shorter than the sampling interval: the nearest sample after it
            inside = [s for s in self.samples if s.t >= end][:1]
        if not inside:
            return None
        top = max(inside, key=lambda s: s.anon + s.file)
        return {"measured_gib": (top.anon + top.file) / GIB, "anon_at_peak_gib": top.anon / GIB,
                "file_at_peak_gib": top.file / GIB, "peak_anon_gib": max(s.anon for s in inside) / GIB,
                "peak_file_gib": max(s.file for s in inside) / GIB,
                "main_process_peak_gib": max(s.main_anon + s.main_file for s in inside) / GIB,
                "peak_rss_sum_gib": max(s.rss_anon + s.rss_file for s in inside) / GIB,
                "processes": max(s.processes for s in inside), "seconds": end - start}


def run_command(command: Command, env: dict[str, str], log: Path, metrics: Path | None,
                preexec: Callable[[], None] | None = None, timeout_s: float = 3600,
                kill_after_step: int | None = None) -> Command:
    """Run one CLI command to its end, sampling its tree's memory and recording its lines and steps.

    With `kill_after_step`, the process tree is SIGKILLed once that step's metrics line appears
    (its checkpoint and export are measured elsewhere; this saves their minutes).
    """
    command.started = time.monotonic()
    process = subprocess.Popen(command.args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1, start_new_session=True, preexec_fn=preexec)

    def read() -> None:
        assert process.stdout is not None
        with log.open("a") as out:
            for line in process.stdout:
                now = time.monotonic()
                out.write(f"[{command.label} {now - command.started:8.2f}] {line}")
                out.flush()
                command.lines.append((now, line.strip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen = len(metrics.read_text().splitlines()) if metrics is not None and metrics.is_file() else 0
    deadline = command.started + timeout_s
    while process.poll() is None:
        now = time.monotonic()
        pids = tree_pids(process.pid)
        stats = [memory_of(pid) for pid in pids]
        pss = all(s["Pss_Anon"] or s["Pss_File"] for s in stats[:1])
        anon, file = ("Pss_Anon", "Pss_File") if pss else ("RssAnon", "RssFile")
        main = stats[0]
        command.samples.append(Sample(now, sum(s[anon] for s in stats), sum(s[file] for s in stats),
                                      main[anon], main[file], len(pids), sum(s["RssAnon"] for s in stats),
                                      sum(s["RssFile"] for s in stats)))
        if metrics is not None and metrics.is_file():
            lines = metrics.read_text().splitlines()
            for line in lines[seen:]:
                try:
                    command.steps.setdefault(int(json.loads(line)["step"]), now)
                except (ValueError, KeyError):
                    break  # a line being written: read it next time
                seen += 1
        if now > deadline:
            os.killpg(process.pid, signal.SIGTERM)
        if kill_after_step is not None and kill_after_step in command.steps:
            os.killpg(process.pid, signal.SIGKILL)
            time.sleep(0.2)
        time.sleep(0.05)
    reader.join()
    command.code, command.ended = process.returncode, time.monotonic()
    return command


def train_stages(command: Command) -> dict[str, dict[str, Any] | None]:
    """Cut a `dream-job train` process into stages by its log lines and metrics (module docstring)."""
    ready = command.first("weights ready")
    saves = command.all("saved checkpoint")
    exported = command.first("exported ")
    step1, step2 = command.steps.get(1), command.steps.get(2)
    after_step1 = next((t for t in saves if step1 is not None and t >= step1), step1)
    stages = {
        "weight load": command.peak(command.started, ready),
        "first step": command.peak(ready, step1),
        "steady step": command.peak(after_step1 if step2 is not None and after_step1 and after_step1 < step2
                                    else step1, step2),
    }
    save_peaks = []
    for step, t in sorted(command.steps.items()):
        done = next((s for s in saves if s >= t), None)
        if done is not None:
            save_peaks.append(command.peak(t, done))
    stages["checkpoint save"] = max((p for p in save_peaks if p), key=lambda p: p["measured_gib"], default=None)
    stages["export"] = command.peak(saves[-1] if saves else None, exported)
    return stages
