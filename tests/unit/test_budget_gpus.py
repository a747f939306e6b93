"""The GPU table is the one home of GPU facts; a CUDA device name maps to a row only exactly."""

from __future__ import annotations

import pytest

from budget.flops import peak_flops
from budget.gpus import gpu_for_cuda_name


@pytest.mark.parametrize(("device_name", "tflops"), [
    ("NVIDIA H100 80GB HBM3", 989.0),  # SXM5 (NVIDIA H100 datasheet: 989 dense bf16)
    ("NVIDIA H100 PCIe", 756.0),  # PCIe: 756, not the SXM part's 989
    ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA GeForce RTX 4090", 165.2),
])
def test_peak_flops_reads_the_gpu_table_by_exact_cuda_name(device_name: str, tflops: float) -> None:
    assert peak_flops(device_name) == tflops * 1e12


@pytest.mark.parametrize("device_name", ["NVIDIA H100 NVL", "H100", "nvidia h100 80gb hbm3", "NVIDIA H100"])
def test_an_unknown_cuda_name_has_no_peak(device_name: str) -> None:
    assert peak_flops(device_name) is None
    assert gpu_for_cuda_name(device_name) is None


def test_cuda_names_pick_the_row_of_the_part() -> None:
    assert gpu_for_cuda_name("NVIDIA H100 PCIe").name == "H100-PCIE"
    assert gpu_for_cuda_name("NVIDIA A100-PCIE-40GB").name == "A100"
    assert gpu_for_cuda_name("NVIDIA A100-SXM4-80GB").vram_gib == 80.0
