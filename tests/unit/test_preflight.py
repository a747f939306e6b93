"""Container preflight: secrets named before any work, the plan checked against the GPUs the job got."""

from __future__ import annotations

import types

import pytest
import torch

from dream_job.errors import DreamJobError
from dream_job.preflight import _check_gpu_memory, preflight
from dream_job.spec import load_spec
from tests.conftest import REPO

REAL_JOB = REPO / "jobs" / "dream-s1k.yaml"


@pytest.fixture
def one_a100_80gb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda *_: types.SimpleNamespace(total_memory=80 * 2**30))


def test_full_fp32_adamw_on_one_80gb_gpu_is_refused_with_what_fits(one_a100_80gb: None) -> None:
    with pytest.raises(DreamJobError) as info:
        _check_gpu_memory(load_spec(REAL_JOB), 1)
    assert info.value.message.startswith("`train.method` `full` needs about ")
    assert info.value.message.endswith("GiB per GPU on this machine's 1x NVIDIA A100-SXM4-80GB (80 GiB each)")
    assert info.value.hint.startswith("`--set train.method=")


def test_switch_takes_the_first_method_that_fits(one_a100_80gb: None) -> None:
    spec = load_spec(REAL_JOB, ["train.on_memory_mismatch=switch"])
    assert _check_gpu_memory(spec, 1) in ("full_offload", "full_8bit", "lora")
    assert _check_gpu_memory(load_spec(REAL_JOB, ["train.method=lora"]), 1) == "lora"


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
        "missing secret `HF_TOKEN` (for the `hf://` destination) and AWS credentials "
        "`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (for the `s3://` destination) in the environment")
    assert not (tmp_path / "run").exists()  # nothing was started
