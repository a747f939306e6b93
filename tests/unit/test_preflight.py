"""Container preflight: secrets named before any work, the plan checked against the GPUs the job got."""

from __future__ import annotations

import types

import pytest
import torch

from dream_job.errors import DreamJobError
from dream_job.preflight import check_gpu_memory, preflight
from dream_job.spec import load_spec
from tests.conftest import REPO

REAL_JOB = REPO / "jobs" / "dream-s1k.yaml"
# The memory model's per-GPU peaks of jobs/dream-s1k.yaml on one GPU (budget.plan_memory; its
# terms are checked against hand arithmetic in test_budget_memory.py): `full` 156.6 GiB,
# `full_offload` 23.8, `full_8bit` 59.8, `lora` 38.0.


def one_gpu(monkeypatch: pytest.MonkeyPatch, name: str, total_gib: float) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda *_: types.SimpleNamespace(total_memory=total_gib * 2**30))


def test_full_fp32_adamw_on_one_80gb_gpu_is_refused_with_the_first_method_that_fits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    one_gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", 80)
    with pytest.raises(DreamJobError) as info:
        check_gpu_memory(load_spec(REAL_JOB), 1)
    assert info.value.message == ("`train.method` `full` needs about 157 GiB per GPU on this machine's "
                                  "1x NVIDIA A100-SXM4-80GB (80 GiB each)")
    assert info.value.hint == ("`--set train.method=full_offload` fits (or `--set train.on_memory_mismatch=switch`); "
                               "`dream-job estimate` lists the GPUs that fit")


def test_switch_takes_the_first_method_that_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    one_gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", 80)
    # `full` (156.6 GiB) does not fit 80 GiB; the same recipe offloaded (23.8 GiB) comes first.
    assert check_gpu_memory(load_spec(REAL_JOB, ["train.on_memory_mismatch=switch"]), 1) == "full_offload"
    assert check_gpu_memory(load_spec(REAL_JOB, ["train.method=lora"]), 1) == "lora"
    # On a 44.7 GiB L40S, `full_8bit` (59.8 GiB) falls back to its only fallback, LoRA (38.0 GiB).
    one_gpu(monkeypatch, "NVIDIA L40S", 44.7)
    spec = load_spec(REAL_JOB, ["train.method=full_8bit", "train.on_memory_mismatch=switch"])
    assert check_gpu_memory(spec, 1) == "lora"


def test_nothing_fits_a_20gb_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    one_gpu(monkeypatch, "NVIDIA A10G", 20)
    with pytest.raises(DreamJobError) as info:
        check_gpu_memory(load_spec(REAL_JOB, ["train.on_memory_mismatch=switch"]), 1)
    assert info.value.message == ("`train.method` `full` needs about 157 GiB per GPU on this machine's "
                                  "1x NVIDIA A10G (20 GiB each)")
    assert info.value.hint == "`dream-job estimate` lists the GPUs that fit"


def test_missing_secrets_are_named_before_anything_runs(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    spec = load_spec(REPO / "jobs" / "smoke.yaml", [
        f"artifacts.run_dir={tmp_path / 'run'}", "artifacts.destinations=[hf://me/model, s3://bucket/x]"])
    with pytest.raises(DreamJobError) as info:
        preflight(spec)
    assert info.value.message == (
        "missing secret `HF_TOKEN` (for the `hf://me/model` destination), `AWS_ACCESS_KEY_ID` (for the "
        "`s3://bucket/x` destination), `AWS_SECRET_ACCESS_KEY` (for the `s3://bucket/x` destination) in the "
        "environment")
    assert info.value.hint == ("pass them at launch: `sky launch --secret HF_TOKEN --secret AWS_ACCESS_KEY_ID "
                               "--secret AWS_SECRET_ACCESS_KEY sky.yaml`")
    assert not (tmp_path / "run").exists()  # nothing was started
    # With the token set, only the AWS keys are named.
    monkeypatch.setenv("HF_TOKEN", "x" * 12)
    with pytest.raises(DreamJobError) as info:
        preflight(spec)
    assert info.value.message.startswith("missing secret `AWS_ACCESS_KEY_ID` (for the `s3://bucket/x` destination)")


def test_eval_processes_follow_the_gpus_and_more_than_there_are_fails_before_training(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dream_job.eval.processes import eval_processes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert eval_processes(load_spec(REAL_JOB)) == 2  # null: one per visible GPU
    assert eval_processes(load_spec(REAL_JOB, ["eval.processes=1"])) == 1
    assert eval_processes(load_spec(REAL_JOB, ["train.device=cpu"])) == 1
    assert eval_processes(load_spec(REAL_JOB, ["train.device=cpu", "eval.processes=3"])) == 3
    with pytest.raises(DreamJobError) as info:
        preflight(load_spec(REAL_JOB, ["eval.processes=4"]))
    assert info.value.message == "`eval.processes` is 4 but 2 GPU(s) are visible"
    assert info.value.hint == "set `--set eval.processes=2` or less, or leave it null (one per GPU)"
