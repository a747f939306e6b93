"""The prep report as tables (`dream-job prep`)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from dream_job.data.report import STAT_KEYS


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
