"""Evaluation split over several `dream-job eval --shard` processes (CPU here; one per GPU on a machine).

The oracle is the same evaluation in one process: greedy decoding of the same batches gives the
same tokens, so the items files must be equal apart from the measured seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from dream_job.data.tokenizer import load_tokenizer
from dream_job.errors import StageError
from dream_job.model import DreamConfig, DreamModel
from dream_job.model.weights import save_hf_folder
from dream_job.pipeline import evaluate_models
from dream_job.spec import JobSpec

from tests.conftest import TINY_DREAM, write_jsonl

pytestmark = pytest.mark.slow  # several Python processes each

SUITE = [{"question": f"Tom has {i} apples and buys {i + 2} more. How many{'?' * (1 + i % 4)}",
          "answer": f"#### {2 * i + 2}"} for i in range(7)]


def make_spec(root: Path, name: str, processes: int | None) -> JobSpec:
    return JobSpec.model_validate({
        "name": name,
        "model": {"base": str(TINY_DREAM), "init": "random", "dtype": "float32"},
        "train": {"device": "cpu", "seed": 3},
        "eval": {"suites": ["gsm8k"], "sources": {"gsm8k": str(root / "gsm8k.jsonl")}, "batch_size": 2,
                 "processes": processes,
                 "sampler": {"mode": "fast", "gen_length": 16, "block_length": 8, "cuda_graphs": False}},
        "artifacts": {"run_dir": str(root / name)},
    })


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A gsm8k file and a run dir as prep and export leave it (tokenizer, a random tiny export)."""
    write_jsonl(SUITE, tmp_path / "gsm8k.jsonl")
    run_dir = tmp_path / "one"
    load_tokenizer(str(TINY_DREAM)).save_pretrained(str(run_dir / "data" / "tokenizer"))
    config = DreamConfig.from_pretrained_dir(TINY_DREAM)
    torch.manual_seed(1)
    model = DreamModel(config)
    model.init_weights()
    save_hf_folder(model, config, run_dir / "export", dtype=torch.float32)
    return tmp_path


def items(run_dir: Path, label: str) -> list[dict[str, Any]]:
    lines = (run_dir / "eval" / f"items-{label}-gsm8k.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def labels(spec: JobSpec) -> list[tuple[str, Path | None]]:
    return [("base", None), ("final", spec.run_dir() / "export")]


def test_two_processes_decode_what_one_does(root: Path, capfd: pytest.CaptureFixture[str]) -> None:
    one = make_spec(root, "one", processes=1)
    shutil.copytree(one.run_dir(), root / "two")
    two = make_spec(root, "two", processes=2)

    evaluate_models(one, labels(one))
    evaluate_models(two, labels(two))

    err = capfd.readouterr().err
    # 7 items in batches of 2: process 0 takes batches 0 and 2 (4 items), process 1 batches 1 and 3 (3 items).
    for label in ("base", "final"):
        assert f"process 0/2: {label} gsm8k: decoded 4 items in 2 batches" in err
        assert f"process 1/2: {label} gsm8k: decoded 3 items in 2 batches" in err
        expected = items(one.run_dir(), label)
        assert [r["id"] for r in expected] == [f"gsm8k-{i}" for i in range(7)]
        assert items(two.run_dir(), label) == expected
    summary_one = json.loads((one.run_dir() / "eval" / "summary.json").read_text())
    summary_two = json.loads((two.run_dir() / "eval" / "summary.json").read_text())
    for label in ("base", "final"):
        for key in ("n", "correct", "num_tokens", "tokens_per_forward"):
            assert summary_two[label]["gsm8k"][key] == summary_one[label]["gsm8k"][key]
    assert not (two.run_dir() / "eval" / "parts").exists()  # folded into the items files
    assert (two.run_dir() / "eval" / "report.md").is_file()

    # Everything done: a re-run starts no process and decodes nothing.
    evaluate_models(two, labels(two))
    assert "process 0/2" not in capfd.readouterr().err


def test_no_more_processes_than_batches(root: Path, capfd: pytest.CaptureFixture[str]) -> None:
    one = make_spec(root, "one", processes=1)
    evaluate_models(one, labels(one)[:1])
    shutil.copytree(root / "one", root / "eight", ignore=shutil.ignore_patterns("eval"))
    eight = make_spec(root, "eight", processes=8)
    evaluate_models(eight, labels(eight)[:1])  # 4 batches: 4 processes
    err = capfd.readouterr().err
    assert "process 3/4: base gsm8k: decoded 1 items in 1 batches" in err and "/8" not in err
    assert items(eight.run_dir(), "base") == items(one.run_dir(), "base")
    whole = make_spec(root, "whole", processes=2)
    whole = whole.model_copy(update={"eval": whole.eval.model_copy(update={"batch_size": 8})})
    shutil.copytree(root / "one", root / "whole", ignore=shutil.ignore_patterns("eval"))
    evaluate_models(whole, labels(whole)[:1])  # one batch: decoded here, no process started
    assert "process 0/" not in capfd.readouterr().err
    assert len(items(whole.run_dir(), "base")) == 7


def test_parts_left_by_a_killed_run_are_kept(root: Path) -> None:
    """Part files of processes that were killed count as decoded on the next run, whatever its process count."""
    one = make_spec(root, "one", processes=1)
    evaluate_models(one, labels(one)[:1])
    expected = items(one.run_dir(), "base")
    eval_dir = one.run_dir() / "eval"
    lines = (eval_dir / "items-base-gsm8k.jsonl").read_text().splitlines(keepends=True)
    # As if processes 0 and 1 of an earlier run wrote items 5 and 2 (plus a torn line) and were killed.
    (eval_dir / "parts").mkdir()
    (eval_dir / "parts" / "items-base-gsm8k.0.jsonl").write_text(lines[5])
    (eval_dir / "parts" / "items-base-gsm8k.1.jsonl").write_text(lines[2] + '{"id": "gsm8k-6", "ke')
    (eval_dir / "items-base-gsm8k.jsonl").write_text("".join(lines[:2]))

    from dream_job.eval.run import evaluate, plan_evaluation

    plan = plan_evaluation(one, model_label="base")
    assert sorted(plan.done["gsm8k"]) == ["gsm8k-0", "gsm8k-1", "gsm8k-2", "gsm8k-5"]
    assert sorted(item.id for item, _ in plan.pending["gsm8k"]) == ["gsm8k-3", "gsm8k-4", "gsm8k-6"]
    assert not (eval_dir / "parts").exists()
    assert len((eval_dir / "items-base-gsm8k.jsonl").read_text().splitlines()) == 4  # repaired: no torn line
    evaluate(one, model_label="base")
    assert items(one.run_dir(), "base") == expected


def test_a_failed_process_fails_the_stage_with_its_exit_code(root: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Weights that do not load: each process says why, the stage names a process and exits as it did (1)."""
    two = make_spec(root, "one", processes=2)
    (weights,) = (two.run_dir() / "export").glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])  # config and index intact: the plan accepts the folder
    with pytest.raises(StageError) as info:
        evaluate_models(two, labels(two)[1:])
    assert info.value.exit_code == 1
    assert info.value.message in {f"evaluation process {i} of 2 (`final`) exited with code 1" for i in (0, 1)}
    assert f"error: `{weights}`" in capfd.readouterr().err  # the process's own one-sentence error
    assert not (two.run_dir() / "eval" / "parts" / "job.json").exists()


def test_shard_option_is_checked(root: Path) -> None:
    spec = make_spec(root, "one", processes=None)
    path = root / "job.json"
    path.write_text(json.dumps(spec.model_dump(mode="json")))
    done = subprocess.run([sys.executable, "-m", "dream_job", "eval", str(path), "--shard", "2/2"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "--shard `2/2` is not `i/n` with 0 <= i < n" in done.stderr


def test_the_process_count_alone_does_not_evaluate_again(root: Path) -> None:
    from dream_job.pipeline import eval_stage

    assert not eval_stage(make_spec(root, "one", processes=1), verb="test").skipped
    assert eval_stage(make_spec(root, "one", processes=2), verb="test").skipped  # same items whatever the count
    bigger = make_spec(root, "one", processes=2)
    bigger = bigger.model_copy(update={"eval": bigger.eval.model_copy(update={"limit": 5})})
    assert not eval_stage(bigger, verb="test").skipped  # what is evaluated changed
