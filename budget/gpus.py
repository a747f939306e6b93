"""The GPU table: VRAM, dense bf16 peak, memory and link bandwidth of each GPU we can price.

Input: `budget/data/gpus.csv` (datasheet figures, each row cites its source), the one home of
GPU facts. Output: `GpuSpec` records keyed by a canonical name, the mapping from SkyPilot catalog
accelerator names (`H100-SXM`, `A100-80GB`, Vast's 80 GB `A100`, Lambda's PCIe `H100`) to those
names, and the exact CUDA device names (`torch.cuda.get_device_name`, column `cuda_names`) of each
row for the trainer's MFU. VRAM comes from this table, never from a catalog: RunPod's catalog
stores GB in its `SizeInMiB` field.
"""

from __future__ import annotations

import csv
import difflib
import functools
from dataclasses import dataclass
from pathlib import Path

from dream_job.errors import BudgetError

DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model.

    Attributes:
        name: Canonical name (`H100`, `A100-80GB`, `RTX4090`, ...).
        aliases: Names a user may write for it (matched ignoring case, spaces, `-` and `_`).
        cuda_names: Its names as CUDA reports them (`NVIDIA H100 80GB HBM3`), matched exactly.
        vram_gib: Memory a process can see (nvidia-smi total), GiB.
        bf16_tflops: Dense bf16 tensor-core peak (no sparsity), TFLOP/s.
        mem_bw_gb_s: HBM/GDDR bandwidth, GB/s.
        link_gb_s: Effective GPU-to-GPU collective bandwidth inside one machine, GB/s.
        pcie_gb_s: Effective host-to-GPU copy bandwidth, GB/s.
        source: Where the figures come from.
    """

    name: str
    aliases: tuple[str, ...]
    cuda_names: tuple[str, ...]
    vram_gib: float
    bf16_tflops: float
    mem_bw_gb_s: float
    link_gb_s: float
    pcie_gb_s: float
    source: str


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


@functools.cache
def gpu_table() -> dict[str, GpuSpec]:
    """Return the GPU table keyed by canonical name (read once from `budget/data/gpus.csv`)."""
    table = {}
    with open(DATA_DIR / "gpus.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            table[row["name"]] = GpuSpec(
                name=row["name"],
                aliases=_names(row["aliases"]),
                cuda_names=_names(row["cuda_names"]),
                vram_gib=int(row["vram_mib"]) / 1024,
                bf16_tflops=float(row["bf16_tflops"]),
                mem_bw_gb_s=float(row["mem_bw_gb_s"]),
                link_gb_s=float(row["link_gb_s"]),
                pcie_gb_s=float(row["pcie_gb_s"]),
                source=row["source"],
            )
    return table


def _names(cell: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in cell.split(";") if name.strip())


def gpu_for_cuda_name(device_name: str) -> GpuSpec | None:
    """Return the table row whose `cuda_names` holds exactly `device_name`, or None for an unknown GPU.

    No substring or fuzzy matching: an `NVIDIA H100 PCIe` must never get the SXM part's peak.
    """
    return next((spec for spec in gpu_table().values() if device_name in spec.cuda_names), None)


def _alias_index() -> dict[str, str]:
    index = {}
    for spec in gpu_table().values():
        for alias in (spec.name, *spec.aliases):
            index[_key(alias)] = spec.name
    return index


def resolve_gpu(name: str, *, key_path: str = "budget.gpus") -> GpuSpec:
    """Return the table entry for a user-written GPU name (case, spaces, `-` and `_` ignored).

    Raises:
        BudgetError: The name is not in the table; the hint lists the close and the known names.
    """
    found = _alias_index().get(_key(name))
    if found is None:
        known = sorted(gpu_table())
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.5)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise BudgetError(
            f"unknown GPU `{name}` in `{key_path}`",
            hint=hint + "known GPUs: " + ", ".join(f"`{k}`" for k in known),
        )
    return gpu_table()[found]


def catalog_gpu(accelerator: str, *, cloud: str, instance_type: str, memory_mib: float | None) -> str | None:
    """Map a SkyPilot catalog row's accelerator to a canonical GPU name, or None when not in the table.

    Args:
        accelerator: The catalog's `AcceleratorName`.
        cloud: Catalog cloud (lower case).
        instance_type: The catalog's `InstanceType` (tells PCIe from SXM where the name does not).
        memory_mib: GPU memory from `GpuInfo` when the cloud reports it correctly (not RunPod).
    """
    key, itype = _key(accelerator), instance_type.lower()
    if key == "h100" and "pcie" in itype:
        return "H100-PCIE"
    if key == "a100" and memory_mib is not None and memory_mib >= 60_000:
        key = "a10080gb"  # Vast labels its 80 GB A100 PCIe `A100`
    if key == "a10080gb" and ("sxm" in itype or cloud == "aws"):
        return "A100-80GB-SXM"  # Lambda `*_sxm4`, AWS p4de
    return _alias_index().get(key)
