"""Record a new user's launch walk (issue 24): estimate, paste the printed line, `launch --dryrun`.

Offline, on the test harness of `tests/integration/test_launch_walk.py`: SkyPilot 0.14.1's real
API server in its own venv (`~/.cache/dream-job-test/sky-venv`, with the launcher extra's
dependencies: run that test module once first), catalogs seeded from real rows, AWS on
`moto_server` (real `sky check aws`, zone-id mapping, S3), RunPod/Vast/Lambda passing `sky check`.
For each case it prints the commands and what they printed (SkyPilot's chosen rows, the last
lines of `dream-job launch --dryrun`):

    .venv/bin/python bench/launch_walk.py > bench/results/launch_walk-2026-12-07.txt
"""

from __future__ import annotations

import re
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.tools.sky_env import SKY_VENV  # noqa: E402
from tests.tools.sky_server import start_on_moto  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CASES = [
    ("jobs/dream-s1k-lora-4090.yaml", []),
    ("jobs/dream-s1k-lora-4090.yaml", ["budget.clouds=[runpod]"]),
    ("jobs/dream-s1k.yaml", []),
    ("jobs/dream-s1k.yaml", ["budget.clouds=[lambda]", "budget.max_cost_yuan=126"]),  # ¥100 caps it at 0.36 h
    ("jobs/dream-s1k.yaml", ["budget.clouds=[aws]", "budget.managed_job=false", "budget.use_spot=false",
                             "budget.max_cost_yuan=400"]),
    ("jobs/dream-s1k-full-length.yaml", ["artifacts.destinations=[hf://you/x]"]),
    ("jobs/rehearsal-7b.yaml", ["model.base=Dream-org/Dream-v0-Base-7B", "data.dataset=simplescaling/s1K-1.1"]),
]


def _rows(text: str) -> list[str]:
    """SkyPilot's chosen (✔) rows and the plan's own rows worth keeping."""
    keep = ("offer:", "caps:", "image:", "controller:", "run dir:", "note:", "Dryrun finished", "dry run:", "error:",
            "hint:")
    return [line.rstrip() for line in text.splitlines()
            if line.rstrip().endswith("✔") or line.startswith(keep) or "Proceed?" in line or "Error" in line]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server, aws = start_on_moto(SKY_VENV / "bin" / "python", Path(tmp))
        try:
            for job, sets in CASES:
                set_args = [a for s in sets for a in ("--set", s)]
                env = {"DREAM_JOB_RUNS_BUCKET": "dream-job-runs-ada", "HF_TOKEN": "hf_walk",
                       "AWS_ACCESS_KEY_ID": aws.access_key, "AWS_SECRET_ACCESS_KEY": aws.secret_key}
                print(f"\n$ dream-job estimate {shlex.join([job, *set_args])}")
                shown = server.dream_job("estimate", job, *set_args, env=env)
                line = shown.stdout.strip().splitlines()[-1]
                print(line)
                words = shlex.split(line)
                line_env = {}
                while re.fullmatch(r"[A-Z_]+=.*", words[0]):  # the line's leading environment
                    key, _, value = words.pop(0).partition("=")
                    line_env[key] = value
                argv = words
                print(f"$ {line}   # answered n")
                pasted = server.sky(*argv[1:], stdin="n\n", env={**env, **line_env})
                print("\n".join(_rows(ANSI.sub("", pasted.stdout + pasted.stderr))))
                print(f"$ dream-job launch {shlex.join([job, *set_args])} --dryrun")
                dry = server.dream_job("launch", job, *set_args, "--dryrun", env=env)
                print("\n".join(_rows(ANSI.sub("", dry.stdout + dry.stderr))))
                print(f"(exit {dry.returncode})")
        finally:
            server.stop()
            aws.stop()


if __name__ == "__main__":
    main()
