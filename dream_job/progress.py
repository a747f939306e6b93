"""Everything that draws on the screen: logging setup and rich renderings of results.

Logs and progress go to stderr; results rendered here are printed by the CLI to stdout.
`rich` respects `NO_COLOR`, and its output stays readable without colour.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from dream_job.data.report import STAT_KEYS

stderr = Console(stderr=True)
stdout = Console()


def setup_logging(level: int = logging.INFO) -> None:
    """Send `dream_job` logs to stderr (rich on a terminal, plain timestamped lines otherwise).

    Plain lines keep `docker logs` and `sky logs` readable; libraries' own chatter is quieted.
    """
    handler: logging.Handler
    if stderr.is_terminal:
        handler = RichHandler(console=stderr, show_path=False, show_time=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    for noisy in ("torchao", "torch.distributed", "datasets", "c10d-NullHandler-dcp_logger"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Under torchrun only rank 0 talks; the others log warnings and errors only.
    logging.getLogger("dream_job").setLevel(level if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def data_report_tables(report: dict[str, Any]) -> list[Table]:
    """Render a prep report as two tables: row counts, then token lengths."""
    rows = Table(title=f"rows of {report['dataset']} ({report['split']}, {report['trace_source']} traces)")
    rows.add_column("rows")
    rows.add_column("count", justify="right")
    rows.add_row("read", str(report["rows_read"]))
    rows.add_row("held out for eval", str(report["rows_holdout"]))
    for reason, count in report["rows_skipped"].items():
        rows.add_row(f"skipped: {reason}", str(count))
    for reason, count in report["drop_reasons"].items():
        rows.add_row(f"dropped: {reason}", str(count))
    rows.add_row(f"truncated ({report['truncation']})", str(report["rows_truncated"]))
    rows.add_row("kept for training", str(report["rows_kept"]), style="bold")

    lengths = Table(
        title=f"tokens per row before truncation (max_length {report['max_length']}, "
        f"{report['fraction_over_max_length']:.1%} over)"
    )
    lengths.add_column("part")
    for key in STAT_KEYS:
        lengths.add_column(key, justify="right")
    for part, stats in report["tokens"].items():
        lengths.add_row(part, *(f"{stats[key]:,.0f}" for key in STAT_KEYS))
    trained = report["train_tokens"]
    lengths.add_row("trained", *(f"{trained[key]:,.0f}" for key in STAT_KEYS), style="bold")
    lengths.caption = f"{trained['sum']:,} tokens per epoch after truncation"
    return [rows, lengths]


class TrainingView:
    """The one live display of training on a terminal (rank 0); does nothing otherwise.

    One line: bar, step of total, loss, tokens/s, MFU, spend and ETA. The per-step log lines go
    to `train.log` only (`dream_job.train.metrics.MetricsLogger.echo_due`), so nothing scrolls
    under the bar; without a terminal the screen gets plain lines at a readable rate instead.
    """

    def __init__(self, total_steps: int, start_step: int, *, enabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = None
        if enabled and stderr.is_terminal:
            self._progress = Progress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                TextColumn("eta"), TimeRemainingColumn(), console=stderr, transient=True,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, status="")
            self._progress.start()

    def update(self, step: int, metrics: dict[str, float]) -> None:
        """Show `step` and its loss, tokens/s, MFU and spend (those present in `metrics`)."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step, status=training_status(metrics))

    def close(self) -> None:
        """Remove the bar."""
        if self._progress is not None:
            self._progress.stop()


def training_status(metrics: dict[str, float]) -> str:
    """Return the live view's numbers: `loss 2.346  12,346 tok/s  MFU 41.2%  ¥1.23` (4 significant digits)."""
    parts = [f"loss {metrics['train/loss']:.4g}"] if "train/loss" in metrics else []
    if "perf/tokens_per_s" in metrics:
        parts.append(f"{metrics['perf/tokens_per_s']:,.0f} tok/s")
    if "perf/mfu" in metrics:
        parts.append(f"MFU {metrics['perf/mfu']:.1%}")
    if "cost/spent_yuan" in metrics:
        parts.append(f"¥{metrics['cost/spent_yuan']:.2f}")
    return "  ".join(parts)


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


# --- evaluation ---------------------------------------------------------------------------

from collections.abc import Callable, Iterator  # noqa: E402  (appended section; keeps the code above untouched)
from contextlib import contextmanager  # noqa: E402

from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text  # noqa: E402


class ItemsPerSecondColumn(ProgressColumn):
    """Items decoded per second in this session (resumed items do not count)."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("– items/s" if speed is None else f"{speed:.2f} items/s")


@contextmanager
def eval_progress(console: Console | None = None) -> Iterator[Callable[[str, int, int], None]]:
    """Show one progress bar per model and suite on stderr while evaluating.

    Yields the callback to pass as `evaluate(..., progress=...)`: `callback(description,
    num_done, num_total)`. The first call for a description starts its bar at `num_done` (items
    reused from an earlier run), so the rate (items/s) and the ETA count only new items.

    Example:
        with eval_progress() as progress:
            evaluate(spec, model_label="final", progress=progress)
    """
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        ItemsPerSecondColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console or stderr,
    )
    tasks: dict[str, Any] = {}

    def update(description: str, num_done: int, num_total: int) -> None:
        if description not in tasks:
            tasks[description] = bars.add_task(description, total=num_total, completed=num_done)
        else:
            bars.update(tasks[description], completed=num_done, total=num_total)

    with bars:
        yield update


def eval_summary_table(summary: dict[str, Any]) -> Table:
    """Render `<run_dir>/eval/summary.json` as one row per suite: accuracy per model, change, n, tok/s."""
    from dream_job.eval.report import format_accuracy, format_delta, format_speed, ordered_labels, ordered_suites

    labels, suites = ordered_labels(summary), ordered_suites(summary)
    has_delta = "base" in labels and "final" in labels
    table = Table(title="evaluation accuracy")
    table.add_column("suite")
    table.add_column("n", justify="right")
    for label in labels:
        table.add_column(label, justify="right")
    if has_delta:
        table.add_column("Δ final − base", justify="right")
    for label in labels:
        table.add_column(f"{label} tok/s", justify="right")
    for suite in suites:
        entries = {label: summary[label].get(suite) for label in labels}
        counts = sorted({entry["n"] for entry in entries.values() if entry is not None})
        cells = [suite, " / ".join(str(n) for n in counts), *(format_accuracy(e) for e in entries.values())]
        if has_delta:
            cells.append(format_delta(entries["base"], entries["final"]))
        cells += [format_speed(e) for e in entries.values()]
        table.add_row(*cells)
    return table


# --- estimate -----------------------------------------------------------------------------

# How many alternatives the compact estimate lists after the choice (`--all` lists every one).
NUM_ALTERNATIVES = 5


def _reason_class(candidate: Any) -> str:
    """Name why a candidate was not chosen, in a few words (one class per line of the compact estimate).

    Follows the order of `budget.estimate`'s checks, so each candidate lands in the class of the
    reason it carries; `accepted` for a candidate that could be chosen.
    """
    if candidate.accepted:
        return "accepted"
    if candidate.reason.startswith("`train.global_batch_size`"):
        return "batch"
    if not candidate.fits:
        return "gpu_memory" if candidate.peak_gib > candidate.vram_gib else "host_ram"
    if not candidate.within_budget:
        return "budget"
    if "(no FUSE)" in candidate.reason:
        return "no_fuse"
    return "recipe" if candidate.recipe_change else "other"


def _alternatives(estimate: Any) -> list[Any]:
    """The choice, then the cheapest runnable offers: accepted ones first, then recipe changes within budget.

    One row per (GPUs, method, cloud, spot): another zone at another price of the same machine is no
    real alternative.
    """
    seen, rows = set(), []
    for c in estimate.candidates:
        if _reason_class(c) not in ("accepted", "recipe"):
            continue
        key = (c.count, c.gpu, c.method, c.cloud, c.spot)
        if key not in seen and c is not estimate.choice:
            seen.add(key)
            rows.append(c)
    return ([estimate.choice] if estimate.choice is not None else []) + rows


def _candidates_table(estimate: Any, rows: list[Any], *, title: str, caption: str) -> Table:
    from rich import box

    # No padding, a blank divider and numbers one wider than their widest value: eight columns in 80.
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, padding=0, show_edge=False,
                  caption_justify="left")
    table.add_column("GPUs", overflow="fold", min_width=13)  # `8x A100-80GB-SXM` wraps after `8x`
    for name in ("method", "cloud"):  # short identifiers: cut one and it reads as another
        table.add_column(name, no_wrap=True)
    # Numbers never wrap or shrink: rich narrows the text columns instead.
    for name, width in (("$/h", 6), ("GiB/GPU", 9), ("hours", 6), ("¥", 7)):
        table.add_column(name, justify="right", no_wrap=True, min_width=width)
    table.add_column(" note", overflow="fold", min_width=9)
    notes = {"budget": "over budget", "no_fuse": "no FUSE", "recipe": "recipe"}
    for c in rows:
        chosen = c is estimate.choice
        note = " ◀ choice" if chosen else " " + notes.get(_reason_class(c), "")
        table.add_row(f"{c.count}x {c.gpu}", c.method, c.cloud + (" spot" if c.spot else ""),
                      f"{c.usd_per_hour:.2f}", f"{c.peak_gib:.1f}/{c.vram_gib:.0f}", f"{c.hours:.2f}",
                      f"{c.cost_cny:.2f}", note, style="bold" if chosen else None)
    return table


def _rejection_lines(estimate: Any) -> list[tuple[str, str]]:
    """One (count, why) row per class of reason the other candidates were not chosen, most common first."""
    classes: dict[str, list[Any]] = {}
    for c in estimate.candidates:
        if (kind := _reason_class(c)) != "accepted":
            classes.setdefault(kind, []).append(c)
    budget = f"¥{estimate.budget_cny:g}"
    rows = []
    for kind, members in sorted(classes.items(), key=lambda kv: -len(kv[1])):
        cheapest = min(members, key=lambda c: c.cost_cny)
        example = f"{cheapest.method} on {cheapest.count}x {cheapest.gpu} ({cheapest.cloud})"
        if kind == "gpu_memory":
            closest = min(members, key=lambda c: c.peak_gib / c.vram_gib)
            why = (f"not enough GPU memory (closest: {closest.method} on {closest.count}x {closest.gpu} needs "
                   f"{closest.peak_gib:.1f} GiB per GPU, has {closest.vram_gib:.1f})")
        elif kind == "host_ram":
            why = f"not enough host RAM (e.g. {example} needs {cheapest.host_gib:.0f} GiB)"
        elif kind == "budget":
            why = f"over the {budget} budget (cheapest ¥{cheapest.cost_cny:.2f}: {example})"
        elif kind == "no_fuse":
            clouds = ", ".join(sorted({c.cloud for c in members}))
            why = (f"{clouds}: no FUSE for the run-dir bucket and no `artifacts.destinations` "
                   f"(cheapest ¥{cheapest.cost_cny:.2f}: {example})")
        elif kind == "recipe":
            within = [c for c in members if c.within_budget and c.fits]
            best = min(within or members, key=lambda c: c.cost_cny)
            why = (f"change the recipe (cheapest ¥{best.cost_cny:.2f}: {best.method} on {best.count}x {best.gpu}, "
                   f"{best.cloud}); allow with `--set budget.allow_recipe_change=true`")
        elif kind == "batch":
            why = "`train.global_batch_size` is not a multiple of `train.micro_batch_size` x GPUs"
        else:
            why = f"other (e.g. {example}: {cheapest.reason})"
        rows.append((str(len(members)), why))
    return rows


def estimate_tables(estimate: Any, *, full: bool = False, launch_line: str | None = None,
                    plan_lines: list[tuple[str, str]] | None = None) -> list[Table]:
    """Render a `budget.Estimate` for an 80-column terminal: candidates, why the others lost, the choice.

    Compact (default): the choice and the `NUM_ALTERNATIVES` cheapest other machines, then one row
    per class of rejection with its count. `full`: every candidate that fits and one row per
    rejected (method, GPUs) family with its reason. Numbers never wrap or truncate; text folds.

    Args:
        estimate: The `budget.Estimate` (typed loosely: this module does not import `budget`).
        full: Render every candidate (`dream-job estimate --all`).
        launch_line: The `sky` line of the launch plan for the choice, when there is one.
        plan_lines: Extra (what, value) rows from the launch plan (budget guard, notes).

    Returns:
        Three tables: candidates (the choice first), rejections, the choice box.
    """
    rate = f"{estimate.cny_per_usd:g} CNY/USD ({estimate.cny_per_usd_source})"
    prices = f"prices: {estimate.prices_source}, from {estimate.prices_date}; tokens: {estimate.tokens_source}"
    per = ("$/h and ¥: the whole machine (all its GPUs); GiB/GPU: peak of the GPU's memory; recipe: changes the "
           "method (`--set train.method=...`); no FUSE: needs `artifacts.destinations`")
    if full:
        rows = [c for c in estimate.candidates if c.fits]
        title = f"{estimate.job}: {len(rows)} candidates that fit, cheapest first (budget ¥{estimate.budget_cny:g})"
    else:
        rows = _alternatives(estimate)[:NUM_ALTERNATIVES + 1]
        title = f"{estimate.job}: the choice and the next {len(rows) - 1 if estimate.choice else len(rows)} " \
            f"(budget ¥{estimate.budget_cny:g})"
    table = _candidates_table(estimate, rows, title=title, caption=f"{per}\n{prices}")

    rejected = Table(title="rejected (method on GPUs: why)" if full else
                     f"not chosen, by reason ({len(estimate.candidates)} candidates: offer x method)",
                     caption=None if full else "every candidate: `--all`; as JSON: `--json`", caption_justify="left",
                     show_header=full)
    if full:
        rejected.add_column("family")
        rejected.add_column("why", overflow="fold")
        for line in estimate.rejected:
            family, _, why = line.partition(": ")
            rejected.add_row(family, why)
    else:
        rejected.add_column("count", justify="right", no_wrap=True)
        rejected.add_column("why", overflow="fold")
        for count, why in _rejection_lines(estimate):
            rejected.add_row(count, why)
    return [table, rejected, _choice_table(estimate, rate, launch_line, plan_lines)]


def _choice_table(estimate: Any, rate: str, launch_line: str | None,
                  plan_lines: list[tuple[str, str]] | None) -> Table:
    summary = Table(title="choice", show_header=False)
    summary.add_column("what", no_wrap=True)
    summary.add_column("value", overflow="fold")
    choice = estimate.choice
    if (warning := estimate.stale_price_warning()) is not None:
        summary.add_row("WARNING", warning)
    if choice is None:
        summary.add_row("choice", "none fits within the budget")
    else:
        kind = "spot" if choice.spot else "on-demand"
        place = "/".join(p for p in (choice.cloud, choice.region, choice.zone) if p)
        summary.add_row("offer", f"{choice.count}x {choice.gpu} ({choice.accelerator}, {choice.vram_gib:.0f} GiB "
                        "each), "
                        f"`{choice.instance_type}` in `{place}`, {kind}, ${choice.usd_per_hour:.2f}/h for the machine "
                        f"(price of {choice.priced_on})")
        summary.add_row("method", choice.method + (" (changes the recipe)" if choice.recipe_change else ""))
        summary.add_row("peak memory", f"{choice.peak_gib:.1f} GiB of {choice.vram_gib:.1f} per GPU; host "
                        f"{choice.host_gib:.0f} GiB")
        summary.add_row("time", f"{choice.hours:.2f} h = train {choice.train_hours:.2f} + eval {choice.eval_hours:.2f}"
                        f" + overheads {choice.overhead_hours:.2f} ({estimate.steps} steps, MFU {choice.mfu:.2f})")
        summary.add_row("overheads", ", ".join(f"{name} {hours:.2f} h" for name, hours in
                                               choice.overheads_hours.items() if hours >= 0.005))
        summary.add_row("cost", f"¥{choice.cost_cny:.2f} of ¥{estimate.budget_cny:g} at {rate}"
                        + (f" incl. ¥{choice.controller_cny:.2f} for the jobs controller VM" if choice.controller_cny
                           else ""))
        for what, value in plan_lines or []:
            summary.add_row(what, value)
        if launch_line:
            summary.add_row("launch", launch_line)
    for note in estimate.notes:
        summary.add_row("note", note)
    return summary
