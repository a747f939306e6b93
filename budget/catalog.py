"""GPU prices: SkyPilot's local catalog when it exists, else the shipped, dated snapshot.

Input: `~/.sky/catalogs/v8/<cloud>/vms.csv` (root `$SKY_RUNTIME_DIR` if set, else `$HOME`;
skypilot.md §8: USD/hour, columns read by name since their order differs per cloud), or
`budget/data/prices.csv`. Output: `Prices`, the cheapest offer per (cloud, GPU, count, spot),
the source and its date. Known-bad catalog fields are skipped, never trusted: Vast's
`SpotPrice` (0.00 on every row), RunPod's `GpuInfo` memory (GB stored as MiB), empty AWS
prices (capacity blocks), fractional AWS GPU counts (g6f slices), ARM hosts (GH200) and GCP,
whose GPU is priced in a row apart from its host VM.
"""

from __future__ import annotations

import ast
import csv
import math
import os
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

from budget.gpus import DATA_DIR, catalog_gpu
from dream_job.errors import BudgetError

COUNTS = (1, 2, 4, 8)
SNAPSHOT = DATA_DIR / "prices.csv"


@dataclass(frozen=True)
class Offer:
    """One way to rent `count` GPUs: a machine type on a cloud, on-demand or spot."""

    cloud: str
    instance_type: str
    accelerator: str  # the catalog's name, what `sky launch --gpus` takes
    gpu: str  # canonical name in budget/data/gpus.csv
    count: int
    spot: bool
    usd_per_hour: float
    region: str
    host_mem_gib: float | None  # None when unknown or a catalog placeholder


@dataclass(frozen=True)
class Prices:
    """The offers and where they came from."""

    offers: list[Offer]
    source: str
    date: date
    notes: list[str] = field(default_factory=list)


def default_catalog_dir() -> Path:
    """Return where SkyPilot caches its catalog: `$SKY_RUNTIME_DIR` or `$HOME`, then `.sky/catalogs/v8`."""
    root = os.environ.get("SKY_RUNTIME_DIR") or str(Path.home())
    return Path(root) / ".sky" / "catalogs" / "v8"


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _gpu_memory_mib(gpu_info: str | None) -> float | None:
    """Read the first GPU's `MemoryInfo.SizeInMiB` from a catalog `GpuInfo` (a Python-dict string)."""
    try:
        info = ast.literal_eval(gpu_info or "")
        return float(info["Gpus"][0]["MemoryInfo"]["SizeInMiB"])
    except (ValueError, SyntaxError, KeyError, IndexError, TypeError):
        return None


def parse_vms_csv(path: Path, cloud: str) -> tuple[list[Offer], int]:
    """Return the usable offers of one SkyPilot `vms.csv` and how many GPU rows were not usable.

    Rows are skipped when the GPU is not in our table, the count is fractional or not 1/2/4/8,
    the host is ARM, or the price is missing; Vast spot prices are always dropped.
    """
    offers, skipped = [], 0
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            accelerator = (row.get("AcceleratorName") or "").strip()
            count = _number(row.get("AcceleratorCount"))
            if not accelerator or count is None or count <= 0:
                continue  # host-only rows (GCP) and CPU instances
            gpu_info = row.get("GpuInfo") or row.get("GPUInfo")
            memory = None if cloud == "runpod" else _gpu_memory_mib(gpu_info)
            gpu = catalog_gpu(accelerator, cloud=cloud, instance_type=row.get("InstanceType", ""), memory_mib=memory)
            arch = (row.get("Arch") or "").lower()
            if gpu is None or count != int(count) or int(count) not in COUNTS or arch in ("arm64", "aarch64"):
                skipped += 1
                continue
            host = _number(row.get("MemoryGiB"))
            if cloud == "vast":
                host = None  # Vast's vCPU/memory columns are fixed 32/64 placeholders
            prices = [(False, _number(row.get("Price")))]
            if cloud != "vast":
                prices.append((True, _number(row.get("SpotPrice"))))
            for spot, price in prices:
                if price is None or price <= 0:
                    continue
                offers.append(Offer(
                    cloud=cloud, instance_type=row.get("InstanceType", ""), accelerator=accelerator, gpu=gpu,
                    count=int(count), spot=spot, usd_per_hour=price, region=row.get("Region", "") or "",
                    host_mem_gib=host,
                ))
    return offers, skipped


def _cheapest(offers: list[Offer]) -> list[Offer]:
    """Keep the cheapest offer per (cloud, GPU, accelerator name, count, spot)."""
    best: dict[tuple[str, str, str, int, bool], Offer] = {}
    for offer in offers:
        key = (offer.cloud, offer.gpu, offer.accelerator, offer.count, offer.spot)
        if key not in best or offer.usd_per_hour < best[key].usd_per_hour:
            best[key] = offer
    return sorted(best.values(), key=lambda o: (o.gpu, o.count, o.cloud, o.spot))


def _file_date(path: Path) -> date:
    return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc).date()


def load_catalog(folder: Path, *, clouds: list[str], today: date, max_age_days: int) -> Prices:
    """Read SkyPilot's local catalog folder.

    Raises:
        BudgetError: No `vms.csv` with a usable GPU offer (empty catalog), a requested cloud has
            no file, or a file is older than `max_age_days` (stale catalog).
    """
    files = {p.parent.name: p for p in sorted(folder.glob("*/vms.csv")) if p.parent.name != "common"}
    hint_snapshot = f"refresh it with `sky gpus list`, or move `{folder}` away to use the shipped price snapshot"
    for cloud in clouds:
        if cloud not in files:
            raise BudgetError(
                f"cloud `{cloud}` in `budget.clouds` has no prices in the SkyPilot catalog `{folder}`",
                hint=f"fetch them with `sky gpus list --infra {cloud}`; clouds there: "
                + (", ".join(f"`{c}`" for c in files) or "none"),
            )
    selected = {c: p for c, p in files.items() if not clouds or c in clouds}
    offers, notes, skipped = [], [], 0
    for cloud, path in selected.items():
        age = (today - _file_date(path)).days
        if age > max_age_days:
            raise BudgetError(
                f"SkyPilot catalog `{path}` is {age} days old, older than `budget.max_catalog_age_days` "
                f"({max_age_days})",
                hint=f"refresh it with `sky gpus list --infra {cloud}`, or raise the limit with "
                f"`--set budget.max_catalog_age_days={age}`",
            )
        if cloud == "gcp":
            notes.append("GCP skipped: its catalog prices GPUs apart from their host VMs")
            continue
        cloud_offers, cloud_skipped = parse_vms_csv(path, cloud)
        offers += cloud_offers
        skipped += cloud_skipped
    if not offers:
        raise BudgetError(f"the SkyPilot catalog `{folder}` holds no GPU offer we can price", hint=hint_snapshot)
    if skipped:
        notes.append(f"{skipped} catalog rows skipped (GPU not in budget/data/gpus.csv, fractional or odd count, ARM)")
    if "vast" in selected:
        notes.append("Vast spot prices ignored (the catalog lists 0.00); Vast host RAM unknown")
    oldest = min(_file_date(p) for p in selected.values())
    source = f"SkyPilot catalog {folder} ({', '.join(selected)})"
    return Prices(offers=_cheapest(offers), source=source, date=oldest, notes=notes)


def load_snapshot(*, clouds: list[str]) -> Prices:
    """Read the shipped price snapshot `budget/data/prices.csv` (dated by its `read_on` column)."""
    offers, dates = [], set()
    with open(SNAPSHOT, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if clouds and row["cloud"] not in clouds:
                continue
            dates.add(date.fromisoformat(row["read_on"]))
            host = _number(row["host_mem_gib"])
            for spot, price in ((False, _number(row["usd_per_hour"])), (True, _number(row["spot_usd_per_hour"]))):
                if price is not None and price > 0:
                    offers.append(Offer(
                        cloud=row["cloud"], instance_type=row["instance_type"], accelerator=row["accelerator"],
                        gpu=row["gpu"], count=int(row["count"]), spot=spot, usd_per_hour=price,
                        region=row["region"], host_mem_gib=host,
                    ))
    if not offers:
        raise BudgetError(
            f"the shipped price snapshot has no offers on `budget.clouds` {clouds}",
            hint="snapshot clouds: `runpod`, `vast`, `lambda`, `aws`",
        )
    return Prices(
        offers=_cheapest(offers), source="snapshot budget/data/prices.csv (skypilot-catalog, indicative)",
        date=min(dates), notes=["prices from the shipped snapshot; run `sky gpus list` once for live prices"],
    )


def load_prices(catalog_dir: Path | None, *, clouds: list[str], today: date, max_age_days: int) -> Prices:
    """Return prices from SkyPilot's catalog folder when it exists, else from the shipped snapshot.

    Args:
        catalog_dir: The catalog folder; None means `default_catalog_dir()`.
        clouds: Only these clouds (empty: all).
        today: The date staleness is measured against.
        max_age_days: Oldest catalog file accepted.
    """
    folder = catalog_dir if catalog_dir is not None else default_catalog_dir()
    if folder.is_dir():
        return load_catalog(folder, clouds=clouds, today=today, max_age_days=max_age_days)
    return load_snapshot(clouds=clouds)
