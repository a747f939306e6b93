"""Time what issue 15 changed, through the real CLI: failing fast offline, and a finished run re-entered.

Usage: `.venv/bin/python bench/pipeline_truth.py [work dir]` (CPU; a few minutes). Prints one line
per measurement: the command's wall time and exit code.

1. `prep` of a hub dataset with no network: with `HF_HUB_OFFLINE=1`, and with the Hub unreachable
   (`HF_ENDPOINT` on a closed loopback port): exit 3, one sentence.
2. The smoke job (16 steps) run to its end, then `run` again (every stage skipped on its
   fingerprint), then `status`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(label: str, args: list[str], env: dict[str, str] | None = None) -> None:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dream_job", *args], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    error = next((line for line in result.stderr.splitlines() if line.startswith("error:")), "")
    print(f"{label}: {time.perf_counter() - started:.1f} s, exit {result.returncode} {error[:100]}", flush=True)


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="pipeline-truth-"))
    hub = ["prep", "jobs/smoke.yaml", "--set", "data.dataset=simplescaling/s1K-1.1", "--set",
           f"artifacts.run_dir={work / 'hub'}"]
    timed("prep, hub dataset, HF_HUB_OFFLINE=1", hub, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(work / "hf")})
    timed("prep, hub dataset, Hub unreachable", hub, {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(work / "hf")})
    run = ["jobs/smoke.yaml", "--set", f"artifacts.run_dir={work / 'run'}", "--set",
           f"artifacts.destinations=[file://{work / 'pub'}]", "--set", "train.max_steps=16", "--set", "eval.limit=4",
           "--set", "eval.sampler.gen_length=24", "--set", "eval.sampler.steps=12"]
    timed("run, smoke job to its end", ["run", *run])
    timed("run again, every stage skipped", ["run", *run])
    timed("status", ["status", *run])


if __name__ == "__main__":
    main()
