"""Verbs about the job spec and its data: `prep`, `spec`, `schema`."""

from __future__ import annotations

import json

from dream_job.commands.failures import guarded, require_container
from dream_job.commands.options import JsonOpt, SetOpt, SpecArg
from dream_job.spec import load_spec


@guarded
def prep(spec: SpecArg, set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Tokenize the job's dataset into `<run_dir>/data/` and print the data report.

    Example: `dream-job prep jobs/dream-s1k.yaml --set data.dataset=./s1k.parquet`
    """
    from dream_job.pipeline import prep_stage
    from dream_job.progress import data_report_tables, stderr, stdout
    from dream_job.rundir import locked_run_dir

    require_container()
    job = load_spec(spec, set_)
    with locked_run_dir(job.run_dir(), verb="dream-job prep"):
        result, _ = prep_stage(job, verb="dream-job prep")
    if as_json:
        print(json.dumps(result.report, indent=2))
        return
    for table in data_report_tables(result.report):
        stdout.print(table)
    state = "reused (inputs unchanged)" if result.reused else "written"
    stderr.print(f"prepared data {state}: {result.data_dir}", highlight=False)


@guarded
def show_spec(spec: SpecArg, set_: SetOpt = None) -> None:
    """Validate a job file with its overrides and print the resolved spec as JSON.

    Example: `dream-job spec jobs/smoke.yaml --set train.epochs=2`
    """
    print(load_spec(spec, set_).model_dump_json(indent=2))


@guarded
def schema() -> None:
    """Print the JSON Schema of job files (for editors and validation).

    Example: `dream-job schema > job.schema.json`
    """
    from dream_job.spec import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))
