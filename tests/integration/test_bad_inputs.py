"""Every mistake a user can make ends in one sentence naming the file or key, exit 1/2/3, never "a bug".

One table of bad inputs (issue 15). Each case runs the real command in-process (`CliRunner`) on
the smoke job and checks: the exit code, a single `error:` line that names the key or file, no
traceback, no "a bug in dream-job", and, where the run dir existed, that its data, checkpoints,
export, logs and eval files are byte-for-byte unchanged (stage records and the lock file may
change: recording why a stage failed is the point).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dream_job.cli import app
from tests.conftest import REPO, SMOKE_DATA, s1k_row, write_jsonl

runner = CliRunner()
SMOKE = "jobs/smoke.yaml"
# Kept small so a trained run dir is made in seconds.
TRAIN_ARGS = ["--set", "train.max_steps=4", "--set", "train.save_every_steps=2"]


@dataclass(frozen=True)
class Case:
    """One bad input: the command, what to prepare, the exit code and what the message must name."""

    name: str
    args: list[str]  # `{tmp}`, `{run}` and `{data}` are filled in
    code: int
    names: str  # a substring of the one-line message: the key or file
    files: dict[str, bytes | Callable[[Path], None]] = field(default_factory=dict)  # relative to {tmp}
    run_dir: str = "none"  # "none", "prepared" or "trained": the run dir the command finds
    env: dict[str, str] = field(default_factory=dict)
    damage: Callable[[Path], None] | None = None  # done to the copied run dir before the command (and the snapshot)


def garbage(rel: str) -> Callable[[Path], None]:
    """Overwrite a run-dir file (every match of a glob; a plain name is created) with bytes it should not hold."""
    def damage(run_dir: Path) -> None:
        paths = sorted(run_dir.glob(rel)) if "*" in rel else [run_dir / rel]
        assert paths, rel
        for path in paths:
            path.write_bytes(b"\x00garbage{not json")
    return damage


def cut_short(rel: str) -> Callable[[Path], None]:
    """Truncate a run-dir file (every match of a glob) to a third of its size."""
    def damage(run_dir: Path) -> None:
        paths = sorted(run_dir.glob(rel))
        assert paths, rel
        for path in paths:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    return damage


def delete(rel: str) -> Callable[[Path], None]:
    def damage(run_dir: Path) -> None:
        paths = sorted(run_dir.glob(rel))
        assert paths, rel
        for path in paths:
            path.unlink()
    return damage


def jsonl(*rows: dict) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# Nothing listens on port 9 of loopback: the Hub is unreachable at once, whatever network the machine has.
UNREACHABLE_HUB = {"HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9"}
SMOKE_LINES = SMOKE_DATA.read_bytes().splitlines(keepends=True)
GOOD_ROWS = b"".join(SMOKE_LINES[:40])


def zero_row_parquet(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([s1k_row()]).slice(0, 0), path)


def one_row_parquet(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([s1k_row()]), path)


def bad_head_dim_model(path: Path) -> None:
    path.mkdir()
    for name in (REPO / "jobs" / "assets" / "tiny-dream").iterdir():
        shutil.copy(name, path / name.name)
    config = json.loads((path / "config.json").read_text())
    config["head_dim"] = config["hidden_size"] // config["num_attention_heads"] + 1
    (path / "config.json").write_text(json.dumps(config))


def spec_case(name: str, sets: list[str], names: str, files: dict | None = None, job: str = SMOKE,
              code: int = 1) -> Case:
    return Case(name, ["spec", job, *(a for s in sets for a in ("--set", s))], code, names, files or {})


def prep_case(name: str, sets: list[str], names: str, files: dict | None = None, code: int = 1, *,
              damage: Callable[[Path], None] | None = None,
              run_dir: str = "none") -> Case:
    return Case(name, ["prep", SMOKE, *(a for s in sets for a in ("--set", s))], code, names, files or {}, run_dir,
                damage=damage)


CASES = [
    # --- the job file and `--set` -------------------------------------------------------------------
    Case("job file missing", ["spec", "{tmp}/nope.yaml"], 1, "nope.yaml"),
    Case("job file is a folder", ["spec", "{tmp}"], 1, "is a folder"),
    Case("job file not YAML", ["spec", "{tmp}/bad.yaml"], 1, "bad.yaml:", {"bad.yaml": b"name: x\ntrain: [1,\n"}),
    Case("job file a list", ["spec", "{tmp}/list.yaml"], 1, "list.yaml", {"list.yaml": b"- a\n- b\n"}),
    Case("job file empty", ["spec", "{tmp}/empty.yaml"], 1, "`name`", {"empty.yaml": b""}),
    Case("job file not UTF-8", ["spec", "{tmp}/latin.yaml"], 1, "latin.yaml:2",
         {"latin.yaml": b"name: x\n# caf\xe9\n"}),
    Case("second train section", ["spec", "{tmp}/dup.yaml"], 1, "lines 2 and 6",
         {"dup.yaml": b"name: x\ntrain:\n  epochs: 2\ndata:\n  seed: 1\ntrain:\n  seed: 3\n"}),
    Case("key twice in a section", ["spec", "{tmp}/dup2.yaml"], 1, "`train.epochs` appears twice",
         {"dup2.yaml": b"name: x\ntrain:\n  epochs: 2\n  epochs: 3\n"}),
    Case("unknown section", ["spec", "{tmp}/typo.yaml"], 1, "trian", {"typo.yaml": b"name: x\ntrian: {}\n"}),
    spec_case("unknown key", ["train.lerning_rate=1"], "train.lerning_rate"),
    spec_case("unparsable --set value", ["train.adam_betas=[0.9,"], "train.adam_betas"),
    spec_case("--set without =", ["noequals"], "noequals", code=2),  # a malformed flag is a usage error
    spec_case("--set without key", ["=3"], "--set =3", code=2),
    spec_case("epochs zero", ["train.epochs=0"], "train.epochs"),
    spec_case("epochs text", ["train.epochs=abc"], "train.epochs"),
    spec_case("method typo", ["train.method=fulll"], "train.method"),
    spec_case("batch not a multiple", ["train.global_batch_size=6"], "train.global_batch_size"),
    spec_case("bad job name", ["name=bad/name"], "name"),
    spec_case("endpoint not http", ["artifacts.s3_endpoint_url=ftp://x"], "artifacts.s3_endpoint_url"),
    spec_case("negative checkpointing", ["train.activation_checkpointing=-1"], "train.activation_checkpointing"),
    spec_case("max_length tiny", ["data.max_length=8"], "data.max_length"),
    spec_case("unknown suite", ["eval.suites=[foo]"], "eval.suites"),
    spec_case("lora dropout", ["train.lora.dropout=1.5"], "train.lora.dropout"),
    spec_case("section as a number", ["train=3"], "train"),
    spec_case("bad row fraction", ["data.max_bad_row_fraction=2"], "data.max_bad_row_fraction"),
    spec_case("negative budget", ["budget.max_cost_yuan=-1"], "budget.max_cost_yuan"),
    spec_case("one adam beta", ["train.adam_betas=[0.9]"], "train.adam_betas"),
    spec_case("negative temperature", ["eval.sampler.temperature=-1"], "eval.sampler.temperature"),
    spec_case("infinite budget", ["budget.max_cost_yuan=.inf"], "budget.max_cost_yuan"),
    spec_case("infinite exchange rate", ["budget.cny_per_usd=.inf"], "budget.cny_per_usd"),
    spec_case("NaN learning rate", ["train.learning_rate=.nan"], "train.learning_rate"),
    spec_case("--set below a value", ["train.epochs.x=1"], "`--set train.epochs.x=1`"),
    spec_case("--set below a missing key", ["train.foo.x=1"], "`--set train.foo.x=1`"),
    # --- the environment: validated before any work, in the spec's error form -------------------------
    Case("price not a number", ["train", SMOKE], 1, "`DREAM_JOB_USD_PER_HOUR`", run_dir="prepared",
         env={"DREAM_JOB_USD_PER_HOUR": "cheap"}),
    Case("negative price", ["train", SMOKE], 1, "`DREAM_JOB_USD_PER_HOUR`", run_dir="prepared",
         env={"DREAM_JOB_USD_PER_HOUR": "-5"}),
    Case("infinite price", ["run", SMOKE], 1, "`DREAM_JOB_USD_PER_HOUR`", env={"DREAM_JOB_USD_PER_HOUR": "inf"}),
    Case("run id with a slash", ["run", SMOKE], 1, "`DREAM_JOB_RUN_ID`", env={"DREAM_JOB_RUN_ID": "a/b"}),
    Case("node count not a number", ["run", SMOKE], 1, "`SKYPILOT_NUM_NODES`", env={"SKYPILOT_NUM_NODES": "two"}),
    Case("hub endpoint not a URL", ["prep", SMOKE], 1, "`HF_ENDPOINT`", env={"HF_ENDPOINT": "huggingface.co"}),
    Case("torchrun port out of range", ["run", SMOKE], 1, "`DREAM_JOB_MASTER_PORT`", env={"DREAM_JOB_MASTER_PORT": "70000"}),
    Case("negative wall-clock cap", ["run", SMOKE], 1, "`BUDGET_HOURS`", env={"BUDGET_HOURS": "-1"}),
    Case("zero starts allowed", ["run", SMOKE], 1, "`DREAM_JOB_MAX_STARTS`", env={"DREAM_JOB_MAX_STARTS": "0"}),
    # --- the dataset ---------------------------------------------------------------------------------
    prep_case("dataset missing", ["data.dataset={tmp}/none.jsonl"], "data.dataset"),
    prep_case("empty jsonl", ["data.dataset={tmp}/empty.jsonl"], "empty.jsonl", {"empty.jsonl": b""}),
    prep_case("blank jsonl", ["data.dataset={tmp}/blank.jsonl"], "blank.jsonl", {"blank.jsonl": b"\n\n  \n"}),
    prep_case("0-row parquet", ["data.dataset={tmp}/zero.parquet"], "zero.parquet", {"zero.parquet": zero_row_parquet}),
    prep_case("malformed line", ["data.dataset={tmp}/bad.jsonl"], "line 3 of",
              {"bad.jsonl": b"".join(SMOKE_LINES[:2]) + b'{"question": "x", broken\n' + GOOD_ROWS}),
    prep_case("non-UTF-8 byte", ["data.dataset={tmp}/latin.jsonl"], "line 2 of",
              {"latin.jsonl": SMOKE_LINES[0] + jsonl(s1k_row()).replace(b"What", b"Wh\xe9t") + GOOD_ROWS}),
    prep_case("non-UTF-8 json", ["data.dataset={tmp}/latin.json"], "latin.json",
              {"latin.json": b'[{"question": "caf\xe9"}]'}),
    prep_case("line is an array", ["data.dataset={tmp}/array.jsonl"], "line 1 of", {"array.jsonl": b"[1, 2]\n"}),
    prep_case("every row empty", ["data.dataset={tmp}/blanks.jsonl"], "blanks.jsonl",
              {"blanks.jsonl": jsonl(*[s1k_row(question="") for _ in range(30)])}),
    prep_case("every row None", ["data.dataset={tmp}/nones.jsonl"], "nones.jsonl",
              {"nones.jsonl": jsonl(*[s1k_row(trace=None, attempt=None) for _ in range(30)])}),
    prep_case("numbers, not text", ["data.dataset={tmp}/numbers.jsonl"], "numbers.jsonl",
              {"numbers.jsonl": jsonl(*[s1k_row(question=5) for _ in range(30)])}),
    prep_case("columns missing", ["data.dataset={tmp}/cols.jsonl"], "deepseek_thinking_trajectory",
              {"cols.jsonl": jsonl(*[{"question": "q", "solution": "1"} for _ in range(30)])}),
    prep_case("holdout larger than the rows", ["data.holdout_size=500"], "data.holdout_size"),
    prep_case("mixed folder", ["data.dataset={tmp}/mixed"], "holds no single kind",
              {"mixed/a.jsonl": GOOD_ROWS, "mixed/b.parquet": one_row_parquet}),
    prep_case("csv file", ["data.dataset={tmp}/rows.csv"], "rows.csv", {"rows.csv": b"question,solution\nq,1\n"}),
    prep_case("empty folder", ["data.dataset={tmp}/nothing"], "nothing", {"nothing/.keep": b""}),
    prep_case("prompts over max_length", ["data.max_length=16"], "one-digit-carry.jsonl"),
    prep_case("tokenizer missing", ["model.tokenizer={tmp}/no-tokenizer"], "model.tokenizer"),
    prep_case("tokenizer folder empty", ["model.tokenizer={tmp}/empty-dir"], "model.tokenizer", {"empty-dir/.keep": b""}),
    Case("hub unreachable for the dataset", ["prep", SMOKE, "--set", "data.dataset=nobody-here/no-such-dataset"], 3,
         "data.dataset", env=UNREACHABLE_HUB),
    prep_case("run dir is a file", ["artifacts.run_dir={tmp}/afile"], "is a file", {"afile": b"x"}),
    prep_case("run dir under a file", ["artifacts.run_dir={tmp}/afile/run"], "afile/run", {"afile": b"x"}),
    prep_case("every row the same question", ["data.dataset={tmp}/same.jsonl"], "same.jsonl",
              {"same.jsonl": jsonl(*[s1k_row() for _ in range(180)])}),
    prep_case("damaged data report", [], "data_report.json", run_dir="prepared", damage=garbage("data/data_report.json")),
    prep_case("data edited after training", ["data.dataset={tmp}/fewer.jsonl"], "changed since",
              {"fewer.jsonl": b"".join(SMOKE_LINES[:150])}, run_dir="trained"),
    # --- training --------------------------------------------------------------------------------
    Case("train before prep", ["train", SMOKE, "--set", "artifacts.run_dir={run}"], 1, "no prepared data"),
    Case("fewer rows than a batch", ["train", SMOKE, "--set", "train.global_batch_size=512"], 1,
         "train.global_batch_size", run_dir="prepared"),
    Case("cuda on a CPU machine", ["train", SMOKE, "--set", "train.device=cuda"], 1, "train.device", run_dir="prepared"),
    Case("more checkpointed layers than the model has", ["train", SMOKE, "--set", "train.activation_checkpointing=5"],
         1, "train.activation_checkpointing", run_dir="prepared"),
    Case("base model without config", ["train", SMOKE, "--set", "model.base={tmp}/empty-model", "--set",
                                       "model.tokenizer=jobs/assets/smoke-base"], 1, "model.base",
         {"empty-model/.keep": b""}, run_dir="prepared"),
    Case("base config the model cannot take", ["train", SMOKE, "--set", "model.base={tmp}/odd-model", "--set",
                                               "model.tokenizer=jobs/assets/smoke-base"], 1, "model.base",
         {"odd-model": bad_head_dim_model}, run_dir="prepared"),
    # --- damaged run-dir files: each named with its fix, never a bug report ----------------------------
    Case("damaged cost.json", ["train", SMOKE, *TRAIN_ARGS], 1, "cost.json", run_dir="trained",
         damage=garbage("cost.json")),
    Case("truncated training rows", ["train", SMOKE, *TRAIN_ARGS], 1, "data/train", run_dir="trained",
         damage=cut_short("data/train/*.arrow")),
    Case("every checkpoint's metadata garbage", ["train", SMOKE, *TRAIN_ARGS], 1, "is damaged", run_dir="trained",
         damage=garbage("checkpoints/step-*/.metadata")),
    Case("every checkpoint's shard missing", ["train", SMOKE, *TRAIN_ARGS], 1, "is missing", run_dir="trained",
         damage=delete("checkpoints/step-*/*.distcp")),
    Case("damaged export description", ["run", SMOKE, *TRAIN_ARGS], 1, "dream_job_export.json",
         run_dir="trained", damage=garbage("export/dream_job_export.json")),
    Case("export weights deleted", ["eval", SMOKE, "--model", "final"], 1, ".safetensors` is missing",
         run_dir="trained", damage=delete("export/*.safetensors")),
    Case("damaged run.json", ["status", SMOKE], 1, "run.json", run_dir="trained", damage=garbage("run.json")),
    Case("settings changed under checkpoints", ["train", SMOKE, *TRAIN_ARGS, "--set", "train.learning_rate=0.5"], 1,
         "train.learning_rate", run_dir="trained"),
    # --- evaluation ------------------------------------------------------------------------------
    Case("eval a missing folder", ["eval", SMOKE, "--model", "{tmp}/no-model"], 1, "no-model", run_dir="prepared"),
    Case("eval final before training", ["eval", SMOKE, "--model", "final"], 1, "export", run_dir="prepared"),
    Case("eval source missing", ["eval", SMOKE, "--model", "base", "--set", "eval.sources={{s1k_holdout: {tmp}/x.jsonl}}"],
         1, "x.jsonl", run_dir="prepared"),
    Case("generation longer than the context", ["eval", SMOKE, "--model", "base", "--set",
                                                "eval.sampler.gen_length=100000"], 1, "eval.sampler.gen_length",
         run_dir="prepared"),
    # --- the whole job: preflight, before any work -----------------------------------------------
    Case("unknown destination scheme", ["run", SMOKE, "--set", "artifacts.destinations=[gs://b/x]"], 1, "gs://b/x"),
    Case("destination is a file", ["run", SMOKE, "--set", "artifacts.destinations=[file://{tmp}/afile]"], 1,
         "afile", {"afile": b"x"}),
    Case("destination under a file", ["run", SMOKE, "--set", "artifacts.destinations=[file://{tmp}/afile/x]"], 1,
         "afile/x", {"afile": b"x"}),
    Case("hf destination without token", ["run", SMOKE, "--set", "artifacts.destinations=[hf://me/model]"], 1,
         "HF_TOKEN", env={"HF_TOKEN": ""}),
    Case("s3 destination without credentials", ["run", SMOKE, "--set", "artifacts.destinations=[s3://bucket/x]"], 1,
         "AWS_ACCESS_KEY_ID", env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_PROFILE": "",
                                   "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}),
    Case("unknown AWS profile", ["run", SMOKE, "--set", "artifacts.destinations=[s3://bucket/x]"], 1, "AWS_PROFILE",
         env={"AWS_PROFILE": "nobody", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}),
    Case("hf destination not a repo id", ["run", SMOKE, "--set", "artifacts.destinations=[hf://notarepo]"], 1,
         "hf://notarepo", env={"HF_TOKEN": "hf_fake"}),
    Case("base model offline and not cached", ["run", SMOKE, "--set", "model.base=nobody-here/no-such-model",
                                               "--set", "model.init=random"], 3, "HF_HUB_OFFLINE"),
    Case("base model on an unreachable hub", ["run", SMOKE, "--set", "model.base=nobody-here/no-such-model",
                                              "--set", "model.tokenizer=jobs/assets/tiny-dream"], 3, "network",
         env=UNREACHABLE_HUB),
    Case("run with cuda on a CPU machine", ["run", SMOKE, "--set", "train.device=cuda"], 1, "train.device"),
    Case("run dir is a file (run)", ["run", SMOKE, "--set", "artifacts.run_dir={tmp}/afile"], 1, "is a file",
         {"afile": b"x"}),
    Case("status of a run dir that does not exist", ["status", SMOKE], 1, "does not exist"),
    Case("status of a run dir that is a file", ["status", SMOKE, "--set", "artifacts.run_dir={tmp}/afile"], 1,
         "is a file", {"afile": b"x"}),
    # --- pulling ---------------------------------------------------------------------------------
    Case("pull unknown scheme", ["pull", "gs://b/x", "{tmp}/out"], 1, "gs://b/x"),
    Case("pull into a file", ["pull", "file://{tmp}/nothing", "{tmp}/afile"], 1, "afile", {"afile": b"x"}),
    Case("pull under a file", ["pull", "file://{tmp}/nothing", "{tmp}/afile/x"], 1, "afile", {"afile": b"x"}),
    Case("pull into a folder of other files", ["pull", "file://{tmp}/nothing", "{tmp}/mine"], 1, "is not empty",
         {"mine/config.json": b"{}", "nothing/.keep": b""}),
    Case("pull from an empty folder", ["pull", "file://{tmp}/nothing", "{tmp}/out"], 1, "MANIFEST.sha256",
         {"nothing/.keep": b""}),
]


def _snapshot(run_dir: Path) -> dict[str, str]:
    """Every file that holds work (not the lock, run info or stage records) with its sha256."""
    if not run_dir.is_dir():
        return {}
    return {p.relative_to(run_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name not in (".lock", "run.json") and p.parent.name != "stages"}


@pytest.fixture(scope="module")
def made_run_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A prepared and a trained (4 steps) smoke run dir, copied into each case that needs one."""
    import os

    base = tmp_path_factory.mktemp("made")
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        prepared, trained = base / "prepared", base / "trained"
        assert runner.invoke(app, ["prep", SMOKE, "--set", f"artifacts.run_dir={prepared}"]).exit_code == 0
        shutil.copytree(prepared, trained)
        result = runner.invoke(app, ["train", SMOKE, "--set", f"artifacts.run_dir={trained}", *TRAIN_ARGS])
        assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
    return {"prepared": prepared, "trained": trained}


def test_the_table_has_at_least_60_cases() -> None:
    assert len(CASES) >= 90
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_input_is_one_sentence_with_a_user_exit_code(case: Case, tmp_path: Path, in_repo: Path,
                                                           made_run_dirs: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for env, value in case.env.items():
        if value:
            monkeypatch.setenv(env, value)
        else:
            monkeypatch.delenv(env, raising=False)
    for rel, content in case.files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        else:
            path.write_bytes(content)
    run = tmp_path / "run"
    if case.run_dir != "none":
        shutil.copytree(made_run_dirs[case.run_dir], run)
    if case.damage is not None:
        case.damage(run)
    fill = {"tmp": str(tmp_path), "run": str(run)}
    args = [a.format(**fill) for a in case.args]
    if case.args[0] in ("prep", "train", "eval", "run", "status") and not any("artifacts.run_dir" in a for a in args):
        args += ["--set", f"artifacts.run_dir={run}"]
    if case.args[0] == "run" and not any("artifacts.destinations" in a for a in args):
        args += ["--set", "artifacts.destinations=[]"]
    before = _snapshot(run)

    result = runner.invoke(app, args)

    output = result.output
    assert result.exit_code == case.code, output
    assert "Traceback" not in output and "a bug in dream-job" not in output, output
    if case.code == 2:  # click's usage error: its box names the flag and the value
        assert "Invalid value for '--set'" in output and case.names.split()[-1] in output, output
    else:
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, output
        assert case.names in errors[0], errors[0]
    assert _snapshot(run) == before


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_prep_of_a_hub_dataset_without_network_fails_fast_with_exit_3(offline: bool, tmp_path: Path) -> None:
    """A real process (huggingface_hub reads `HF_HUB_OFFLINE` when imported): one sentence, exit 3, in seconds."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(REPO)}
    env["HF_HUB_OFFLINE"] = env["HF_DATASETS_OFFLINE"] = "1" if offline else "0"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "dream_job", "prep", SMOKE, "--set",
                             "data.dataset=nobody-here/no-such-dataset", "--set", f"artifacts.run_dir={tmp_path / 'run'}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 30
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and "Retrying" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "`data.dataset`" in errors[0], result.stderr
    assert "HF_HUB_OFFLINE" in result.stderr and "local path" in result.stderr


def test_eval_results_are_keyed_on_the_weights_bytes_not_the_folder(tmp_path: Path, in_repo: Path,
                                                                    made_run_dirs: dict[str, Path]) -> None:
    """Issue 25: other weights in the same export folder are decoded again; missing weights are no cached answer."""
    run = tmp_path / "run"
    shutil.copytree(made_run_dirs["trained"], run)
    args = ["eval", SMOKE, "--model", "final", "--set", f"artifacts.run_dir={run}", "--set", "eval.limit=4"]
    items = run / "eval" / "items-final-s1k_holdout.jsonl"

    def keys() -> set[str]:
        return {json.loads(line)["key"] for line in items.read_text().splitlines()}

    assert runner.invoke(app, args).exit_code == 0
    first = keys()
    assert runner.invoke(app, args).exit_code == 0 and keys() == first  # same weights: reused
    shard = next((run / "export").glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])  # the last weight's bytes change, its size does not
    shard.write_bytes(bytes(data))
    assert runner.invoke(app, args).exit_code == 0
    assert keys().isdisjoint(first)  # decoded again with the new weights
    shard.unlink()
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: the weights of `{run / 'export'}` are incomplete: `{shard.name}` is missing"]
