"""Job spec: every shipped job file loads; each bad input fails with its exact message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dream_job.errors import SpecError
from dream_job.spec import JobSpec, SamplerSpec, load_spec, parse_override, spec_json_schema
from tests.conftest import REPO

JOB_FILES = sorted((REPO / "jobs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    return info.value


@pytest.mark.parametrize("job", JOB_FILES, ids=lambda p: p.name)
def test_every_shipped_job_file_loads(job: Path) -> None:
    spec = load_spec(job)
    assert spec.name == job.stem


def test_shipped_jobs_cover_the_three_required() -> None:
    assert {p.stem for p in JOB_FILES} >= {"smoke", "dream-s1k", "dream-s1k-lora-4090"}


def test_real_job_defaults_to_keep_answer_and_dream_base() -> None:
    spec = load_spec(REPO / "jobs" / "dream-s1k.yaml")
    assert spec.data.truncation == "keep_answer"
    assert spec.model.base == "Dream-org/Dream-v0-Base-7B"
    assert spec.data.dataset == "simplescaling/s1K-1.1"


def test_scientific_notation_is_a_float_and_overrides_apply(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\ntrain:\n  learning_rate: 1e-5\n")
    spec = load_spec(path, ["train.epochs=2", "data.system_prompt=Think step by step.", "model.revision=abc123"])
    assert spec.train.learning_rate == 1e-5
    assert spec.train.epochs == 2
    assert spec.data.system_prompt == "Think step by step."
    assert spec.model.revision == "abc123"


def test_run_dir_defaults_to_runs_name_and_can_be_overridden(tmp_path: Path) -> None:
    path = write(tmp_path, "name: my-job\n")
    assert load_spec(path).run_dir() == Path("runs/my-job")
    assert load_spec(path, ["artifacts.run_dir=/x/y"]).run_dir() == Path("/x/y")


def test_typo_names_file_line_and_suggests_the_close_key(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\ntrain:\n  epochs: 1\n  micro_batch: 2\n")
    error = error_of(path)
    assert error.message == f"unknown key `train.micro_batch` in `{path}:4`"
    assert error.hint == "did you mean `train.micro_batch_size`?"


def test_unknown_top_level_key_lists_nothing_wrong(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "name: t\ndatta:\n  split: train\n"))
    assert error.message.startswith("unknown key `datta` in ")
    assert error.hint == "did you mean `data`?"


def test_wrong_type_names_path_expected_type_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\ndata:\n  max_length: \"2048\"\n")
    error = error_of(path)
    assert error.message == f"`data.max_length` in `{path}:3` must be an integer, got `'2048'`"


def test_unknown_trace_source_lists_the_allowed_values(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\ndata:\n  trace_source: claude\n")
    error = error_of(path)
    assert error.message == f"`data.trace_source` in `{path}:3` must be one of `deepseek` or `gemini`, got `claude`"


def test_bad_override_is_named_by_its_set_flag(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "name: t\n"), ["train.micro_batch_size=0"])
    assert error.message == (
        "`train.micro_batch_size` in `--set train.micro_batch_size=0` must be greater than or equal to 1, got `0`"
    )


def test_malformed_override_says_the_form() -> None:
    with pytest.raises(SpecError) as info:
        parse_override("train.epochs")
    assert info.value.message == "`--set train.epochs` is not of the form `a.b.c=value`"


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "name: t\ntrain:\n  epochz: 1\n  seed: x\n"))
    assert len(error.caused_by) == 1 and error.caused_by[0].startswith("also: ")


def test_missing_name_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  split: train\n")
    assert error_of(path).message == f"`name` is required in `{path}`"
    missing = tmp_path / "nope.yaml"
    assert error_of(missing).message == f"job file `{missing}` does not exist"


def test_invalid_yaml_points_at_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\ndata: [unclosed\n")
    assert error_of(path).message.startswith(f"`{path}:")


def test_cross_field_rule_batch_multiple(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "name: t\ntrain:\n  global_batch_size: 10\n  micro_batch_size: 4\n"))
    assert "must be a multiple of `train.micro_batch_size` (4)" in error.message


def test_schema_is_json_schema_with_every_section_described() -> None:
    schema = spec_json_schema()
    assert set(schema["properties"]) == set(JobSpec.model_fields)
    assert schema["additionalProperties"] is False
    for name, definition in schema["$defs"].items():
        for field, body in definition["properties"].items():
            assert body.get("description"), f"{name}.{field} has no description"
    json.dumps(schema)


def test_a_spec_error_carries_key_path_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ntrain:\n  micro_batch_size: 0\n")
    error = error_of(path)
    assert (error.key, error.path, error.value) == ("train.micro_batch_size", f"{path}:3", 0)
    overridden = error_of(path, ["train.micro_batch_size=2", "data.max_length=abc"])
    assert (overridden.key, overridden.path, overridden.value) == ("data.max_length", None, "abc")
    assert overridden.message == "`data.max_length` in `--set data.max_length=abc` must be an integer, got `abc`"
    missing = error_of(tmp_path / "none.yaml")
    assert (missing.key, missing.path, missing.value) == (None, tmp_path / "none.yaml", None)


def test_sampler_logit_rows_follow_how_the_sampler_proposes() -> None:
    # Reference mode holds the logits of every position of the batch, as Dream's forward does.
    assert SamplerSpec(mode="reference", gen_length=512, temperature=0.7).logit_rows(8, 700) == 8 * 700
    assert SamplerSpec(mode="reference", gen_length=64).logit_rows(2, 100) == 200
    # Greedy top-k fast steps propose for every position of the block at once.
    assert SamplerSpec(mode="fast", gen_length=512, block_length=32).logit_rows(32, 700) == 32 * 32
    assert SamplerSpec(mode="fast", gen_length=16, block_length=32).logit_rows(2, 100) == 2 * 16
    # Other fast settings go in chunks of 256 masked positions.
    assert SamplerSpec(mode="fast", gen_length=512, top_p=0.9).logit_rows(32, 700) == 256
    assert SamplerSpec(mode="fast", gen_length=64, temperature=0.5).logit_rows(2, 100) == 128


def test_cuda_graphs_pad_prompts_to_a_multiple_of_64() -> None:
    assert [SamplerSpec().padded_prompt_length(n) for n in (1, 64, 65, 150)] == [64, 64, 128, 192]
    assert SamplerSpec(cuda_graphs=False).padded_prompt_length(150) == 150
