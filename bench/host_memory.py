"""Host memory of every stage of the job, measured next to `budget/memory.py`'s figure (issue 26).

    python bench/host_memory.py --scale 7b --work /mnt/hm --json $OUT/host_memory-h100-2026-12-07.json --cgroup
    python bench/host_memory.py --scale tiny --work /tmp/hm          # CPU, a few minutes

Runs the real CLI, one process per command, on the rehearsal's assets (bench/rehearsal.py: a
Dream-7B `config.json` with the real tokenizer, synthetic s1K-1.1 rows, tiny GSM8K):

1. `random`: `jobs/dream-s1k-full-length.yaml` (full_8bit) with `model.init=random`: prep, then
   train 2 steps with a checkpoint and the export;
2. `lora`: `jobs/dream-s1k-lora-4090.yaml` with `model.base` = that export and `init:
   pretrained`: prep, train 2 steps with a checkpoint, merged export;
3. with `--cgroup`: the LoRA job again in a fresh run dir, prep -> train (2 checkpoints) -> export
   inside a cgroup memory limit (`--cgroup-gib`; default: the model's figure for that job on one
   GPU, or 10 % over the `lora` run's peak if that is more), on `--cgroup-work` (a disk: tmpfs
   pages would be charged to the cgroup); then `dream-job eval` of the `lora` export (the eval
   model load);
4. `full_8bit`: `jobs/dream-s1k-full-length.yaml` from the export: weight load and 2 steps, then
   killed (its checkpoint and export hold what the `random` run's did).

A thread samples each command's process tree every 50 ms: anonymous memory (heap, not
reclaimable) and file-backed memory (mapped libraries, the dataset; reclaimable) apart, as
proportional set sizes (`smaps_rollup` Pss_Anon / Pss_File: shared pages counted once over the
tree) and as `status` RssAnon / RssFile sums.
Each training process is cut into stages by its own log lines and files: weight load (start to
`weights ready`), first step, steady step (step 2), checkpoint save (a step's metrics line to
`saved checkpoint`), export (last save to `exported`); the eval process is the eval model load.
Each stage's peak of anonymous + file-backed over the tree (`measured_gib`) is written next to
`budget.estimate.plan_memory(...).host_stages_gib` for that spec, one row per stage and run, to
`--json` (with the command, torch version, GPU and date), after every command so that a run cut
short keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from host_memory_sampling import Command, run_command, train_stages  # noqa: E402  (bench/: helpers next to this)
from proc_tree import GIB, Gpu  # noqa: E402
from rehearsal_assets import profile_lengths, qwen_files, write_assets, write_base, write_rows  # noqa: E402

FULL_JOB = REPO / "jobs" / "dream-s1k-full-length.yaml"
LORA_JOB = REPO / "jobs" / "dream-s1k-lora-4090.yaml"
MAX_LENGTH = 2048
STAGES_IN_ORDER = ("prep", "weight load", "first step", "steady step", "checkpoint save", "export", "eval model load")


def estimated_stages(job: Path, sets: list[str], method: str) -> dict[str, float]:
    """`budget/memory.py`'s host figure per stage for this spec on one GPU."""
    from budget.estimate import plan_memory
    from budget.tokens import load_data_report
    from dream_job.spec import load_spec

    spec = load_spec(str(job), sets)
    report = load_data_report(spec.run_dir() / "data" / "data_report.json")
    return plan_memory(spec, method, 1, report).host_stages_gib


def job_sets(scale: str, assets: Path, run_dir: Path, base: Path, init: str, *, steps: int, save_every: int,
             compile_: bool) -> list[str]:
    """The `--set`s that turn a shipped job into a short run on the rehearsal's assets."""
    sets = [f"model.base={base}", f"model.init={init}", f"data.dataset={assets / 's1k-like.jsonl'}",
            f"data.max_length={MAX_LENGTH if scale == '7b' else 256}", "data.holdout_size=4", "data.num_proc=2",
            f"artifacts.run_dir={run_dir}", "artifacts.destinations=[]",
            f"train.max_steps={steps}", "train.global_batch_size=1", "train.micro_batch_size=1",
            f"train.save_every_steps={save_every}", "train.keep_checkpoints=1", "train.log_every_steps=1",
            f"train.compile={str(compile_).lower()}",
            "eval.suites=[gsm8k]", f"eval.sources.gsm8k={assets / 'gsm8k.jsonl'}", "eval.models=[final]",
            "eval.limit=1", "eval.batch_size=1", "eval.sampler.gen_length=32", "eval.sampler.block_length=32"]
    if scale == "tiny":
        sets += ["model.dtype=float32", "train.device=cpu", "data.num_proc=1", "train.activation_checkpointing=true"]
    else:
        sets += ["train.device=cuda"]
    return sets


def cli(job: Path, command: str, sets: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "dream_job", command, str(job), *extra, *(a for s in sets for a in ("--set", s))]


class Bench:
    """Runs the commands in order and keeps the result file up to date."""

    def __init__(self, ns: argparse.Namespace) -> None:
        import torch

        self.ns, self.env = ns, {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        gpu = Gpu()
        if gpu.name is None and torch.cuda.is_available():
            gpu.name = torch.cuda.get_device_name(0)
        self.log = ns.work / "host_memory.log"
        self.lora_peak_gib = 0.0
        self.result: dict[str, Any] = {
            "bench": "host_memory", "command": " ".join(sys.argv), "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "gpu": gpu.name, "scale": ns.scale, "cpu_count": os.cpu_count(),
            "host_ram_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB,
            "rows": [], "commands": [], "startup": {}, "cgroup": None,
        }

    def save(self) -> None:
        text = json.dumps(self.result, indent=2, default=str) + "\n"
        (self.ns.work / "host_memory.json").write_text(text)
        if self.ns.json:
            self.ns.json.write_text(text)
        if self.ns.out_dir:
            gpu = (self.result["gpu"] or "cpu").lower()
            short = next((name for name in ("h200", "h100", "a100", "l40s", "4090", "l4") if name in gpu), "cpu")
            (self.ns.out_dir / f"host_memory-{short}-{self.result['date']}.json").write_text(text)

    def run(self, label: str, args: list[str], metrics: Path | None = None, **kwargs: Any) -> Command:
        print(f"== {label}: {' '.join(args[2:5])} ...", flush=True)
        command = run_command(Command(label, args), self.env, self.log, metrics, **kwargs)
        peak = max((s.anon + s.file for s in command.samples), default=0) / GIB
        self.result["commands"].append({"label": label, "exit_code": command.code, "seconds": command.ended
                                        - command.started, "peak_gib": peak})
        print(f"   exit {command.code} in {command.ended - command.started:.1f} s, tree peak {peak:.2f} GiB",
              flush=True)
        self.save()
        if command.code != 0 and not (kwargs.get("kill_after_step") and command.code == -signal.SIGKILL):
            tail = "\n".join(text for _, text in command.lines[-15:])
            raise SystemExit(f"{label} failed with exit code {command.code}:\n{tail}")
        return command

    def record(self, run: str, method: str, init: str, stages: dict[str, dict[str, Any] | None],
               estimate: dict[str, float]) -> None:
        for stage in STAGES_IN_ORDER:
            measured = stages.get(stage)
            if measured is None:
                continue
            est = estimate[stage]
            self.result["rows"].append({"stage": stage, "method": method, "init": init, "run": run,
                                        **{k: round(v, 3) if isinstance(v, float) else v for k, v in measured.items()},
                                        "estimated_gib": round(est, 3),
                                        "error_pct": round(100 * (est - measured["measured_gib"])
                                                           / measured["measured_gib"], 1)})
        self.save()

    def training(self, run: str, job: Path, method: str, sets: list[str], init: str,
                 kill_after_step: int | None = None) -> Command:
        run_dir = Path(next(s.split("=", 1)[1] for s in sets if s.startswith("artifacts.run_dir=")))
        self.run(f"{run}: prep", cli(job, "prep", sets))
        command = self.run(f"{run}: train", cli(job, "train", sets), run_dir / "logs" / "metrics.jsonl",
                           kill_after_step=kill_after_step)
        self.record(run, method, init, train_stages(command), estimated_stages(job, sets, method))
        ready = command.first("weights ready")
        line = next((text for _, text in command.lines if "weights ready" in text), "")
        self.result["startup"][run] = {
            "process_start_to_weights_ready_s": None if ready is None else ready - command.started,
            "weights_ready_line": line,
            "process_start_to_first_step_s": None if 1 not in command.steps else command.steps[1] - command.started}
        self.save()
        return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["7b", "tiny"], default="7b")
    parser.add_argument("--work", type=Path, required=True, help="Run dirs and assets (a tmpfs is fastest).")
    parser.add_argument("--tokenizer-files", type=Path, default=None,
                        help="Folder with Qwen2.5 vocab.json, merges.txt.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="Also write them here as host_memory-<gpu>-<date>.json (bench/results/ naming).")
    parser.add_argument("--cgroup", action="store_true", help="Also run the LoRA job inside a cgroup memory limit.")
    parser.add_argument("--cgroup-gib", type=float, default=None, help="The limit (default: the model's figure).")
    parser.add_argument("--cgroup-work", type=Path, default=None, help="Run dir of the cgroup run (a disk).")
    parser.add_argument("--skip", action="append", default=[], help="Skip a run: lora, eval, cgroup, full_8bit.")
    parser.add_argument("--prep-rows", type=int, default=None,
                        help="Only measure the LoRA job's prep on this many s1K-sized synthetic rows (no GPU).")
    ns = parser.parse_args()
    ns.work = ns.work.resolve()
    ns.work.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))  # `timeout`: unwind, the result file is kept
    bench = Bench(ns)
    (ns.work / "host_memory.log").write_text("")
    if ns.prep_rows:
        prep_only(bench, ns)
        return
    assets = ns.work / "assets"
    write_assets(ns.scale, assets, qwen_files(ns.tokenizer_files),
                           MAX_LENGTH if ns.scale == "7b" else 256)
    tiny = ns.scale == "tiny"

    random_dir = ns.work / "random"
    shutil.rmtree(random_dir, ignore_errors=True)
    sets = job_sets(ns.scale, assets, random_dir, assets / "base", "random", steps=2, save_every=2, compile_=False)
    if tiny:
        sets += ["train.method=full"]
    bench.training("random", FULL_JOB, "full" if tiny else "full_8bit", sets, "random")
    export = random_dir / "export"
    shutil.rmtree(random_dir / "checkpoints", ignore_errors=True)  # room on the tmpfs

    if "lora" not in ns.skip:
        lora_dir = ns.work / "lora"
        shutil.rmtree(lora_dir, ignore_errors=True)
        lora_sets = job_sets(ns.scale, assets, lora_dir, export, "pretrained", steps=2, save_every=2,
                             compile_=not tiny)
        bench.training("lora", LORA_JOB, "lora", lora_sets, "pretrained")
        shutil.rmtree(lora_dir / "checkpoints", ignore_errors=True)
        bench.lora_peak_gib = max((row["measured_gib"] for row in bench.result["rows"] if row["run"] == "lora"),
                                  default=0.0)

    # Before the eval: the limited run is what the issue asks for, the eval load one more stage.
    if ns.cgroup and "cgroup" not in ns.skip:
        cgroup_run(bench, ns, assets, export, tiny)

    if "lora" not in ns.skip and "eval" not in ns.skip:
        command = bench.run("lora: eval", cli(LORA_JOB, "eval", lora_sets, "--model", "final"))
        bench.record("lora", "lora", "pretrained", {"eval model load": command.peak(command.started, command.ended)},
                     estimated_stages(LORA_JOB, lora_sets, "lora"))
        shutil.rmtree(ns.work / "lora" / "export", ignore_errors=True)

    if "full_8bit" not in ns.skip and not tiny:
        full_dir = ns.work / "full_8bit"
        shutil.rmtree(full_dir, ignore_errors=True)
        sets = job_sets(ns.scale, assets, full_dir, export, "pretrained", steps=3, save_every=3, compile_=False)
        # Killed after step 2: the save and export of full_8bit were measured in the `random` run.
        bench.training("full_8bit", FULL_JOB, "full_8bit", sets, "pretrained", kill_after_step=2)
        shutil.rmtree(full_dir / "checkpoints", ignore_errors=True)
    print(json.dumps(bench.result["rows"], indent=1))


def prep_only(bench: Bench, ns: argparse.Namespace) -> None:
    """The LoRA job's prep (`data.num_proc` workers, the real tokenizer) on `--prep-rows` rows of s1K-1.1's lengths.

    Prep runs on the CPU only, so its host memory here is what it takes on the GPU box.
    """
    from dream_job.data.tokenizer import load_tokenizer

    assets = ns.work / "assets"
    write_base(assets / "base", "7b", qwen_files(ns.tokenizer_files))
    rows = assets / f"s1k-like-{ns.prep_rows}.jsonl"
    if not rows.is_file():
        lengths = profile_lengths(ns.prep_rows, 16384, seed=17)  # full-length rows, as s1K-1.1 ships them
        write_rows(rows, load_tokenizer(str(assets / "base")), lengths, seed=17)
    run_dir = ns.work / "prep"
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = job_sets("7b", assets, run_dir, assets / "base", "pretrained", steps=2, save_every=1, compile_=True)
    sets = [s for s in sets if not s.startswith("data.num_proc=")]  # the job's own (4)
    sets.append(f"data.dataset={rows}")
    command = bench.run("prep", cli(LORA_JOB, "prep", sets))
    bench.record("prep", "lora", "pretrained", {"prep": command.peak(command.started, command.ended)},
                 estimated_stages(LORA_JOB, sets, "lora"))


def cgroup_run(bench: Bench, ns: argparse.Namespace, assets: Path, export: Path, tiny: bool) -> None:
    """The LoRA job, prep -> train (2 checkpoints) -> export, inside a cgroup memory limit."""
    sys.path.insert(0, str(REPO / "tests"))
    from cgroup_limit import MemoryLimit

    why = MemoryLimit.available()
    work = (ns.cgroup_work or ns.work / "cgroup").resolve()
    shutil.rmtree(work, ignore_errors=True)
    sets = job_sets(ns.scale, assets, work / "run", export, "pretrained", steps=2, save_every=1, compile_=not tiny)
    # The same data as the `lora` run's: its data report stands in for the one prep writes in the cgroup.
    estimate = estimated_stages(LORA_JOB, job_sets(ns.scale, assets, ns.work / "lora", export, "pretrained", steps=2,
                                                   save_every=1, compile_=not tiny), "lora")
    # The model's figure, or 10 % over what the unlimited LoRA run held if that was more: the
    # cgroup also charges page cache and kernel memory, which the kernel reclaims only in part.
    limit_gib = ns.cgroup_gib or max(max(estimate.values()), round(1.1 * bench.lora_peak_gib * 4 + 0.5) / 4)
    info: dict[str, Any] = {"limit_gib": limit_gib, "estimate_gib": max(estimate.values()), "run_dir": str(work)}
    bench.result["cgroup"] = info
    if why is not None:
        info["skipped"] = why
        bench.save()
        return
    limit = MemoryLimit(f"dream-job-host-memory-{os.getpid()}", int(limit_gib * GIB))
    info["cgroup_version"] = limit.version
    try:
        for step in ("prep", "train"):
            command = Command(f"cgroup: {step}", cli(LORA_JOB, step, sets))
            run_command(command, bench.env, bench.log, work / "run" / "logs" / "metrics.jsonl", preexec=limit.preexec)
            info[f"{step}_exit_code"] = command.code
            info[f"{step}_seconds"] = command.ended - command.started
            info[f"{step}_tree_peak_gib"] = max((s.anon + s.file for s in command.samples), default=0) / GIB
            info["cgroup_peak_gib"] = limit.peak_bytes() / GIB
            info["oom_kills"] = limit.oom_kills()
            bench.save()
            if command.code != 0:
                break
        info["checkpoints_saved"] = len(command.all("saved checkpoint"))
        info["exported"] = (work / "run" / "export" / "dream_job_export.json").is_file()
    finally:
        bench.save()
        limit.remove()
        shutil.rmtree(work / "run" / "checkpoints", ignore_errors=True)



if __name__ == "__main__":
    main()
