"""The `dream-job` command line: parse, call one library function, render the result."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from dream_job import errors
from dream_job.spec import load_spec

app = typer.Typer(
    help="Fine-tune Dream 7B on s1K-1.1: estimate, prepare, train, evaluate, publish.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

SpecArg = Annotated[str, typer.Argument(help="Job file, e.g. `jobs/smoke.yaml`.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a spec value: `--set data.max_length=4096` (repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
F = TypeVar("F", bound=Callable[..., Any])


def _render_error(exc: errors.DreamJobError) -> None:
    from rich.text import Text

    from dream_job.progress import stderr

    # Text, not markup: messages quote user values that may contain `[...]`.
    stderr.print(Text.assemble(("error:", "bold red"), " ", exc.message), soft_wrap=True)
    for cause in exc.caused_by:
        stderr.print(Text(f"  caused by: {cause}"), soft_wrap=True)
    if exc.hint:
        stderr.print(Text.assemble("\n", ("hint:", "bold"), " ", exc.hint), soft_wrap=True)


def guarded(command: F) -> F:
    """Turn `DreamJobError`s into a message and exit code; other errors into a bug report."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from dream_job.progress import setup_logging

        setup_logging()
        try:
            return command(*args, **kwargs)
        except errors.DreamJobError as exc:
            _render_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except Exception as exc:
            if os.environ.get("DREAM_JOB_DEBUG") == "1":
                raise
            _render_error(
                errors.DreamJobError(
                    f"unexpected {type(exc).__name__} (a bug in dream-job): {exc}",
                    hint="rerun with `DREAM_JOB_DEBUG=1` for the traceback and report it",
                )
            )
            raise typer.Exit(errors.EXIT_BUG) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@guarded
def prep(spec: SpecArg = "jobs/smoke.yaml", set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Tokenize the job's dataset into `<run_dir>/data/` and print the data report.

    Example: `dream-job prep jobs/dream-s1k.yaml --set data.dataset=./s1k.parquet`
    """
    from dream_job.data.prep import prepare_data
    from dream_job.progress import data_report_tables, stderr, stdout

    result = prepare_data(load_spec(spec, set_))
    if as_json:
        print(json.dumps(result.report, indent=2))
        return
    for table in data_report_tables(result.report):
        stdout.print(table)
    state = "reused (inputs unchanged)" if result.reused else "written"
    stderr.print(f"prepared data {state}: {result.data_dir}", highlight=False)


@app.command()
@guarded
def train(spec: SpecArg = "jobs/smoke.yaml", set_: SetOpt = None) -> None:
    """Train on the prepared data, resuming from the newest complete checkpoint; export at the end.

    Example: `dream-job train jobs/smoke.yaml`; on N GPUs:
    `torchrun --nproc_per_node N -m dream_job train jobs/dream-s1k.yaml`
    """
    from dream_job.progress import stderr
    from dream_job.train.loop import train as run_training

    result = run_training(load_spec(spec, set_))
    if os.environ.get("RANK", "0") == "0":
        stderr.print(f"trained {result.steps} steps, final loss {result.final_loss:.4f}; model: {result.export_dir}",
                     highlight=False)


@app.command("spec")
@guarded
def show_spec(spec: SpecArg = "jobs/smoke.yaml", set_: SetOpt = None) -> None:
    """Validate a job file with its overrides and print the resolved spec as JSON.

    Example: `dream-job spec jobs/smoke.yaml --set train.epochs=2`
    """
    print(load_spec(spec, set_).model_dump_json(indent=2))


@app.command()
@guarded
def schema() -> None:
    """Print the JSON Schema of job files (for editors and validation).

    Example: `dream-job schema > job.schema.json`
    """
    from dream_job.spec import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))


def main() -> None:
    """Console-script entry point."""
    app()
