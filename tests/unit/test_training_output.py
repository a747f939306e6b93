"""What training shows: every step in `train.log`, a readable rate of lines without a terminal, none on one."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dream_job.progress import stage_line, training_status
from dream_job.train.metrics import ECHO_EVERY_S, MetricsLogger


def echoed_steps(tmp_path: Path, caplog: pytest.LogCaptureFixture, *, total: int) -> list[int]:
    with caplog.at_level(logging.INFO, logger="dream_job.train.metrics"), \
            MetricsLogger(tmp_path, is_rank0=True, total_steps=total) as metrics:
        for step in range(1, total + 1):
            metrics.log(step, {"train/loss": 1.0 / step})
    return [int(r.getMessage().split()[1].split("/")[0]) for r in caplog.records if r.getMessage().startswith("step ")]


def test_without_a_terminal_the_screen_gets_a_tenth_of_the_run_and_train_log_every_step(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert echoed_steps(tmp_path, caplog, total=280) == [1, *range(28, 281, 28)]
    lines = (tmp_path / "logs" / "train.log").read_text().splitlines()
    assert [line.split()[2] for line in lines] == [f"{s}/280" for s in range(1, 281)]


def test_on_a_terminal_no_step_line_reaches_the_screen(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert echoed_steps(tmp_path, caplog, total=20) == []
    assert len((tmp_path / "logs" / "train.log").read_text().splitlines()) == 20


def test_a_slow_run_shows_a_line_at_least_once_a_minute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    metrics = MetricsLogger(tmp_path, is_rank0=True, total_steps=1000)
    assert metrics.echo_due(1, now=0.0, last_shown=None)
    assert not metrics.echo_due(2, now=ECHO_EVERY_S - 0.1, last_shown=0.0)
    assert metrics.echo_due(3, now=ECHO_EVERY_S, last_shown=0.0)
    assert metrics.echo_due(100, now=1.0, last_shown=0.0) and metrics.echo_due(1000, now=1.0, last_shown=0.0)


def test_numbers_on_the_screen_have_four_significant_digits() -> None:
    outcome = SimpleNamespace(stage="train", skipped=False, outcome="done", reason=None,
                              summary={"steps": 280, "total_steps": 280, "final_loss": 0.7383748292922974})
    assert stage_line(outcome) == "stage train: done (steps=280, total_steps=280, final_loss=0.7384)"
    assert training_status({"train/loss": 2.345678, "perf/tokens_per_s": 12345.6, "perf/mfu": 0.41234,
                            "cost/spent_yuan": 1.234}) == "loss 2.346  12,346 tok/s  MFU 41.2%  ¥1.23"
    assert training_status({"train/loss": 0.000123456}) == "loss 0.0001235"
