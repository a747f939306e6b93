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
    assert "kept for training" in result.stdout and "140" in result.stdout  # 180 rows, 40 held out
    as_json = runner.invoke(app, ["prep", "jobs/smoke.yaml", "--set", run, "--json"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["rows_kept"] == 140


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
        "error: unknown key `data.truncaton` in `--set data.truncaton=drop`\n"
        "  key:   data.truncaton\n"
        "  value: drop\n"
        "\n"
        "hint: did you mean `data.truncation`?\n"
    )


def test_an_error_in_the_job_file_names_key_line_and_value_in_one_block(tmp_path: Path, in_repo: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("name: x\ntrain:\n  epochs: 0\n  method: fulll\n")
    result = runner.invoke(app, ["spec", str(job)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: `train.method` in `{job}:4` must be one of `full`, `full_8bit`, `full_offload` or `lora`, got `fulll`\n"
        f"  key:       train.method\n"
        f"  path:      {job}:4\n"
        f"  value:     fulll\n"
        f"  caused by: also: `train.epochs` in `{job}:3` must be greater than or equal to 1, got `0`\n"
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


def test_version_is_the_package_version() -> None:
    import tomllib

    from dream_job import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"dream-job {__version__}\n"
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] == __version__


def test_every_verb_the_help_names_exists_and_job_verbs_require_the_job_file() -> None:
    import typer

    verbs = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert verbs == {"estimate", "launch", "logs", "prep", "spec", "schema", "train", "run", "task", "status",
                     "eval", "publish", "pull"}
    # The app's one-line help names its jobs; each is a verb.
    assert {"estimate", "prep", "train", "eval", "publish"} <= verbs
    for verb in ("estimate", "launch", "logs", "prep", "spec", "train", "run", "status", "eval", "publish"):
        result = runner.invoke(app, [verb])
        assert result.exit_code == 2, verb
        assert "Missing argument 'JOB_FILE" in result.output, verb


def test_usage_errors_exit_2(in_repo: Path) -> None:
    result = runner.invoke(app, ["spec", "jobs/smoke.yaml", "--set", "foo"])
    assert result.exit_code == 2
    assert "`foo` is not of the form `a.b.c=value`" in result.output
    assert runner.invoke(app, ["estimate", "jobs/smoke.yaml", "--no-such-option"]).exit_code == 2
    assert runner.invoke(app, ["no-such-verb"]).exit_code == 2


def test_publish_uploads_verifies_and_skips_when_done(tmp_path: Path, in_repo: Path) -> None:
    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    (export / "config.json").write_text("{}")
    (export / "dream_job_export.json").write_text('{"exported_at": "2026-12-05T13:00:00Z"}')
    dest = tmp_path / "published"
    args = ["publish", "jobs/smoke.yaml", "--set", f"artifacts.run_dir={tmp_path / 'run'}",
            "--set", f"artifacts.destinations=[\"file://{dest}\"]"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.stderr.splitlines()[-1] == "stage publish: done"
    assert (dest / "config.json").read_text() == "{}" and (dest / "MANIFEST.sha256").is_file()
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.stderr.splitlines()[-1] == "stage publish: skipped (done before)"


def test_publish_without_export_or_destination_says_what_to_do(tmp_path: Path, in_repo: Path) -> None:
    run_dir = f"artifacts.run_dir={tmp_path / 'run'}"
    nothing = runner.invoke(app, ["publish", "jobs/smoke.yaml", "--set", run_dir, "--set", "artifacts.destinations=[]"])
    assert nothing.exit_code == 1
    assert nothing.stderr == ("error: `artifacts.destinations` in `jobs/smoke.yaml` is empty: nowhere to publish\n\n"
                              "hint: add one, e.g. `--set 'artifacts.destinations=[\"file:///tmp/models\"]'`\n")
    untrained = runner.invoke(app, ["publish", "jobs/smoke.yaml", "--set", run_dir])
    assert untrained.exit_code == 1
    assert untrained.stderr.startswith(f"error: no complete exported model in `{tmp_path / 'run' / 'export'}`")


def test_logs_prints_a_local_runs_train_log(tmp_path: Path, in_repo: Path, monkeypatch) -> None:
    monkeypatch.setenv("DREAM_JOB_HOME", str(tmp_path / "home"))  # no launch records
    log = tmp_path / "run" / "logs" / "train.log"
    run_dir = f"artifacts.run_dir={tmp_path / 'run'}"
    missing = runner.invoke(app, ["logs", "jobs/smoke.yaml", "--set", run_dir])
    assert missing.exit_code == 1 and missing.stderr.startswith(f"error: no log yet: `{log}` does not exist")
    log.parent.mkdir(parents=True)
    log.write_text("2026-12-05T13:00:00Z step 1/2 loss 2.301\n2026-12-05T13:00:01Z step 2/2 loss 2.2\n")
    # Nobody holds the run dir's lock: the run is over, so following ends at the last line.
    result = runner.invoke(app, ["logs", "jobs/smoke.yaml", "--set", run_dir])
    assert result.exit_code == 0, result.output
    assert result.stdout == log.read_text()


def test_verbs_needing_torch_name_the_extra_in_a_laptop_install(in_repo: Path, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    for verb in ("prep", "train", "run", "eval"):
        result = runner.invoke(app, [verb, "jobs/smoke.yaml"])
        assert result.exit_code == 1, verb
        assert result.stderr == (
            "error: this command needs the package `torch`, which this install of dream-job lacks\n\n"
            "hint: install the `container` extra: in the repo, `make setup` (CPU torch), or install torch, then "
            "`pip install -e '.[container]'` (or run it in the dream-job image); a laptop install estimates, "
            "launches and pulls\n"), verb
