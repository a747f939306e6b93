"""Verb `eval`: decode the suites with a model and write `<run_dir>/eval/`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dream_job.commands.failures import guarded, require_container
from dream_job.commands.options import JsonOpt, SetOpt, SpecArg
from dream_job.errors import UsageError
from dream_job.spec import load_spec

ModelOpt = Annotated[str, typer.Option("--model", help="`base`, `final` (the run's export) or a model folder.")]


ShardOpt = Annotated[str | None, typer.Option("--shard", hidden=True, help="`i/n`: decode every n-th batch from "
                                              "the i-th into part files (set by the process that starts n of them).")]


@guarded
def eval_(spec: SpecArg, model: ModelOpt = "final", set_: SetOpt = None,
          as_json: JsonOpt = False, shard: ShardOpt = None) -> None:
    """Evaluate a model on the job's suites; items already decoded are reused.

    Example: `dream-job eval jobs/smoke.yaml --model base`, then `--model final` for the side-by-side report
    """
    import json
    import signal

    from dream_job.eval.run import evaluate
    from dream_job.eval.shards import Shard
    from dream_job.pipeline import evaluate_models
    from dream_job.progress import eval_progress, eval_summary_table, stderr, stdout
    from dream_job.rundir import EVAL_DIR, EVAL_SUMMARY_NAME, EXPORT_DIR, locked_run_dir

    require_container()
    job = load_spec(spec, set_)
    label, folder = (model, None) if model in ("base", "final") else (Path(model).name, Path(model))
    if model == "final":
        folder = job.run_dir() / EXPORT_DIR
    if shard is not None:
        try:
            share = Shard.parse(shard)
        except ValueError as exc:
            raise UsageError(f"--shard {exc}", hint="pass `--shard 0/2` for the first of two processes") from None
        # A shard ends at once on its parent's SIGTERM (the parent reports the stop, once for all
        # processes, and keeps the parts written; a torn last line is cut off when they are merged).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with locked_run_dir(job.run_dir(), verb=f"dream-job eval --shard {share}"):
            evaluate(job, model_label=label, model_dir=folder, shard=share)
        return
    with locked_run_dir(job.run_dir(), verb="dream-job eval"), eval_progress() as progress:
        report = evaluate_models(job, [(label, folder)], progress=progress)
    summary = json.loads((job.run_dir() / EVAL_DIR / EVAL_SUMMARY_NAME).read_text())
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    stdout.print(eval_summary_table(summary))
    stderr.print(f"report: {report}", highlight=False)
