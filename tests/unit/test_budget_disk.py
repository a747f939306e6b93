"""The run's disk need against hand-computed bytes (Dream 7B, jobs/dream-s1k.yaml: 2 kept checkpoints)."""

from __future__ import annotations

import pytest

from budget import disk_need_bytes
from budget.shape import DREAM_7B
from dream_job.spec import load_spec
from tests.conftest import REPO

P = 7_615_616_512  # dream.md §4: every parameter of Dream 7B
JOB = REPO / "jobs" / "dream-s1k.yaml"


def test_full_downloads_the_base_writes_the_export_and_three_checkpoints() -> None:
    spec = load_spec(JOB)
    assert spec.train.keep_checkpoints == 2
    # bf16 base download 2P + bf16 export 2P + (2 kept + 1 being written) x (fp32 master 4P + AdamW m, v 8P).
    assert disk_need_bytes(spec, DREAM_7B, downloads_base=True) == 2 * P + 2 * P + 3 * 12 * P == 304_624_660_480
    assert disk_need_bytes(spec, DREAM_7B, downloads_base=False) == 2 * P + 3 * 12 * P


def test_lora_checkpoints_hold_the_frozen_base_too() -> None:
    spec = load_spec(JOB, ["train.method=lora"])
    adapters = 64 * 2_523_136  # rank 64 on all seven linears: 161,480,704 parameters
    # The DCP checkpoint saves the whole model state dict (bf16 base, 2P) plus fp32 adapters and their AdamW m, v.
    assert disk_need_bytes(spec, DREAM_7B, downloads_base=False) == 2 * P + 3 * (2 * P + 12 * adapters)


def test_full_8bit_checkpoints_hold_bf16_weights_and_8bit_states() -> None:
    spec = load_spec(JOB, ["train.method=full_8bit"])
    # bf16 weights 2P + torchao's 8-bit AdamW at 2.05 B/param (calibration.toml [memory]).
    assert disk_need_bytes(spec, DREAM_7B, downloads_base=False) == pytest.approx(2 * P + 3 * (2 + 2.05) * P)
