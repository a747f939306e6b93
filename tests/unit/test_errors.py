"""Errors: one hierarchy whose class gives the exit code, fields for key/path/value/hint, one rendering."""

from __future__ import annotations

import ast
import pytest

from dream_job import errors
from dream_job.commands.failures import error_lines, known_failure
from tests.conftest import REPO


@pytest.mark.parametrize(("kind", "code"), [
    (errors.DreamJobError, 1), (errors.SpecError, 1), (errors.UsageError, 2), (errors.InputError, 1),
    (errors.DataError, 1), (errors.CheckpointError, 1), (errors.ArtifactError, 1), (errors.DiskFullError, 1),
    (errors.BudgetError, 1), (errors.RunDirBusyError, 1), (errors.StageError, 1), (errors.TransientError, 3), (errors.Interrupted, 130),
    (errors.InternalError, 4),
])
def test_each_kind_has_its_exit_code(kind: type[errors.DreamJobError], code: int) -> None:
    assert kind("x").exit_code == code


def test_an_explicit_exit_code_wins_over_the_kinds() -> None:
    assert errors.ArtifactError("upload failed", exit_code=errors.EXIT_TRANSIENT).exit_code == 3
    assert errors.ArtifactError("upload failed").exit_code == 1  # the class default is untouched


def test_every_kind_is_a_dream_job_error_with_one_base() -> None:
    from dream_job.model.weights import WeightsMismatchError

    for kind in [*vars(errors).values(), WeightsMismatchError]:
        if isinstance(kind, type) and issubclass(kind, errors.DreamJobError) and kind is not errors.DreamJobError:
            assert len(kind.__bases__) == 1, kind


def test_error_lines_align_the_fields_under_the_sentence_and_end_with_the_hint() -> None:
    exc = errors.SpecError("`train.epochs` in `job.yaml:3` must be ≥ 1, got `0`", key="train.epochs",
                           path="job.yaml:3", value=0, caused_by=["also: `name` is required"],
                           hint="set it: `--set train.epochs=1`")
    assert error_lines(exc) == [
        "error: `train.epochs` in `job.yaml:3` must be ≥ 1, got `0`",
        "  key:       train.epochs",
        "  path:      job.yaml:3",
        "  value:     0",
        "  caused by: also: `name` is required",
        "",
        "hint: set it: `--set train.epochs=1`",
    ]


def test_error_lines_of_a_bare_sentence_and_of_list_values() -> None:
    assert error_lines(errors.InputError("no log yet")) == ["error: no log yet"]
    assert error_lines(errors.SpecError("bad betas", value=[0.9])) == ["error: bad betas", "  value: [0.9]"]


def test_ctrl_c_and_a_missing_extra_become_errors_and_a_bug_does_not() -> None:
    interrupted = known_failure(KeyboardInterrupt())
    assert isinstance(interrupted, errors.Interrupted) and interrupted.exit_code == 130
    missing = known_failure(ModuleNotFoundError("No module named 'peft'", name="peft"))
    assert isinstance(missing, errors.InputError)
    assert missing.message == "this command needs the package `peft`, which this install of dream-job lacks"
    assert known_failure(ZeroDivisionError("division by zero")) is None
    assert known_failure(ModuleNotFoundError("No module named 'nonexistent'", name="nonexistent")) is None


def test_no_module_raises_or_returns_the_bare_base_class() -> None:
    bare = []
    for path in sorted((REPO / "dream_job").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            made = node.exc if isinstance(node, ast.Raise) else node.value if isinstance(node, ast.Return) else None
            if isinstance(made, ast.Call) and ast.unparse(made.func).rpartition(".")[2] == "DreamJobError":
                bare.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert bare == []

