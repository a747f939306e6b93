"""The `dream-job` command as a user runs it: output, exit codes, error text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
from typer.testing import CliRunner

from dream_job.cli import app
from dream_job.data.synthetic import generate_rows
from tests.conftest import REPO, TINY_DREAM

runner = CliRunner()


def test_prep_smoke_prints_the_report_and_json(tmp_path: Path, in_repo: Path) -> None:
    run = f"artifacts.run_dir={tmp_path / 'run'}"
    result = runner.invoke(app, ["prep", "jobs/smoke.yaml", "--set", run])
    assert result.exit_code == 0, result.output
    assert "kept for training" in result.stdout and "280" in result.stdout
    as_json = runner.invoke(app, ["prep", "jobs/smoke.yaml", "--set", run, "--json"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["rows_kept"] == 280


def test_real_job_on_a_local_parquet_with_the_tiny_tokenizer(tmp_path: Path, in_repo: Path) -> None:
    data = tmp_path / "s1k.parquet"
    datasets.Dataset.from_list(generate_rows(60, seed=11)).to_parquet(str(data))
    result = runner.invoke(app, [
        "prep", "jobs/dream-s1k.yaml", "--set", f"data.dataset={data}", "--set", f"model.base={TINY_DREAM}",
        "--set", f"artifacts.run_dir={tmp_path / 'run'}", "--set", "data.num_proc=1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows_read"] == 60 and report["rows_holdout"] == 50 and report["rows_kept"] == 10


def test_spec_error_exits_1_with_the_message_and_hint(tmp_path: Path, in_repo: Path) -> None:
    result = runner.invoke(app, ["prep", "jobs/smoke.yaml", "--set", "data.truncaton=drop"])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: unknown key `data.truncaton` in `--set data.truncaton=drop`\n\nhint: did you mean `data.truncation`?\n"
    )


def test_schema_and_spec_verbs(in_repo: Path) -> None:
    schema = runner.invoke(app, ["schema"])
    assert schema.exit_code == 0 and json.loads(schema.stdout)["title"] == "JobSpec"
    spec = runner.invoke(app, ["spec", "jobs/smoke.yaml", "--set", "train.epochs=2"])
    assert spec.exit_code == 0 and json.loads(spec.stdout)["train"]["epochs"] == 2


def test_console_script_runs_as_a_module(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "dream_job", "spec", "jobs/nope.yaml"], cwd=REPO, capture_output=True, text=True
    )
    assert completed.returncode == 1
    assert completed.stderr.startswith("error: job file `jobs/nope.yaml` does not exist")
