"""Data prep end to end on files: report numbers, hold-out, cache reuse, malformed rows, clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pytest

from dream_job.data.prep import prepare_data
from dream_job.data.report import length_stats
from dream_job.data.synthetic import generate_rows
from dream_job.errors import DataError
from dream_job.spec import load_spec
from tests.conftest import REPO, SMOKE_DATA, TINY_DREAM, s1k_row, write_jsonl


def smoke_spec(tmp_path: Path, *overrides: str):
    # The prose rows with long traces (smoke.yaml's own one-digit rows never need truncating).
    prose = ["data.dataset=jobs/assets/smoke/s1k-smoke.jsonl", "data.max_length=256", "data.truncation=keep_answer",
             "data.holdout_size=20"]
    return load_spec(REPO / "jobs" / "smoke.yaml", [f"artifacts.run_dir={tmp_path / 'run'}", *prose, *overrides])


def test_smoke_prep_report_matches_the_written_data(tmp_path: Path, in_repo: Path) -> None:
    result = prepare_data(smoke_spec(tmp_path))
    report = json.loads((result.data_dir / "data_report.json").read_text())
    assert report == result.report and not result.reused
    train = datasets.load_from_disk(str(result.data_dir / "train"))
    holdout = [json.loads(line) for line in (result.data_dir / "holdout.jsonl").read_text().splitlines()]
    num_lines = len(SMOKE_DATA.read_text().splitlines())
    assert report["rows_read"] == num_lines == 300
    assert report["rows_holdout"] == len(holdout) == 20
    assert report["rows_kept"] == len(train) == 280
    assert report["rows_kept"] + report["rows_dropped"] + report["rows_holdout"] + sum(
        report["rows_skipped"].values()) == report["rows_read"]
    lengths = [len(ids) for ids in train["input_ids"]]
    assert max(lengths) <= 256 == report["max_length"]
    assert report["train_tokens"]["sum"] == sum(lengths) == sum(train["num_tokens"])
    assert report["rows_truncated"] == sum(train["truncated"]) > 0
    # Hold-out rows are disjoint from training rows and carry what evaluation needs.
    assert not {r["row_index"] for r in holdout} & set(train["row_index"])
    assert all(r["solution"] and r["question"] for r in holdout)


def test_untruncated_lengths_agree_with_the_stored_tokens(tmp_path: Path, in_repo: Path) -> None:
    result = prepare_data(smoke_spec(tmp_path, "data.max_length=4096", "data.holdout_size=0"))
    train = datasets.load_from_disk(str(result.data_dir / "train"))
    lengths = [len(ids) for ids in train["input_ids"]]
    assert result.report["rows_truncated"] == 0 and result.report["fraction_over_max_length"] == 0.0
    assert result.report["tokens"]["total"] == length_stats(lengths)
    assert result.report["tokens"]["total"]["max"] == max(lengths)


def test_length_stats_against_numpy() -> None:
    import numpy as np

    values = [5, 1, 9, 3, 3, 12, 40, 7]
    stats = length_stats(values)
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        assert stats[key] == pytest.approx(float(np.percentile(values, q)))
    assert (stats["min"], stats["max"], stats["mean"]) == (1, 40, pytest.approx(np.mean(values)))


def test_rerun_reuses_and_a_changed_spec_rebuilds(tmp_path: Path, in_repo: Path) -> None:
    first = prepare_data(smoke_spec(tmp_path))
    stamp = (first.data_dir / "train").stat().st_mtime_ns
    again = prepare_data(smoke_spec(tmp_path, "data.num_proc=2"))  # num_proc does not change the output
    assert again.reused and (again.data_dir / "train").stat().st_mtime_ns == stamp
    changed = prepare_data(smoke_spec(tmp_path, "data.truncation=drop"))
    assert not changed.reused and changed.report["inputs_hash"] != first.report["inputs_hash"]
    assert changed.report["rows_dropped"] > 0 and changed.report["rows_truncated"] == 0


def test_holdout_is_deterministic_by_seed(tmp_path: Path, in_repo: Path) -> None:
    def holdout_ids(run: str, seed: int) -> list[int]:
        spec = load_spec(REPO / "jobs" / "smoke.yaml", [f"artifacts.run_dir={tmp_path / run}", f"data.seed={seed}"])
        data_dir = prepare_data(spec).data_dir
        return [json.loads(line)["row_index"] for line in (data_dir / "holdout.jsonl").read_text().splitlines()]

    assert holdout_ids("a", 0) == holdout_ids("b", 0) != holdout_ids("c", 1)


def test_malformed_rows_are_counted_and_lists_accepted(tmp_path: Path) -> None:
    rows = [s1k_row(question=f"What is {i} + 1?") for i in range(20)]
    rows[3]["deepseek_attempt"] = None
    rows[7]["question"] = ""
    rows[9] = {k: v for k, v in rows[9].items() if k != "solution"} | {"solution": None}
    data = write_jsonl(rows, tmp_path / "rows.jsonl")
    spec = load_spec(REPO / "jobs" / "dream-s1k.yaml", [
        f"data.dataset={data}", f"model.base={TINY_DREAM}", f"artifacts.run_dir={tmp_path / 'run'}",
        "data.holdout_size=2", "data.num_proc=1", "data.max_bad_row_fraction=0.2"])
    report = prepare_data(spec).report
    assert report["rows_skipped"] == {"`deepseek_attempt` is missing": 1, "`question` is empty": 1,
                                      "`solution` is missing": 1}
    assert report["rows_kept"] == 20 - 3 - 2


def test_list_typed_trace_columns_from_parquet(tmp_path: Path) -> None:
    # The first s1K-1.1 revision typed the deepseek columns as one-element lists.
    rows = [s1k_row(question=f"What is {i} + 2?", trace=[f"{i} plus 2"], attempt=[f"{i + 2}"]) for i in range(6)]
    path = tmp_path / "s1k.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    spec = load_spec(REPO / "jobs" / "dream-s1k.yaml", [
        f"data.dataset={path}", f"model.base={TINY_DREAM}", f"artifacts.run_dir={tmp_path / 'run'}",
        "data.holdout_size=1", "data.num_proc=1"])
    result = prepare_data(spec)
    assert result.report["rows_kept"] == 5 and result.report["rows_skipped"] == {}


def test_too_many_bad_rows_fails_and_keeps_earlier_data(tmp_path: Path, in_repo: Path) -> None:
    good = prepare_data(smoke_spec(tmp_path))
    with pytest.raises(DataError) as info:
        prepare_data(smoke_spec(tmp_path, "data.max_length=70"))
    error = info.value
    assert re.match(r"^\d+ of 300 rows of `jobs/assets/smoke/s1k-smoke.jsonl` were skipped", error.message)
    assert "more than `data.max_bad_row_fraction` = 0.05" in error.message
    assert error.caused_by[0].endswith("rows: prompt longer than `data.max_length`")
    assert error.hint.startswith("raise `data.max_length` (now 70)")
    assert json.loads((good.data_dir / "data_report.json").read_text())["inputs_hash"] == good.report["inputs_hash"]


def test_missing_dataset_path_is_named(tmp_path: Path, in_repo: Path) -> None:
    with pytest.raises(DataError) as info:
        prepare_data(smoke_spec(tmp_path, "data.dataset=data/missing.parquet"))
    assert info.value.message == "`data.dataset` points to `data/missing.parquet`, which does not exist"


def test_missing_trace_column_suggests_the_other_source(tmp_path: Path) -> None:
    rows = [{k: v for k, v in s1k_row().items() if not k.startswith("deepseek")} for _ in range(3)]
    data = write_jsonl(rows, tmp_path / "gemini-only.jsonl")
    spec = load_spec(REPO / "jobs" / "dream-s1k.yaml", [
        f"data.dataset={data}", f"model.base={TINY_DREAM}", f"artifacts.run_dir={tmp_path / 'run'}"])
    with pytest.raises(DataError) as info:
        prepare_data(spec)
    assert info.value.message.startswith(
        f"the dataset `{data}` has no column `deepseek_thinking_trajectory`, `deepseek_attempt`")
    assert info.value.hint.endswith("`--set data.trace_source=gemini` if that trace is present")


def test_missing_tokenizer_folder_is_named(tmp_path: Path, in_repo: Path) -> None:
    with pytest.raises(DataError) as info:
        prepare_data(smoke_spec(tmp_path, "model.base=./no-such-model"))
    assert info.value.message == "`model.base` points to `./no-such-model`, which is not a folder"


def test_real_vocabulary_prep_on_generated_rows(tmp_path: Path, qwen_dream_tokenizer_dir: Path) -> None:
    data = write_jsonl(generate_rows(40, seed=3), tmp_path / "rows.jsonl")
    spec = load_spec(REPO / "jobs" / "dream-s1k.yaml", [
        f"data.dataset={data}", f"model.base={qwen_dream_tokenizer_dir}", f"artifacts.run_dir={tmp_path / 'run'}",
        "data.holdout_size=4", "data.num_proc=2", "data.max_length=160"])
    result = prepare_data(spec)
    train = datasets.load_from_disk(str(result.data_dir / "train"))
    assert result.report["rows_kept"] == 36 == len(train)
    assert all(ids[-1] == 151643 for ids in train["input_ids"])  # keep_answer: every row ends with EOS
    assert all(len(ids) <= 160 for ids in train["input_ids"])


def test_repeated_questions_are_counted_and_a_leaking_hold_out_is_refused(
        tmp_path: Path, in_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 25: 5 repeated rows are reported; 180 copies of one row cannot be split into train and hold-out."""
    lines = SMOKE_DATA.read_text().splitlines(keepends=True)
    repeated = tmp_path / "repeated.jsonl"
    repeated.write_text("".join(lines + lines[:5]))  # the first five rows twice
    result = prepare_data(smoke_spec(tmp_path, f"data.dataset={repeated}", "data.holdout_size=0"))
    assert result.report["rows_duplicate"] == 5 and result.report["rows_read"] == 305
    assert f"5 of the 305 usable rows of `{repeated}` repeat an earlier row's question" in caplog.text

    same = write_jsonl([s1k_row() for _ in range(180)], tmp_path / "same.jsonl")
    with pytest.raises(DataError) as caught:
        prepare_data(smoke_spec(tmp_path, f"data.dataset={same}", "artifacts.run_dir=" + str(tmp_path / "run2")))
    assert caught.value.message == (f"1 of the 20 held-out questions of `{same}` are also training rows: 179 of its "
                                    "180 usable rows repeat an earlier row's question")
    assert not (tmp_path / "run2").exists()
