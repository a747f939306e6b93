"""The `dream-job` command line: the typer app and the verbs registered on it.

Each verb is a plain function in `dream_job/commands/` (one module per group) that parses, calls
one library function and renders the result; this module only registers them, in the order of
`dream-job --help`. Shared options are in `commands/options.py`, error rendering and exit codes in
`commands/failures.py`. Importing it imports no torch: the laptop CLI starts fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from dream_job.commands import artifacts, data, estimate, evaluate, launch, publish, task, train

app = typer.Typer(
    help="Fine-tune Dream 7B on s1K-1.1: estimate, prepare, train, evaluate, publish.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# A newcomer's path from a job file to a model; `dream-job --help` lists them in this order.
VERBS = [
    ("estimate", estimate.estimate),
    ("launch", launch.launch),
    ("logs", launch.logs),
    ("prep", data.prep),
    ("spec", data.show_spec),
    ("schema", data.schema),
    ("train", train.train),
    ("run", train.run),
    ("task", task.task),
    ("status", train.status),
    ("eval", evaluate.eval_),
    ("publish", publish.publish),
    ("pull", artifacts.pull),
]
for _name, _verb in VERBS:
    app.command(_name)(_verb)


def _show_version(value: bool) -> None:
    if value:
        from dream_job import __version__

        print(f"dream-job {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Fine-tune Dream 7B on s1K-1.1: estimate, prepare, train, evaluate, publish."""


def main() -> None:
    """Console-script entry point: one signal policy for the whole process (`stopping`), then the verb."""
    from dream_job import stopping

    stopping.install()  # before any verb runs: SIGTERM and Ctrl-C stop every stage at a safe point
    try:
        app()
    finally:
        from dream_job.progress import stderr

        if stderr.is_terminal:
            stderr.show_cursor(True)  # a live view stopped by Ctrl-C may have hidden it
