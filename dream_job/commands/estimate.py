"""Verb `estimate`: the cost preflight a user runs on the laptop before paying anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dream_job.commands.failures import guarded
from dream_job.commands.options import JsonOpt, ReportOpt, SetOpt, SkyYamlOpt, SpecArg
from dream_job.spec import load_spec

AllOpt = Annotated[bool, typer.Option("--all", help="Every candidate that fits and every rejected family, not the "
                                      "5 best and one line per reason.")]


@guarded
def estimate(spec: SpecArg, set_: SetOpt = None, data_report: ReportOpt = None,
             as_json: JsonOpt = False, sky_yaml: SkyYamlOpt = Path("sky.yaml"), all_: AllOpt = False) -> None:
    """Estimate memory, time and price per GPU offer, pick the cheapest that fits, print its launch line.

    Example: `dream-job estimate jobs/dream-s1k.yaml --data-report runs/dream-s1k/data/data_report.json`
    """
    from budget import NoOfferError, load_data_report
    from dream_job.launch import preview
    from dream_job.progress import estimate_tables, stdout

    report = load_data_report(data_report) if data_report else None
    try:
        result, plan = preview(load_spec(spec, set_), Path(spec), task_yaml=sky_yaml, data_report=report)
    except NoOfferError as exc:
        if as_json:
            print(json.dumps(exc.estimate.to_json(), indent=2))
        else:
            for table in estimate_tables(exc.estimate, full=all_):
                stdout.print(table)
        raise
    line = plan.sky_command() if plan else None
    if as_json:
        print(json.dumps(result.to_json() | {"launch_command": line}, indent=2))
        return
    shown = ("guard", "caps", "secrets", "image", "controller", "note")
    plan_rows = [row for row in plan.lines() if row[0] in shown] if plan else [
        ("launch", f"no `{sky_yaml}` here: run from the repo root for the launch line")]
    for table in estimate_tables(result, full=all_, launch_line=line, plan_lines=plan_rows):
        stdout.print(table)
    if line:
        print(line)
