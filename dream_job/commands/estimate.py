"""Verb `estimate`: the cost preflight a user runs on the laptop before paying anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dream_job.cli import JsonOpt, SetOpt, SpecArg, app, guarded
from dream_job.spec import load_spec

ReportOpt = Annotated[Path | None, typer.Option("--data-report", help="A `data_report.json` from a prep run.")]


@app.command()
@guarded
def estimate(spec: SpecArg = "jobs/dream-s1k.yaml", set_: SetOpt = None, data_report: ReportOpt = None,
             as_json: JsonOpt = False) -> None:
    """Estimate memory, time and price per GPU offer and pick the cheapest that fits the budget.

    Example: `dream-job estimate jobs/dream-s1k.yaml --data-report runs/dream-s1k/data/data_report.json`
    """
    from budget import NoOfferError, load_data_report, sky_launch_command
    from budget import estimate as run_estimate
    from dream_job.progress import estimate_tables, stdout

    job = load_spec(spec, set_)
    report = load_data_report(data_report) if data_report else None
    try:
        result = run_estimate(job, data_report=report)
    except NoOfferError as exc:
        if as_json:
            print(json.dumps(exc.estimate.to_json(), indent=2))
        else:
            for table in estimate_tables(exc.estimate):
                stdout.print(table)
        raise
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return
    for table in estimate_tables(result):
        stdout.print(table)
    print(sky_launch_command(result))
