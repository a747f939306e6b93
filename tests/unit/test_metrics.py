"""MetricsLogger: fixed-field log line, append-only files across a resume, loss plot, TensorBoard."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dream_job.train.metrics import MetricsLogger, format_duration, format_line, smooth
from dream_job.train.plot import epoch_marks

FULL = {
    "train/loss": 2.345678,
    "train/grad_norm": 1.23456,
    "train/lr": 1e-5,
    "perf/tokens_per_s": 12345.6,
    "perf/mfu": 0.4123,
    "mem/peak_gib": 71.234,
    "time/eta_s": 3723.4,
    "cost/spent_yuan": 12.345,
}


def test_format_line_has_the_fixed_fields_in_order() -> None:
    assert format_line(3, 100, FULL) == (
        "step 3/100 loss 2.3457 grad_norm 1.235 lr 1.00e-05 tok/s 12346 mfu 41.2% mem_gib 71.23 "
        "eta 1:02:03 cost_yuan 12.35"
    )
    # Absent fields are left out; unknown keys never reach the line.
    assert format_line(1, 10, {"cost/spent_yuan": 1, "train/loss": 3, "data/epoch": 0}) == (
        "step 1/10 loss 3.0000 cost_yuan 1.00"
    )
    assert format_duration(59.6) == "0:01:00" and format_duration(float("inf")) == "-"


def test_smooth_is_a_debiased_ema() -> None:
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert smooth([1.0, 0.0], weight=0.5) == pytest.approx([1.0, 0.25 / 0.75])


def test_logger_writes_every_sink_and_appends_across_a_resume(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="dream_job.train.metrics"):
        metrics = MetricsLogger(tmp_path, is_rank0=True, total_steps=6)
        for step in (1, 2, 3):
            metrics.log(step, {**FULL, "train/loss": 4.0 - step})
        metrics.close()
    logs = tmp_path / "logs"
    assert [r.getMessage() for r in caplog.records if r.name == "dream_job.train.metrics"][0].startswith(
        "step 1/6 loss 3.0000 grad_norm")
    lines = (logs / "train.log").read_text().splitlines()
    assert len(lines) == 3
    labels = ["step", "loss", "grad_norm", "lr", "tok/s", "mfu", "mem_gib", "eta", "cost_yuan"]
    for line in lines:
        fields = line.split(" ")[1:]  # after the timestamp: label value label value ...
        assert fields[0::2] == labels, line
    assert lines[1].split(" ", 1)[1].startswith("step 2/6 loss 2.0000 ")
    assert len((logs / "metrics.jsonl").read_text().splitlines()) == 3

    # Resume from a checkpoint at step 2: step 3 of the killed run is dropped, the files continue.
    resumed = MetricsLogger(tmp_path, is_rank0=True, total_steps=6, resume_step=2)
    assert resumed.loss_by_step == {1: 3.0, 2: 2.0}
    resumed.log(3, {"train/loss": 0.5})
    resumed.log(4, {"train/loss": 0.25})
    resumed.close()
    resumed.close()  # idempotent
    records = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[0]["train/loss"] == 3.0 and records[0]["perf/mfu"] == FULL["perf/mfu"] and "time" in records[0]
    assert [line.split(" ")[2] for line in (logs / "train.log").read_text().splitlines()] == ["1/6", "2/6", "3/6",
                                                                                               "4/6"]
    assert resumed.loss_by_step == {1: 3.0, 2: 2.0, 3: 0.5, 4: 0.25}

    png = (logs / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert list((logs / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_scalars_are_readable(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, is_rank0=True, total_steps=2) as metrics:
        metrics.log(1, {"train/loss": 1.5, "mem/peak_gib": 3.0})
        metrics.log(2, {"train/loss": 1.25})
    events = EventAccumulator(str(tmp_path / "logs" / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.5), (2, 1.25)]
    assert set(events.Tags()["scalars"]) == {"train/loss", "mem/peak_gib"}


def test_other_ranks_write_nothing(tmp_path: Path) -> None:
    metrics = MetricsLogger(tmp_path, is_rank0=False, total_steps=2)
    metrics.log(1, FULL)
    metrics.close()
    assert not (tmp_path / "logs").exists()


def test_missing_tensorboard_warns_once_and_skips_the_sink(tmp_path: Path, monkeypatch, caplog) -> None:
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with caplog.at_level(logging.WARNING, logger="dream_job.train.metrics"):
        with MetricsLogger(tmp_path, is_rank0=True, total_steps=2) as metrics:
            metrics.log(1, {"train/loss": 1.0})
            metrics.log(2, {"train/loss": 0.5})
    assert sum("tensorboard" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING) == 1
    assert not (tmp_path / "logs" / "tensorboard").exists()
    assert (tmp_path / "logs" / "loss.png").exists()


def test_a_resume_drops_later_lines_and_a_torn_last_line(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    lines = [json.dumps({"step": step, "train/loss": float(step)}) + "\n" for step in (1, 2, 3)]
    # Killed mid-write inside the UTF-8 character of a key: the last line is torn.
    (logs / "metrics.jsonl").write_bytes("".join(lines).encode() + '{"step": 4, "é'.encode()[:-1])
    metrics = MetricsLogger(tmp_path, is_rank0=True, total_steps=6, resume_step=3)
    assert metrics.loss_by_step == {1: 1.0, 2: 2.0, 3: 3.0}
    assert (logs / "metrics.jsonl").read_text() == "".join(lines)  # the torn tail was cut off
    metrics.log(4, {"train/loss": 0.5})
    assert [json.loads(line)["step"] for line in (logs / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    metrics.close()
    again = MetricsLogger(tmp_path, is_rank0=True, total_steps=6, resume_step=1)
    assert again.loss_by_step == {1: 1.0}
    assert [json.loads(line)["step"] for line in (logs / "metrics.jsonl").read_text().splitlines()] == [1]


def test_the_line_carries_epoch_and_validation_loss_in_fixed_places() -> None:
    assert format_line(35, 140, {"train/loss": 1.5, "val/loss": 1.75, "train/epoch": 1.0, "train/lr": 3e-3}) == (
        "step 35/140 epoch 1.00 loss 1.5000 val_loss 1.7500 lr 3.00e-03"
    )


def test_epoch_marks_fall_on_each_epochs_last_step() -> None:
    assert epoch_marks(140, 35) == [35, 70, 105, 140]
    assert epoch_marks(69, 35) == [35]
    assert epoch_marks(10, None) == []


def test_the_plot_history_keeps_validation_lr_and_grad_norm_across_a_resume(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, is_rank0=True, total_steps=4, run_name="smoke", steps_per_epoch=2) as metrics:
        metrics.log(1, {"train/loss": 2.0, "train/lr": 1e-3, "train/grad_norm": 0.5})
        metrics.log(2, {"train/loss": 1.5, "val/loss": 1.75, "train/lr": 5e-4, "train/grad_norm": 0.25})
    resumed = MetricsLogger(tmp_path, is_rank0=True, total_steps=4, resume_step=2)
    assert resumed.history == {"train/loss": {1: 2.0, 2: 1.5}, "val/loss": {2: 1.75},
                               "train/lr": {1: 1e-3, 2: 5e-4}, "train/grad_norm": {1: 0.5, 2: 0.25}}
    resumed.close()
    png = (tmp_path / "logs" / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def wandb_history(run_file: Path) -> dict[int, dict[str, float]]:
    """Read the history rows of an offline `.wandb` file (LevelDB log blocks of protobuf `Record`s)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending, rows = run_file.read_bytes(), 32768, 7, b"", {}
    assert data[:4] == b":W&B"  # 7-byte file header: ident, magic, version
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST piece of a record
            record = wandb_internal_pb2.Record.FromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
                rows[record.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
    return rows


def test_wandb_offline_gets_every_logged_value_and_a_resume_continues_the_run(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with MetricsLogger(tmp_path, is_rank0=True, total_steps=4, report_to=["wandb"], run_name="smoke",
                       config={"train": {"seed": 0}}) as metrics:
        metrics.log(1, {"train/loss": 2.0})
        metrics.log(2, {"train/loss": 1.5, "val/loss": 1.75})
    logs = tmp_path / "logs"
    run_id = (logs / "wandb_run_id").read_text().strip()
    [run_file] = (logs / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    assert wandb_history(run_file) == {1: {"train/loss": 2.0}, 2: {"train/loss": 1.5, "val/loss": 1.75}}
    assert not (logs / "tensorboard").exists()  # only the sinks `report_to` names

    with MetricsLogger(tmp_path, is_rank0=True, total_steps=4, resume_step=2, report_to=["wandb"]) as metrics:
        metrics.log(3, {"train/loss": 1.25})
    assert (logs / "wandb_run_id").read_text().strip() == run_id
    files = sorted((logs / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2  # the same run id twice: `wandb sync` appends the second to the first
    assert {3: {"train/loss": 1.25}} in [wandb_history(f) for f in files]


def test_wandb_asked_for_but_missing_names_the_field_and_the_extra(tmp_path: Path, monkeypatch) -> None:
    import sys

    from dream_job.errors import SpecError

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails as without the package
    with pytest.raises(SpecError) as info:
        MetricsLogger(tmp_path, is_rank0=True, total_steps=2, report_to=["tensorboard", "wandb"])
    assert info.value.message == "`train.report_to` includes `wandb` but the `wandb` package is not installed"
    assert info.value.hint == ("install it with `pip install 'dream-job[wandb]'` (or `pip install wandb`), or remove "
                               "`wandb` from `train.report_to`")
