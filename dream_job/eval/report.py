"""Turn `<run_dir>/eval/summary.json` into `report.md` and `accuracy.png`.

The report has one row per suite with each model's accuracy, the change from `base` to `final`,
the number of items and the decoding speed, then the sampler settings and links to the item
files; the chart shows the same accuracies as grouped bars (matplotlib, Agg, no display needed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dream_job.costs import stopped_early
from dream_job.errors import DreamJobError
from dream_job.eval.records import EVAL_DIR, read_summary
from dream_job.eval.suites import SUITE_FORMATS
from dream_job.files import write_text_atomically

REPORT_NAME = "report.md"
CHART_NAME = "accuracy.png"
_LABEL_ORDER = ("base", "final")


def write_report(run_dir: Path) -> Path:
    """Write `<run_dir>/eval/report.md` and `<run_dir>/eval/accuracy.png`, each atomically.

    Args:
        run_dir: The run directory; its `eval/summary.json` must exist.

    Returns:
        The path of `report.md`.

    Raises:
        DreamJobError: There is no `summary.json` (nothing evaluated yet).
    """
    eval_dir = Path(run_dir) / EVAL_DIR
    summary = read_summary(eval_dir)
    if not summary:
        raise DreamJobError(
            f"no evaluation results in `{eval_dir / 'summary.json'}` to report",
            hint="evaluate first with `dream-job eval`",
        )
    labels = ordered_labels(summary)
    suites = ordered_suites(summary)
    text = render_report(summary, labels, suites)
    reason = stopped_early(Path(run_dir))
    if reason:
        text += f"\n**Budget guard:** {reason}.\n"
    write_text_atomically(eval_dir / REPORT_NAME, text)
    write_chart(eval_dir / CHART_NAME, summary, labels, suites)
    return eval_dir / REPORT_NAME


def ordered_labels(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Return the labels: `base`, `final`, then any others alphabetically."""
    return [label for label in _LABEL_ORDER if label in summary] + sorted(set(summary) - set(_LABEL_ORDER))


def ordered_suites(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Return the suites in the order of `SUITE_FORMATS`, then any others alphabetically."""
    present = {suite for entries in summary.values() for suite in entries}
    return [s for s in SUITE_FORMATS if s in present] + sorted(present - set(SUITE_FORMATS))


def format_accuracy(entry: dict[str, Any] | None) -> str:
    """Return `45.0% (18/40)`, or `–` for a suite the model was not evaluated on."""
    if entry is None:
        return "–"
    return f"{100 * entry['accuracy']:.1f}% ({entry['correct']}/{entry['n']})"


def format_speed(entry: dict[str, Any] | None) -> str:
    """Return generated tokens per second, or `–` when unknown."""
    if entry is None or entry.get("tokens_per_second") is None:
        return "–"
    return f"{entry['tokens_per_second']:.1f}"


def format_delta(base: dict[str, Any] | None, final: dict[str, Any] | None) -> str:
    """Return the accuracy change from `base` to `final` in percentage points, or `–`."""
    if base is None or final is None:
        return "–"
    return f"{100 * (final['accuracy'] - base['accuracy']):+.1f} pp"


def _settings_text(entry: dict[str, Any]) -> str:
    sampler = ", ".join(f"{k}={v}" for k, v in entry["sampler"].items())
    return f"{sampler}; prefill_think={entry['prefill_think']}; limit={entry['limit']}; seed={entry['seed']}"


def render_report(summary: dict[str, dict[str, Any]], labels: list[str], suites: list[str]) -> str:
    """Return the Markdown text of the report."""
    has_delta = "base" in labels and "final" in labels
    header = ["suite", "n", *labels, *(["Δ final − base"] if has_delta else []), *(f"{lb} tok/s" for lb in labels)]
    lines = ["# Evaluation", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for suite in suites:
        entries = {label: summary[label].get(suite) for label in labels}
        counts = sorted({e["n"] for e in entries.values() if e is not None})
        row = [f"`{suite}`", " / ".join(str(n) for n in counts), *(format_accuracy(entries[lb]) for lb in labels)]
        if has_delta:
            base, final = entries["base"], entries["final"]
            row.append(format_delta(base, final))
            if base is not None and final is not None and _settings_text(base) != _settings_text(final):
                notes.append(f"- note: `base` and `final` were decoded with different settings on `{suite}`.")
        row += [format_speed(entries[lb]) for lb in labels]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", *notes, *([""] if notes else []), f"![accuracy by suite]({CHART_NAME})", "", "## Settings", ""]
    users: dict[str, list[str]] = {}  # settings text -> the `label/suite` pairs decoded with it
    for label in labels:
        for suite in suites:
            if suite in summary[label]:
                users.setdefault(_settings_text(summary[label][suite]), []).append(f"`{label}/{suite}`")
    if len(users) == 1:
        lines.append(f"All models and suites: {next(iter(users))}")
    else:
        lines += [f"- {', '.join(pairs)}: {text}" for text, pairs in users.items()]
    lines += ["", "## Models", ""]
    for label in labels:
        sources = sorted({entry["model"] for entry in summary[label].values()})
        lines.append(f"- `{label}`: {'; '.join(f'`{src}`' for src in sources)}")
    lines += ["", "## Items", ""]
    for label in labels:
        links = [f"[{s}]({summary[label][s]['items']})" for s in suites if s in summary[label]]
        lines.append(f"- `{label}`: " + ", ".join(links))
    return "\n".join(lines) + "\n"


def write_chart(path: Path, summary: dict[str, dict[str, Any]], labels: list[str], suites: list[str]) -> None:
    """Draw accuracy (%) per suite as bars grouped by suite, one colour per model; atomic."""
    from matplotlib.figure import Figure  # the Figure API renders with Agg; no pyplot, no display

    figure = Figure(figsize=(max(4.0, 1.8 * len(suites) + 1.5), 3.6), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(suites))]
        values = [100 * summary[label][s]["accuracy"] if s in summary[label] else 0.0 for s in suites]
        bars = axes.bar(xs, values, width, label=label)
        axes.bar_label(bars, labels=[f"{v:.1f}" if s in summary[label] else "" for v, s in zip(values, suites, strict=True)],
                       fontsize=8, padding=2)
    axes.set_xticks(range(len(suites)), suites)
    axes.set_ylim(0, 118)  # room for the value labels and the legend above 100 %
    axes.set_ylabel("accuracy (%)")
    axes.set_title("Accuracy by suite")
    axes.legend(fontsize=8, loc="upper left", ncols=len(labels))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    figure.savefig(tmp, format="png", dpi=120)
    os.replace(tmp, path)
