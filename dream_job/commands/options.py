"""Argument and option types shared by several verbs (`Annotated` aliases, defined once)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _check_sets(values: list[str] | None) -> list[str] | None:
    """Refuse a `--set` without `key=value` as a usage error (exit 2), before any file is read."""
    for value in values or []:
        key, sep, _ = value.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"`{value}` is not of the form `a.b.c=value`, e.g. `--set train.epochs=1`")
    return values


# Every verb that works on a job takes its file as the first argument, required: no verb guesses.
SpecArg = Annotated[str, typer.Argument(help="Job file, e.g. `jobs/smoke.yaml`.", metavar="JOB_FILE",
                                        show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a spec value: `--set data.max_length=4096` (repeatable).",
                 callback=_check_sets),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
ReportOpt = Annotated[Path | None, typer.Option("--data-report", help="A `data_report.json` from a prep run.")]
SkyYamlOpt = Annotated[Path, typer.Option("--sky-yaml", help="SkyPilot task template the launch (line) uses.")]
