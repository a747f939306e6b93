"""A run's stages as lines (`dream-job run`) and its state as a table (`dream-job status`)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _short(value: Any) -> str:
    """A summary value for a stage line: floats to 4 significant digits (`0.7384`), the rest as is."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def stage_line(outcome: Any) -> str:
    """One line per pipeline stage: done now, skipped because done before, or stopped early (and why)."""
    details = ", ".join(f"{k}={_short(v)}" for k, v in outcome.summary.items() if not isinstance(v, (dict, list)))
    if outcome.stage == "preflight":
        return "preflight: passed" + (f" ({details})" if details else "")
    state = "skipped (done before)" if outcome.skipped else "done"
    if outcome.outcome != "done":
        state = outcome.outcome.replace("_", " ") + (" (before)" if outcome.skipped else "")
    line = f"stage {outcome.stage}: {state}" + (f" ({details})" if details else "")
    return line + (f": {outcome.reason}" if outcome.reason and outcome.outcome != "done" else "")


def status_table(status: dict[str, Any]) -> Table:
    """Render `pipeline.run_status` as a table: each stage's outcome, where training is, and why it stopped."""
    table = Table(title=f"run {status['run_id'] or '?'} in {status['run_dir']}")
    table.add_column("what")
    table.add_column("state")
    for stage, record in status["stages"].items():
        if record is None:
            state = "not run"
        else:
            state = record["outcome"].replace("_", " ")
            when = record["finished_at"] or record["started_at"]
            state += (f" {when}" if when else "") + (f" by `{record['verb']}`" if record.get("verb") else "")
            if stage == "train" and record["summary"].get("steps") is not None:
                state += f" at step {record['summary']['steps']} of {record['summary'].get('total_steps', '?')}"
        table.add_row(f"stage {stage}", state)
    if status.get("in_use_by"):
        table.add_row("in use by", status["in_use_by"])
    if status.get("stopped"):
        table.add_row("why not finished", status["stopped"])
    table.add_row("step", str(status["step"] if status["step"] is not None else "-"))
    table.add_row("loss", f"{status['loss']:.4f}" if status["loss"] is not None else "-")
    table.add_row("spent", f"¥{status['spent_yuan']:.2f}" if status["spent_yuan"] is not None else "-")
    table.add_row("latest checkpoint", status["latest_checkpoint"] or "-")
    for destination in status["destinations"]:
        table.add_row("destination", destination)
    return table
