"""Follow one `dream-job` process of the rehearsal: its log lines, run-dir files, memory and bytes written.

A `Monitor` reads the process's output (timestamped into the rehearsal log), cuts its time into
`Span`s at the pipeline's `stage X: running` / `done` lines, and samples the process tree every
0.2 s: RSS (RssAnon and RssFile apart), `wchar`, the GPU's used memory (NVML), new metrics lines
and new checkpoint / export / stage-record files, each an event with its time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proc_tree import GIB, Gpu, proc_value, tree_pids


@dataclass
class Span:
    """One measured stage: its times and the peaks sampled while it ran."""

    name: str
    start: float
    end: float | None = None
    peak_gpu_gib: float | None = None
    peak_rss_gib: float = 0.0
    peak_anon_gib: float = 0.0  # RssAnon (heap; not reclaimable) and RssFile (mapped files) apart
    peak_file_gib: float = 0.0
    wchar_start: int = 0
    wchar_end: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else self.end - self.start


class Monitor:
    """Follow one `dream-job` process: its log lines, run-dir files, RSS, `wchar` and GPU memory."""

    def __init__(self, process: subprocess.Popen, run_dir: Path, gpu: Gpu, log_path: Path, label: str) -> None:
        self.process, self.run_dir, self.gpu, self.label = process, run_dir, gpu, label
        self.events: list[tuple[float, str]] = []
        self.spans: list[Span] = []
        self.wchar_seen: dict[int, int] = {}
        self.lock = threading.Lock()
        self.log = log_path.open("a")
        self.open_span(f"{label}: start-up", time.monotonic())
        threading.Thread(target=self._read_output, daemon=True).start()
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def wchar(self) -> int:
        """Bytes written by the tree so far (exited children keep their last sample)."""
        for pid in tree_pids(self.process.pid):
            value = proc_value(f"/proc/{pid}/io", "wchar:")
            if value:
                self.wchar_seen[pid] = value
        return sum(self.wchar_seen.values())

    def open_span(self, name: str, now: float) -> None:
        with self.lock:
            written = self.wchar()
            if self.spans and self.spans[-1].end is None:
                self.spans[-1].end, self.spans[-1].wchar_end = now, written
            self.spans.append(Span(name, now, wchar_start=written))

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            now = time.monotonic()
            self.log.write(f"[{now:.2f}] {line}")
            self.log.flush()
            sys.stderr.write(line)
            text = line.strip()
            self.events.append((now, text))
            # Stage boundaries: `stage X: running` opens X; `stage X: done|skipped` (or `preflight:
            # passed`) ends it, so whatever ran before is named by the stage it belonged to.
            if "stage " in text and ": running" in text:
                self.open_span(f"{self.label}: {text.split('stage ', 1)[1].split(':', 1)[0]}", now)
            elif text.startswith("preflight: passed") or (text.startswith("stage ") and (
                    ": done" in text or ": skipped" in text)):
                stage = "preflight" if text.startswith("preflight") else text.split()[1].rstrip(":")
                with self.lock:
                    self.spans[-1].name = f"{self.label}: {stage}"
                self.open_span(f"{self.label}: after {stage}", now)

    def _sample(self) -> None:
        metrics = self.run_dir / "logs" / "metrics.jsonl"
        # What an earlier run left (its steps and checkpoints) is not this process's doing.
        seen_lines = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
        seen_files = {*self.run_dir.glob("checkpoints/step-*/COMPLETE"), *self.run_dir.glob("stages/*.done")}
        while self.process.poll() is None:
            now = time.monotonic()
            pids = tree_pids(self.process.pid)
            rss = sum(proc_value(f"/proc/{pid}/status", "VmRSS:") for pid in pids) * 1024 / GIB
            anon = sum(proc_value(f"/proc/{pid}/status", "RssAnon:") for pid in pids) * 1024 / GIB
            file = sum(proc_value(f"/proc/{pid}/status", "RssFile:") for pid in pids) * 1024 / GIB
            gpu = self.gpu.used_gib()
            with self.lock:
                self.wchar()
                span = self.spans[-1]
                span.peak_rss_gib = max(span.peak_rss_gib, rss)
                span.peak_anon_gib, span.peak_file_gib = max(span.peak_anon_gib, anon), max(span.peak_file_gib, file)
                if gpu is not None:
                    span.peak_gpu_gib = max(span.peak_gpu_gib or 0.0, gpu)
            if metrics.is_file():
                lines = metrics.read_text().splitlines()
                for line in lines[seen_lines:]:
                    self.events.append((now, f"metrics step {json.loads(line)['step']}"))
                seen_lines = len(lines)
            for path in [*self.run_dir.glob("checkpoints/step-*/COMPLETE"), self.run_dir / "export" /
                         "dream_job_export.json", *self.run_dir.glob("stages/*.done")]:
                if path.exists() and path not in seen_files:
                    seen_files.add(path)
                    self.events.append((now, f"file {path.relative_to(self.run_dir)}"))
            time.sleep(0.2)

    def finish(self) -> int:
        code = self.process.wait()
        self.sampler.join()
        now = time.monotonic()
        with self.lock:
            span = self.spans[-1]
            span.end, span.wchar_end = now, sum(self.wchar_seen.values())
        self.log.close()
        return code

    def first(self, needle: str) -> float | None:
        """When the first event holding `needle` happened (log lines carry a timestamp prefix)."""
        return next((t for t, text in self.events if needle in text), None)

    def wait_for_file(self, path: Path, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the run ended (or {timeout_s:.0f} s passed) before {path} appeared")
            time.sleep(0.1)
