"""Turn `<run_dir>/eval/` into `report.md` and `accuracy.png` a person can read.

Inputs: `summary.json` (n and correct per model and suite) and the item files it names. The
report has, per suite, n, each model's accuracy with its 95 % Wilson interval, the change from
`base` to `final` with Newcombe's interval (`stats.py` cites both), decoding speed; the first k
items of each suite side by side (question, gold, each model's answer and whether it is
correct); the settings; the models; links to the item files. The chart shows the same numbers:
bars with interval whiskers, n and the change under each suite, model names in the legend
(matplotlib's Figure API, Agg, no display needed). `accuracy_table` and `INTERVALS_NOTE` are
also the model card's evaluation section (`artifacts/card.py`), so the numbers are the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dream_job.costs import stopped_early
from dream_job.errors import InputError
from dream_job.eval.answers import gold_answer
from dream_job.eval.records import read_item_file, read_summary
from dream_job.eval.stats import Interval, newcombe_interval, wilson_interval
from dream_job.eval.suites import SUITE_FORMATS
from dream_job.rundir import EVAL_DIR, write_atomically, write_text_atomically

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_NAME = "report.md"
CHART_NAME = "accuracy.png"
NUM_EXAMPLES = 5  # items per suite shown side by side in report.md
_LABEL_ORDER = ("base", "final")
_QUESTION_CHARS = 200
_ANSWER_CHARS = 80
INTERVALS_NOTE = (
    "Accuracy is correct / n with a 95 % Wilson score interval (Wilson 1927); the change `final − base` "
    "is in percentage points with Newcombe's hybrid score interval (Newcombe 1998, *Statistics in "
    "Medicine* 17:873-890, method 10). That interval treats the two runs as independent samples; "
    "both models answer the same items, so it is, if anything, wider than needed. An interval that "
    "contains 0 means the change could be chance."
)


@dataclass(frozen=True)
class Example:
    """One item of a suite as each model answered it (None: that model has no record of it)."""

    question: str
    gold: str
    answers: dict[str, dict[str, Any] | None]


def write_report(run_dir: Path, *, num_examples: int = NUM_EXAMPLES) -> Path:
    """Write `<run_dir>/eval/report.md` and `<run_dir>/eval/accuracy.png`, each atomically.

    Args:
        run_dir: The run directory; its `eval/summary.json` must exist.
        num_examples: Items per suite shown side by side (the first ones in suite order).

    Returns:
        The path of `report.md`.

    Raises:
        InputError: There is no `summary.json` (nothing evaluated yet).
    """
    eval_dir = Path(run_dir) / EVAL_DIR
    summary = read_summary(eval_dir)
    if not summary:
        raise InputError(
            f"no evaluation results in `{eval_dir / 'summary.json'}` to report", path=eval_dir / "summary.json",
            hint="evaluate first with `dream-job eval`",
        )
    labels = ordered_labels(summary)
    suites = ordered_suites(summary)
    examples = {suite: read_examples(eval_dir, summary, labels, suite, num_examples) for suite in suites}
    text = render_report(summary, labels, suites, examples)
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


def num_correct(entry: dict[str, Any]) -> int:
    """Return an entry's number correct (`correct`, or accuracy × n for summaries that lack it)."""
    return int(entry["correct"]) if "correct" in entry else round(float(entry["accuracy"]) * int(entry["n"]))


def accuracy_interval(entry: dict[str, Any] | None) -> Interval | None:
    """Return an entry's accuracy with its 95 % Wilson interval, or None (not evaluated, or n = 0)."""
    if entry is None or not entry.get("n"):
        return None
    return wilson_interval(num_correct(entry), int(entry["n"]))


def delta_interval(base: dict[str, Any] | None, final: dict[str, Any] | None) -> Interval | None:
    """Return final − base accuracy with Newcombe's 95 % interval, or None when either is missing."""
    if base is None or final is None or not base.get("n") or not final.get("n"):
        return None
    return newcombe_interval(num_correct(final), int(final["n"]), num_correct(base), int(base["n"]))


def format_accuracy(entry: dict[str, Any] | None) -> str:
    """Return `45.0% (18/40) CI 30.7 to 60.2`, or `–` for a suite the model was not evaluated on."""
    interval = accuracy_interval(entry)
    if entry is None or interval is None:
        return "–"
    return (f"{100 * interval.estimate:.1f}% ({num_correct(entry)}/{entry['n']}) "
            f"CI {100 * interval.lower:.1f} to {100 * interval.upper:.1f}")


def format_delta(base: dict[str, Any] | None, final: dict[str, Any] | None) -> str:
    """Return the change from `base` to `final`, `+11.0 pp CI +1.3 to +20.5`, or `–`."""
    interval = delta_interval(base, final)
    if interval is None:
        return "–"
    return (f"{100 * interval.estimate:+.1f} pp CI {100 * interval.lower:+.1f} to "
            f"{100 * interval.upper:+.1f}")


def format_speed(entry: dict[str, Any] | None) -> str:
    """Return generated tokens per second (and tokens per forward pass when known), or `–`."""
    if entry is None or entry.get("tokens_per_second") is None:
        return "–"
    per_forward = entry.get("tokens_per_forward")
    return f"{entry['tokens_per_second']:.1f}" + ("" if per_forward is None else f" ({per_forward:.2f}/fwd)")


def summary_rows(summary: dict[str, dict[str, Any]], *, speed: bool = True) -> tuple[list[str], list[list[str]]]:
    """Return the accuracy table once for every renderer: (header, one row per suite), plain text.

    Columns: suite, n, accuracy per model, `final` − `base` when both ran, then tokens/s per model
    (when `speed`). The Markdown report and the terminal table both render these cells.
    """
    labels, suites = ordered_labels(summary), ordered_suites(summary)
    has_delta = "base" in labels and "final" in labels
    header = ["suite", "n", *labels, *(["final − base"] if has_delta else []),
              *((f"{lb} tok/s" for lb in labels) if speed else ())]
    rows = []
    for suite in suites:
        entries = {label: summary[label].get(suite) for label in labels}
        row = [suite, _counts(entries.values()), *(format_accuracy(entries[lb]) for lb in labels)]
        if has_delta:
            row.append(format_delta(entries["base"], entries["final"]))
        if speed:
            row += [format_speed(entries[lb]) for lb in labels]
        rows.append(row)
    return header, rows


def accuracy_table(summary: dict[str, dict[str, Any]], *, speed: bool = True) -> list[str]:
    """Return the Markdown lines of the table: suite, n, accuracy per model, change, tokens/s."""
    labels = ordered_labels(summary)
    header, rows = summary_rows(summary, speed=speed)
    # Names in code font: the models, the suites and the change column.
    header = [f"`{h}`" if h in labels else h for h in header]
    header = [h.replace("final − base", "`final` − `base`") for h in header]
    header = [f"`{h.removesuffix(' tok/s')}` tok/s" if h.endswith(" tok/s") else h for h in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join([f"`{row[0]}`", *row[1:]]) + " |")
    return lines


def model_sources(summary: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Return, per label, where its weights came from (usually one source)."""
    return {label: sorted({str(e["model"]) for e in summary[label].values() if "model" in e})
            for label in ordered_labels(summary)}


def read_examples(
    eval_dir: Path, summary: dict[str, dict[str, Any]], labels: list[str], suite: str, num_examples: int
) -> list[Example]:
    """Return the first `num_examples` items of `suite` (suite order) with every model's answer."""
    records: dict[str, dict[str, dict[str, Any]]] = {}
    order: list[str] = []
    for label in labels:
        entry = summary[label].get(suite)
        if entry is None or "items" not in entry:
            continue
        items = read_item_file(eval_dir / entry["items"])
        records[label] = {r["id"]: r for r in items}
        order += [r["id"] for r in items if r["id"] not in order]
    examples = []
    for item_id in order[:num_examples]:
        first = next(records[lb][item_id] for lb in records if item_id in records[lb])
        examples.append(Example(
            question=_question(str(first.get("prompt", ""))), gold=str(first.get("gold", "")),
            answers={label: records.get(label, {}).get(item_id) for label in labels},
        ))
    return examples


def render_report(
    summary: dict[str, dict[str, Any]], labels: list[str], suites: list[str], examples: dict[str, list[Example]]
) -> str:
    """Return the Markdown text of the report."""
    lines = ["# Evaluation", "", *accuracy_table(summary), "", INTERVALS_NOTE, ""]
    for suite in suites:
        base, final = summary.get("base", {}).get(suite), summary.get("final", {}).get(suite)
        if base is not None and final is not None and _settings_text(base) != _settings_text(final):
            lines.append(f"- note: `base` and `final` were decoded with different settings on `{suite}`.")
    lines += [f"![accuracy by suite]({CHART_NAME})", "", "## Models", ""]
    for label, sources in model_sources(summary).items():
        lines.append(f"- `{label}`: {'; '.join(f'`{src}`' for src in sources)}")
    lines += ["", "## Examples", ""]
    for suite in suites:
        shown = examples.get(suite, [])
        total = max(int(summary[lb][suite]["n"]) for lb in labels if suite in summary[lb])
        lines += [f"### `{suite}`: the first {len(shown)} of {total} items", ""]
        lines += ["| # | question | gold | " + " | ".join(f"`{lb}`" for lb in labels) + " |",
                  "|" + "---|" * (3 + len(labels))]
        for i, example in enumerate(shown, start=1):
            cells = [str(i), _cell(example.question, _QUESTION_CHARS), _code(gold_answer(example.gold))]
            cells += [_answer_cell(example.answers[label]) for label in labels]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["✓ correct, ✗ wrong; an answer is what `eval/answers.py` extracted from the output (the item "
              "files hold the whole outputs).", "", "## Settings", ""]
    users: dict[str, list[str]] = {}  # settings text -> the `label/suite` pairs decoded with it
    for label in labels:
        for suite in suites:
            if suite in summary[label]:
                users.setdefault(_settings_text(summary[label][suite]), []).append(f"`{label}/{suite}`")
    if len(users) == 1:
        lines.append(f"All models and suites: {next(iter(users))}")
    else:
        lines += [f"- {', '.join(pairs)}: {text}" for text, pairs in users.items()]
    lines += ["", "## Items", ""]
    for label in labels:
        links = [f"[{s}]({summary[label][s]['items']})" for s in suites if s in summary[label]]
        lines.append(f"- `{label}`: " + ", ".join(links))
    return "\n".join(lines) + "\n"


def accuracy_figure(summary: dict[str, dict[str, Any]], labels: list[str], suites: list[str]) -> Figure:
    """Draw accuracy (%) per suite: bars per model with 95 % Wilson whiskers, n and change below."""
    from matplotlib.figure import Figure  # the Figure API renders with Agg; no pyplot, no display

    figure = Figure(figsize=(max(5.0, 2.2 * len(suites) + 2.0), 4.4), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / len(labels)
    sources = model_sources(summary)
    for i, label in enumerate(labels):
        intervals = [accuracy_interval(summary[label].get(s)) for s in suites]
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(suites))]
        values = [100 * iv.estimate if iv else 0.0 for iv in intervals]
        whiskers = [[100 * (iv.estimate - iv.lower) if iv else 0.0 for iv in intervals],
                    [100 * (iv.upper - iv.estimate) if iv else 0.0 for iv in intervals]]
        legend = f"{label}: {', '.join(_short_source(s) for s in sources[label])}"
        axes.bar(xs, values, width, yerr=whiskers, capsize=4, label=legend, error_kw={"elinewidth": 1})
        for x, iv, suite in zip(xs, intervals, suites, strict=True):
            if iv is not None:
                entry = summary[label][suite]
                axes.text(x, 100 * iv.upper + 1.5, f"{100 * iv.estimate:.1f}%\n{num_correct(entry)}/{entry['n']}",
                          ha="center", va="bottom", fontsize=7)
    ticks = []
    for suite in suites:
        entries = {label: summary[label].get(suite) for label in labels}
        tick = f"{suite}\nn = {_counts(entries.values())}"
        delta = delta_interval(entries.get("base"), entries.get("final")) if "base" in labels else None
        if delta is not None:
            tick += (f"\nfinal − base: {100 * delta.estimate:+.1f} pp\n"
                     f"(CI {100 * delta.lower:+.1f} to {100 * delta.upper:+.1f})")
        ticks.append(tick)
    axes.set_xticks(range(len(suites)), ticks, fontsize=8)
    axes.set_ylim(0, 118)  # room above 100 % for the value labels
    axes.set_yticks(range(0, 101, 20))
    axes.set_ylabel("accuracy (%)")
    axes.set_title("Accuracy by suite, with 95 % Wilson intervals", fontsize=10)
    figure.legend(fontsize=7, loc="outside lower center", ncols=min(len(labels), 2))
    return figure


def write_chart(path: Path, summary: dict[str, dict[str, Any]], labels: list[str], suites: list[str]) -> None:
    """Save `accuracy_figure` as a PNG at `path`, atomically."""
    figure = accuracy_figure(summary, labels, suites)
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))


def _counts(entries: Any) -> str:
    counts = sorted({int(e["n"]) for e in entries if e is not None})
    return " / ".join(str(n) for n in counts)


def _settings_text(entry: dict[str, Any]) -> str:
    sampler = ", ".join(f"{k}={v}" for k, v in entry["sampler"].items())
    return f"{sampler}; prefill_think={entry['prefill_think']}; limit={entry['limit']}; seed={entry['seed']}"


def _short_source(source: str) -> str:
    """Return a hub id as it is and a path as its last two parts (`runs/x/export` → `x/export`)."""
    parts = Path(source).parts
    return source if not source.startswith("/") or len(parts) <= 3 else "…/" + "/".join(parts[-2:])


_USER_TURN = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)


def _question(prompt: str) -> str:
    """Return the user's question of a chat prompt (the whole prompt when it has no user turn)."""
    turns = _USER_TURN.findall(prompt)
    return turns[-1] if turns else prompt


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())  # a table cell is one line
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(text: str, limit: int) -> str:
    return _clip(text, limit).replace("|", "\\|")


def _code(text: str, limit: int = _ANSWER_CHARS) -> str:
    """Return `text` as an inline code span (LaTeX shows as written), clipped, safe in a table."""
    text = _cell(text, limit)
    if not text:
        return "(empty)"
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _answer_cell(record: dict[str, Any] | None) -> str:
    if record is None:
        return "–"
    mark = "✓" if record.get("correct") else "✗"
    if record.get("extracted"):
        return f"{mark} {_code(str(record['extracted']))}"
    output = " ".join(str(record.get("output", "")).split())
    if not output:
        return f"{mark} no answer (empty output)"
    tail = "…" + output[-(_ANSWER_CHARS - 1):] if len(output) > _ANSWER_CHARS else output
    return f"{mark} no answer; output ends {_code(tail)}"
