"""Pre-train the smoke job's base model with dream-job's own prep and trainer and commit-ready copy it.

    .venv/bin/python -m dream_job.smoke_base            # writes jobs/assets/smoke-base/

runs the job `jobs/assets/smoke-base.yaml` (run folder `runs/smoke-base`, about 2 minutes on 2
CPU cores alone) and copies its export's weights, config and tokenizer to `jobs/assets/smoke-base/`,
the `model.base` of `jobs/smoke.yaml`. Regenerate it after changing the smoke rows, the tiny
tokenizer (`python -m dream_job.data.smoke_assets jobs/assets` first) or the trainer's numerics.
Training is deterministic by seed, so the same machine and torch build write the same bytes.

It sits above `train` (not in `data/`) because it drives the trainer.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from dream_job.data.prep import prepare_data
from dream_job.errors import InternalError
from dream_job.model.weights import INDEX_NAME, SINGLE_FILE_NAME
from dream_job.rundir import EXPORT_INFO_NAME
from dream_job.spec import load_spec
from dream_job.train.loop import train

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "assets" / "smoke-base.yaml"


def build_smoke_base(out: Path, run_dir: Path) -> Path:
    """Prepare and train `jobs/assets/smoke-base.yaml` in `run_dir`; copy the model to `out`; return `out`."""
    spec = load_spec(JOB, [f"artifacts.run_dir={run_dir}"])
    prepare_data(spec)
    result = train(spec)
    export = Path(result.export_dir)
    index = json.loads((export / INDEX_NAME).read_text(encoding="utf-8"))
    shards = sorted(set(index["weight_map"].values()))
    if len(shards) != 1:  # a 1.8 MB model is one shard; more would need the index copied too
        raise InternalError(f"the smoke base's export `{export}` has {len(shards)} weight shards, expected one")
    out.mkdir(parents=True, exist_ok=True)
    # Everything else the export holds (config, generation config, tokenizer), but not its record
    # (`EXPORT_INFO_NAME` names temporary paths) and the weights under the single-file name.
    for path in sorted(export.iterdir()):
        if path.name not in (EXPORT_INFO_NAME, INDEX_NAME, *shards):
            shutil.copyfile(path, out / path.name)
    shutil.copyfile(export / shards[0], out / SINGLE_FILE_NAME)
    return out


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "jobs" / "assets" / "smoke-base")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/smoke-base"))
    args = parser.parse_args()
    print(build_smoke_base(args.out, args.run_dir))


if __name__ == "__main__":
    main()
