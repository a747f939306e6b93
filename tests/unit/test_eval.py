"""Evaluation: answer extraction and checking, suites from local files, `evaluate` end to end, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from dream_job.data.encode import encode_row
from dream_job.data.layout import THINK_HEADER
from dream_job.data.tokenizer import load_tokenizer
from dream_job.diffusion.sampler import GenerationResult
from dream_job.errors import CheckpointError, DataError, SpecError
from dream_job.eval.answers import build_prompt, check_answer, extract_answer, last_boxed
from dream_job.eval.models import load_eval_model
from dream_job.eval.report import write_report
from dream_job.eval.run import evaluate
from dream_job.eval.suites import gsm8k_gold, load_suite
from dream_job.model import DreamConfig, DreamModel
from dream_job.model.weights import save_hf_folder
from dream_job.progress import eval_summary_table
from dream_job.spec import JobSpec

from tests.conftest import TINY_DREAM, write_jsonl

# --- extraction and checking ----------------------------------------------------------------

CASES = [
    # (decoded output, gold, extracted, correct)
    ("So the sum is \\boxed{42}.", "42", "42", True),
    ("Thus $x = \\boxed{\\frac{1}{2}}$.", "0.5", "\\frac{1}{2}", True),
    ("Thus $x = \\boxed{\\frac{1}{2}}$.", "\\frac12", "\\frac{1}{2}", True),
    ("The side has length 5 cm.\nAnswer: 5 cm", "5", "5 cm", True),
    ("Answer: 42", "42", "42", True),
    ("She earns 1,234 dollars in total.", "1234", "1234", True),
    ("Adding them gives \\boxed{41}.", "42", "41", False),
    ("I could not find the answer.", "42", None, False),
    ("", "42", None, False),
    (
        "<|im_start|>think\nfirst guess \\boxed{41}, wait, recount\n<|im_start|>answer\nAnswer: 42<|im_end|>",
        "42", "42", True,
    ),
    ("Answer:\n18\n", "18", "18", True),
    ("It costs \\boxed{\\$18}.", "18", "\\$18", True),
    ("\\boxed{\\{1, 2\\}}", "\\{1,2\\}", "\\{1, 2\\}", True),
    ("The final answer is $\\left( 3, \\frac{\\pi}{2} \\right)$.", "\\left( 3, \\frac{\\pi}{2} \\right)",
     "$\\left( 3, \\frac{\\pi}{2} \\right)$", True),
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", "\\text{Evelyn}", True),
    ("1+1 is \\boxed{2}", "The answer is \\boxed{2}, since ...", "2", True),  # s1K solution with a boxed gold
]


@pytest.mark.parametrize(("output", "gold", "extracted", "correct"), CASES)
def test_extract_and_check(output: str, gold: str, extracted: str | None, correct: bool) -> None:
    assert extract_answer(output) == extracted
    assert check_answer(gold, extract_answer(output)) is correct


def test_gold_first_order_and_nested_boxed() -> None:
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{a}{\\sqrt{b}}}") == "\\frac{a}{\\sqrt{b}}"
    assert last_boxed("\\boxed{\\frac{1}{2}") is None  # unbalanced: no answer rather than a wrong one
    assert check_answer("\\frac{1}{2}", "0.5") and check_answer("0.5", "\\frac{1}{2}")


def test_gsm8k_gold() -> None:
    assert gsm8k_gold("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 1,234") == "1234"
    assert gsm8k_gold("no final line") is None


def test_prompt_matches_training_layout() -> None:
    tokenizer = load_tokenizer(str(TINY_DREAM))
    row = encode_row(tokenizer, "What is 2 + 3?", "2 plus 3 is 5.", "5", system_prompt="Be brief.",
                     max_length=256, truncation="keep_answer", marker="...")
    header = tokenizer(THINK_HEADER, add_special_tokens=False)["input_ids"]
    prompt = build_prompt(tokenizer, "What is 2 + 3?", system_prompt="Be brief.", prefill_think=True)
    assert prompt == row.input_ids[: row.prompt_length + len(header)]
    assert build_prompt(tokenizer, "What is 2 + 3?", system_prompt="Be brief.", prefill_think=False) == (
        row.input_ids[: row.prompt_length]
    )


# --- suites --------------------------------------------------------------------------------

GSM8K = [
    {"question": "Tom has 1000 apples and buys 234 more. How many?", "answer": "1000+234=<<1000+234=1234>>1234\n#### 1,234"},
    {"question": "A pen costs 6 dollars. What do 3 pens cost?", "answer": "3*6=18\n#### 18"},
    {"question": "Sam had 10 apples and ate 3. How many are left?", "answer": "10-3=7\n#### 7"},
    {"question": "What is six times seven?", "answer": "6*7=42\n#### 42"},
]
MATH500 = [
    {"problem": "Compute $\\frac{2}{4}$.", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "answer": "\\frac{1}{2}",
     "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/1.json"},
    {"problem": "What is $2+3$?", "solution": "$\\boxed{5}$", "answer": "5", "subject": "Prealgebra", "level": 1,
     "unique_id": "test/prealgebra/2.json"},
    {"problem": "Convert $(0,3)$ to polar coordinates.", "solution": "...",
     "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2,
     "unique_id": "test/precalculus/807.json"},
]
HOLDOUT = [
    {"row_index": 3, "question": "What is 2 + 3?", "solution": "5", "trace": "t", "attempt": "5"},
    {"row_index": 17, "question": "What is 4 times 3?", "solution": "4 times 3 is $\\boxed{12}$.", "trace": "t",
     "attempt": "12"},
]


def make_spec(tmp_path: Path, **eval_overrides: Any) -> JobSpec:
    sources = {"gsm8k": str(tmp_path / "gsm8k.jsonl"), "math500": str(tmp_path / "math500.jsonl")}
    eval_section = {
        "suites": ["s1k_holdout", "gsm8k", "math500"],
        "sources": sources,
        "batch_size": 2,
        "sampler": {"mode": "reference", "gen_length": 96, "steps": 4},
        **eval_overrides,
    }
    return JobSpec.model_validate({
        "name": "eval-test",
        "model": {"base": str(TINY_DREAM), "init": "random", "dtype": "float32"},
        "train": {"device": "cpu", "seed": 3},
        "eval": eval_section,
        "artifacts": {"run_dir": str(tmp_path / "run")},
    })


@pytest.fixture
def suite_files(tmp_path: Path) -> Path:
    write_jsonl(GSM8K, tmp_path / "gsm8k.jsonl")
    write_jsonl(MATH500, tmp_path / "math500.jsonl")
    (tmp_path / "run" / "data").mkdir(parents=True)
    write_jsonl(HOLDOUT, tmp_path / "run" / "data" / "holdout.jsonl")
    return tmp_path


def test_suites_from_local_files(suite_files: Path) -> None:
    spec = make_spec(suite_files)
    gsm8k = load_suite("gsm8k", spec.eval, spec.run_dir())
    assert [(i.id, i.gold) for i in gsm8k] == [("gsm8k-0", "1234"), ("gsm8k-1", "18"), ("gsm8k-2", "7"), ("gsm8k-3", "42")]
    assert gsm8k[0].question == GSM8K[0]["question"]
    math500 = load_suite("math500", spec.eval, spec.run_dir())
    assert [i.id for i in math500] == [f"math500-{r['unique_id']}" for r in MATH500]
    assert [i.gold for i in math500] == [r["answer"] for r in MATH500]
    holdout = load_suite("s1k_holdout", spec.eval, spec.run_dir())
    assert [(i.id, i.gold) for i in holdout] == [("s1k_holdout-3", "5"), ("s1k_holdout-17", HOLDOUT[1]["solution"])]


def test_suite_from_parquet(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(MATH500).to_parquet(str(tmp_path / "math500.parquet"))
    spec = make_spec(tmp_path, sources={"math500": str(tmp_path / "math500.parquet")})
    assert [i.gold for i in load_suite("math500", spec.eval, spec.run_dir())] == [r["answer"] for r in MATH500]


def test_suite_missing_column_error(tmp_path: Path) -> None:
    path = write_jsonl([{k: v for k, v in r.items() if k != "answer"} for r in MATH500], tmp_path / "m.jsonl")
    spec = make_spec(tmp_path, sources={"math500": str(path)})
    with pytest.raises(DataError) as info:
        load_suite("math500", spec.eval, spec.run_dir())
    assert info.value.message == f"eval suite `math500` source `{path}` has no column `answer`"
    assert info.value.hint == (
        "it has `level`, `problem`, `solution`, `subject`, `unique_id`; point `eval.sources.math500` at data in "
        "the MATH-500 schema (`problem`, `answer`)"
    )


def test_missing_holdout_error(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    with pytest.raises(DataError) as info:
        load_suite("s1k_holdout", spec.eval, spec.run_dir())
    assert info.value.message == f"eval suite `s1k_holdout` source `{tmp_path}/run/data/holdout.jsonl` does not exist"


def test_limit_and_seed_subsample_deterministically(tmp_path: Path) -> None:
    rows = [{"question": f"What is {i} plus one?", "answer": f"#### {i + 1}"} for i in range(30)]
    write_jsonl(rows, tmp_path / "gsm8k.jsonl")

    def ids(limit: int | None, seed: int) -> list[str]:
        spec = make_spec(tmp_path, limit=limit, seed=seed)
        return [item.id for item in load_suite("gsm8k", spec.eval, spec.run_dir())]

    first = ids(5, 0)
    assert len(first) == 5 and first == ids(5, 0)
    assert first == sorted(first, key=lambda i: int(i.split("-")[1]))  # source order kept
    assert ids(5, 1) != first
    assert len(ids(None, 0)) == len(ids(100, 0)) == 30


# --- evaluate end to end ----------------------------------------------------------------------

BASE_ANSWERS = {
    GSM8K[0]["question"]: "So the total is 1,234.",
    GSM8K[1]["question"]: "Answer: 17",
    GSM8K[2]["question"]: "I am not sure.",
    GSM8K[3]["question"]: "",
    MATH500[0]["problem"]: "It is \\boxed{0.5}",
    MATH500[1]["problem"]: "\\boxed{6}",
    MATH500[2]["problem"]: "\\boxed{(3, 0)}",
    HOLDOUT[0]["question"]: "Answer: 6",
    HOLDOUT[1]["question"]: "Answer: 13",
}
FINAL_ANSWERS = {
    GSM8K[0]["question"]: "1000 + 234 = \\boxed{1234}",
    GSM8K[1]["question"]: "maybe 17?\n<|im_start|>answer\nAnswer: 18",
    GSM8K[2]["question"]: "Answer: 7 apples",
    GSM8K[3]["question"]: "Answer: 41",
    MATH500[0]["problem"]: "\\boxed{\\frac{1}{2}}",
    MATH500[1]["problem"]: "Answer: 5",
    MATH500[2]["problem"]: "\\boxed{\\left(3, \\frac{\\pi}{2}\\right)}",
    HOLDOUT[0]["question"]: "<|im_start|>answer\nAnswer: 5",
    HOLDOUT[1]["question"]: "\\boxed{12}",
}
EXPECTED = {  # (correct, n) per suite
    "base": {"s1k_holdout": (0, 2), "gsm8k": (1, 4), "math500": (1, 3)},
    "final": {"s1k_holdout": (2, 2), "gsm8k": (3, 4), "math500": (3, 3)},
}


def make_generate(tokenizer: Any, answers: dict[str, str], calls: list[int]) -> Any:
    """A stand-in for `sampler.generate`: the answer written for the prompt's question, then EOS."""

    def generate(model: Any, prompts: list[list[int]], settings: Any, *, mask_id: int, eos_id: int, pad_id: int,
                 generator: torch.Generator | None = None, forwards: Any = None) -> GenerationResult:
        assert isinstance(model, DreamModel) and mask_id == 4 and eos_id == 0 and pad_id == 0
        calls.append(len(prompts))
        tokens = []
        for prompt in prompts:
            text = tokenizer.decode(prompt, skip_special_tokens=False)
            assert text.endswith("<|im_start|>assistant\n" + THINK_HEADER)
            question = next(q for q in answers if f"<|im_start|>user\n{q}<|im_end|>" in text)
            ids = tokenizer(answers[question], add_special_tokens=False)["input_ids"]
            assert len(ids) < settings.gen_length
            tokens.append(ids + [eos_id] * (settings.gen_length - len(ids)))
        return GenerationResult(tokens=tokens, num_forward_passes=settings.steps, seconds=1.5 * len(prompts))

    return generate


@pytest.fixture
def run(suite_files: Path) -> tuple[JobSpec, Any]:
    """A run directory as prep and export leave it: hold-out, tokenizer and an exported tiny model."""
    spec = make_spec(suite_files)
    tokenizer = load_tokenizer(str(TINY_DREAM))
    tokenizer.save_pretrained(str(spec.run_dir() / "data" / "tokenizer"))
    config = DreamConfig.from_pretrained_dir(TINY_DREAM)
    torch.manual_seed(1)
    model = DreamModel(config)
    model.init_weights()
    save_hf_folder(model, config, spec.run_dir() / "export", dtype=torch.float32)
    return spec, tokenizer


def expected_tokens(tokenizer: Any, answers: dict[str, str], questions: list[str]) -> int:
    return sum(len(tokenizer(answers[q], add_special_tokens=False)["input_ids"]) for q in questions)


def test_evaluate_end_to_end_and_resume(run: tuple[JobSpec, Any]) -> None:
    spec, tokenizer = run
    eval_dir = spec.run_dir() / "eval"
    calls: list[int] = []
    base = evaluate(spec, model_label="base", generate_fn=make_generate(tokenizer, BASE_ANSWERS, calls))
    assert calls == [2, 2, 2, 2, 1]  # batches of eval.batch_size per suite (2, 4 and 3 items)
    final = evaluate(spec, model_label="final", generate_fn=make_generate(tokenizer, FINAL_ANSWERS, calls))
    assert len(calls) == 10

    summary = json.loads((eval_dir / "summary.json").read_text())
    assert set(summary) == {"base", "final"}
    assert summary["base"] == base and summary["final"] == final
    questions = {"s1k_holdout": [r["question"] for r in HOLDOUT], "gsm8k": [r["question"] for r in GSM8K],
                 "math500": [r["problem"] for r in MATH500]}
    for label, answers in (("base", BASE_ANSWERS), ("final", FINAL_ANSWERS)):
        for suite, (correct, n) in EXPECTED[label].items():
            entry = summary[label][suite]
            num_tokens = expected_tokens(tokenizer, answers, questions[suite])
            assert (entry["correct"], entry["n"], entry["accuracy"]) == (correct, n, correct / n), (label, suite)
            assert entry["num_tokens"] == num_tokens and entry["seconds"] == pytest.approx(1.5 * n)
            assert entry["tokens_per_second"] == pytest.approx(num_tokens / (1.5 * n))
            assert entry["tokens_per_forward"] == pytest.approx(96 / 4)  # the stand-in reports `steps` (4) passes
            assert entry["sampler"]["gen_length"] == 96 and entry["items"] == f"items-{label}-{suite}.jsonl"
            records = [json.loads(line) for line in (eval_dir / entry["items"]).read_text().splitlines()]
            assert [r["output"] for r in records] == [answers[q] for q in questions[suite]]
            assert sum(r["correct"] for r in records) == correct
            assert set(records[0]) >= {"prompt", "output", "extracted", "gold", "correct", "tokens", "seconds"}
    gsm8k_final = [json.loads(line) for line in (eval_dir / "items-final-gsm8k.jsonl").read_text().splitlines()]
    assert [r["extracted"] for r in gsm8k_final] == ["1234", "18", "7 apples", "41"]
    assert [r["gold"] for r in gsm8k_final] == ["1234", "18", "7", "42"]

    # A re-run with the same settings decodes nothing and changes no numbers.
    def refuse(*args: Any, **kwargs: Any) -> GenerationResult:
        raise AssertionError("items were decoded again")

    assert evaluate(spec, model_label="final", generate_fn=refuse)["gsm8k"]["correct"] == 3
    # A run killed mid-suite: only the missing item is decoded.
    path = eval_dir / "items-final-gsm8k.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:3]) + '{"id": "gsm8k-3", "ke')
    calls.clear()
    evaluate(spec, model_label="final", generate_fn=make_generate(tokenizer, FINAL_ANSWERS, calls))
    assert calls == [1]
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [f"gsm8k-{i}" for i in range(4)]
    # Other sampler settings: everything is decoded again.
    calls.clear()
    other = make_spec(spec.run_dir().parent, sampler={"mode": "reference", "gen_length": 80, "steps": 8})
    evaluate(other, model_label="final", generate_fn=make_generate(tokenizer, FINAL_ANSWERS, calls))
    assert sum(calls) == 9

    report = write_report(spec.run_dir()).read_text()
    assert ("| `gsm8k` | 4 | 25.0% (1/4) CI 4.6 to 69.9 | 75.0% (3/4) CI 30.1 to 95.4 | "
            "+50.0 pp CI -13.5 to +78.9 |") in report
    assert ("| `math500` | 3 | 33.3% (1/3) CI 6.1 to 79.2 | 100.0% (3/3) CI 43.9 to 100.0 | "
            "+66.7 pp CI -5.9 to +93.9 |") in report
    # The first items side by side: question, gold, each model's extracted answer and mark.
    assert "### `gsm8k`: the first 4 of 4 items" in report
    assert f"| 1 | {GSM8K[0]['question']} | `1234` | ✓ `1234` | ✓ `1234` |" in report
    assert f"| 2 | {GSM8K[1]['question']} | `18` | ✗ `17` | ✓ `18` |" in report
    assert f"| 4 | {GSM8K[3]['question']} | `42` | ✗ no answer (empty output) | ✗ `41` |" in report
    assert f"| 2 | {HOLDOUT[1]['question']} | `12` | ✗ `13` | ✓ `12` |" in report  # the boxed part of the gold
    assert "[gsm8k](items-final-gsm8k.jsonl)" in report and "`base`" in report
    assert "different settings" in report  # base decoded 96 tokens, final now 80
    png = (eval_dir / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(str(eval_dir / "accuracy.png")).shape[2] in (3, 4)

    console = Console(record=True, width=160, no_color=True)
    console.print(eval_summary_table(summary))
    text = console.export_text()
    assert "+50.0 pp" in text and "75.0% (3/4)" in text


def test_base_random_model_is_the_trainers_start(run: tuple[JobSpec, Any]) -> None:
    from dream_job.model.init import random_init_model

    spec, tokenizer = run
    loaded = load_eval_model(spec, label="base", model_dir=None, tokenizer=tokenizer)
    config = DreamConfig.from_pretrained_dir(TINY_DREAM)
    expected = random_init_model(config, seed=spec.train.seed).state_dict()
    state = loaded.model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_gen_length_beyond_context(run: tuple[JobSpec, Any]) -> None:
    spec, tokenizer = run
    spec = make_spec(spec.run_dir().parent, suites=["gsm8k"], sampler={"gen_length": 4090})
    longest = max(len(build_prompt(tokenizer, r["question"], system_prompt=None, prefill_think=True)) for r in GSM8K)
    with pytest.raises(SpecError) as info:
        evaluate(spec, model_label="final", generate_fn=make_generate(tokenizer, FINAL_ANSWERS, []))
    assert info.value.message == (
        f"`eval.sampler.gen_length` (4090) plus the longest `gsm8k` prompt ({longest} tokens) is {4090 + longest} "
        f"tokens, over the model's context of 4096 (`max_position_embeddings`)"
    )
    assert info.value.hint == f"set `--set eval.sampler.gen_length={4096 - longest}` or less"


def test_folder_that_is_not_a_dream_checkpoint(run: tuple[JobSpec, Any], tmp_path: Path) -> None:
    spec, tokenizer = run
    folder = tmp_path / "qwen"
    folder.mkdir()
    with pytest.raises(CheckpointError) as info:
        evaluate(spec, model_label="other", model_dir=folder, generate_fn=make_generate(tokenizer, {}, []))
    assert info.value.message == f"`{folder}` is not a Dream checkpoint: it has no `config.json`"
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(CheckpointError) as info:
        load_eval_model(spec, label="other", model_dir=folder, tokenizer=tokenizer)
    assert info.value.message == (
        f"`{folder}` is not a Dream checkpoint: `config.json` has `model_type` `qwen2`, expected `Dream`"
    )
    with pytest.raises(CheckpointError) as info:
        load_eval_model(spec, label="other", model_dir=None, tokenizer=tokenizer)
    assert info.value.message == "model label `other` is neither `base` nor `final` and no model folder was given"


def test_evaluate_with_the_real_sampler(run: tuple[JobSpec, Any]) -> None:
    spec, _ = run
    spec = make_spec(spec.run_dir().parent, suites=["gsm8k"], limit=3, batch_size=2,
                     sampler={"mode": "reference", "gen_length": 8, "steps": 4})
    entry = evaluate(spec, model_label="final")["gsm8k"]  # random weights: the answers are noise
    assert (entry["n"], entry["correct"], entry["num_tokens"]) == (3, 0, 24)  # noise: no answer right, no EOS
    records = [json.loads(line) for line in (spec.run_dir() / "eval" / entry["items"]).read_text().splitlines()]
    assert [(r["gold"], r["correct"], r["tokens"]) for r in records] == [("1234", False, 8), ("18", False, 8),
                                                                         ("42", False, 8)]


def test_moved_run_dir_keeps_finished_items(run: tuple[JobSpec, Any], tmp_path: Path) -> None:
    import shutil

    spec, tokenizer = run
    spec = make_spec(spec.run_dir().parent, suites=["gsm8k"])
    evaluate(spec, model_label="final", generate_fn=make_generate(tokenizer, FINAL_ANSWERS, []))
    moved = tmp_path / "mounted-elsewhere"
    shutil.move(spec.run_dir(), moved)
    moved_spec = spec.model_copy(update={"artifacts": spec.artifacts.model_copy(update={"run_dir": str(moved)})})

    def refuse(*args: Any, **kwargs: Any) -> GenerationResult:
        raise AssertionError("items were decoded again")

    assert evaluate(moved_spec, model_label="final", generate_fn=refuse)["gsm8k"]["correct"] == 3


# --- the report a person reads ------------------------------------------------------------------


def chat_prompt(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n<|im_start|>think\n"


def write_eval_dir(run_dir: Path) -> dict[str, Any]:
    """An eval dir as `evaluate` leaves it: gsm8k 18/40 -> 30/40, s1k_holdout 0/8 -> 6/8 (final has 7 items)."""
    from dream_job.eval.records import update_summary, write_items

    eval_dir = run_dir / "eval"
    plan = {("base", "gsm8k"): (40, 18), ("final", "gsm8k"): (40, 30),
            ("base", "s1k_holdout"): (8, 0), ("final", "s1k_holdout"): (7, 6)}
    sources = {"base": "Dream-org/Dream-v0-Base-7B", "final": "/work/runs/job/export"}
    for (label, suite), (n, k) in plan.items():
        records = []
        for i in range(n):
            correct = i < k
            extracted = str(i) if correct else (None if i % 2 else f"{i}|{i}")
            output = "Answer: " + str(extracted) if extracted else "no idea,\nreally " * 20
            records.append({"id": f"{suite}-{i}", "key": "k", "prompt": chat_prompt(f"What is {i} | 0?\nThink."),
                            "output": output, "extracted": extracted, "gold": f"So $\\boxed{{{i}}}$.",
                            "correct": correct, "tokens": 5, "seconds": 0.5})
        write_items(eval_dir / f"items-{label}-{suite}.jsonl", records)
        update_summary(eval_dir, label, suite, {
            "n": n, "correct": k, "accuracy": k / n, "num_tokens": 5 * n, "seconds": 0.5 * n, "tokens_per_second": 10.0,
            "items": f"items-{label}-{suite}.jsonl", "model": sources[label], "sampler": {"mode": "fast", "top_k": 50},
            "prefill_think": True, "limit": None, "seed": 0,
        })
    return json.loads((eval_dir / "summary.json").read_text())


# Wilson / Newcombe intervals of the plan above (checked against published values in test_eval_stats.py).
GSM8K_ROW = ("| `gsm8k` | 40 | 45.0% (18/40) CI 30.7 to 60.2 | 75.0% (30/40) CI 59.8 to 85.8 | "
             "+30.0 pp CI +8.5 to +47.9 |")
HOLDOUT_ROW = ("| `s1k_holdout` | 7 / 8 | 0.0% (0/8) CI 0.0 to 32.4 | 85.7% (6/7) CI 48.7 to 97.4 | "
               "+85.7 pp CI +36.5 to +97.4 |")


def test_report_shows_n_intervals_examples_and_models(tmp_path: Path) -> None:
    write_eval_dir(tmp_path)
    report = write_report(tmp_path, num_examples=3).read_text()
    assert GSM8K_ROW + " 10.0 | 10.0 |" in report and HOLDOUT_ROW + " 10.0 | 10.0 |" in report
    assert "Wilson score interval (Wilson 1927)" in report and "Newcombe 1998" in report
    assert "- `base`: `Dream-org/Dream-v0-Base-7B`\n- `final`: `/work/runs/job/export`" in report
    holdout = report.split("### `s1k_holdout`: the first 3 of 8 items\n")[1].split("###")[0]
    rows = [line for line in holdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == [  # pipes escaped, newlines folded, the gold's boxed part, a wrong answer with no answer
        "| 1 | What is 0 \\| 0? Think. | `0` | ✗ `0\\|0` | ✓ `0` |",
        "| 2 | What is 1 \\| 0? Think. | `1` | ✗ no answer; output ends `…" + " ".join(["no idea, really"] * 5)
        + "` | ✓ `1` |",  # the last 80 characters, whitespace folded
        "| 3 | What is 2 \\| 0? Think. | `2` | ✗ `2\\|2` | ✓ `2` |",
    ]
    assert "### `gsm8k`: the first 3 of 40 items" in report


def test_chart_shows_n_intervals_and_model_names(tmp_path: Path) -> None:
    from matplotlib.container import BarContainer

    from dream_job.eval.report import accuracy_figure

    summary = write_eval_dir(tmp_path)
    figure = accuracy_figure(summary, ["base", "final"], ["s1k_holdout", "gsm8k"])
    axes = figure.axes[0]
    ticks = [t.get_text() for t in axes.get_xticklabels()]
    assert ticks == ["s1k_holdout\nn = 7 / 8\nfinal − base: +85.7 pp\n(CI +36.5 to +97.4)",
                     "gsm8k\nn = 40\nfinal − base: +30.0 pp\n(CI +8.5 to +47.9)"]
    assert [t.get_text() for t in figure.legends[0].get_texts()] == [
        "base: Dream-org/Dream-v0-Base-7B", "final: …/job/export"]
    whiskers = []  # (low, high) of every error bar, per model in suite order
    for container in (c for c in axes.containers if isinstance(c, BarContainer)):
        segments = container.errorbar.lines[2][0].get_segments()
        whiskers.append([(round(seg[0][1], 1), round(seg[1][1], 1)) for seg in segments])
    assert whiskers == [[(0.0, 32.4), (30.7, 60.2)], [(48.7, 97.4), (59.8, 85.8)]]
    labels = sorted(t.get_text() for t in axes.texts)
    assert labels == ["0.0%\n0/8", "45.0%\n18/40", "75.0%\n30/40", "85.7%\n6/7"]
    assert "95 % Wilson intervals" in axes.get_title()


def test_model_card_has_the_reports_numbers(tmp_path: Path) -> None:
    from dream_job.artifacts.card import write_model_card

    summary = write_eval_dir(tmp_path)
    (tmp_path / "export").mkdir()
    card = write_model_card(tmp_path / "export", spec_yaml="name: x\n", data_report=None, eval_summary=summary,
                            loss_png=None, repo_id="alice/x").read_text()
    section = card.split("## Evaluation\n")[1].split("\n## ")[0]
    assert "| suite | n | `base` | `final` | `final` − `base` |" in section
    assert GSM8K_ROW + "\n" in section and HOLDOUT_ROW + "\n" in section
    assert "Wilson score interval (Wilson 1927)" in section
    assert "- `final`: `/work/runs/job/export`" in section and "Decoding: `mode=fast`, `top_k=50`." in section


def test_shards_split_the_one_process_batches_round_robin() -> None:
    from dream_job.eval.shards import Shard, shard_batches

    pending = list(range(11))
    assert shard_batches(pending, 3, None) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    assert shard_batches(pending, 3, Shard(0, 3)) == [[0, 1, 2], [9, 10]]
    assert shard_batches(pending, 3, Shard(1, 3)) == [[3, 4, 5]]
    assert shard_batches(pending, 3, Shard(2, 3)) == [[6, 7, 8]]
    assert shard_batches(pending, 3, Shard(4, 5)) == []  # more processes than batches: some idle
    assert Shard.parse(" 1/8 ") == Shard(1, 8) and str(Shard(1, 8)) == "1/8"
    for bad in ("8/8", "-1/2", "1", "a/b"):
        with pytest.raises(ValueError, match="is not `i/n` with 0 <= i < n"):
            Shard.parse(bad)
