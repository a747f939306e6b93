"""GPU prices: SkyPilot's local catalog per cloud, else the shipped, dated snapshot for that cloud.

Input: `~/.sky/catalogs/v8/<cloud>/vms.csv` (root `$SKY_RUNTIME_DIR` if set, else `$HOME`;
skypilot.md §8: USD/hour, columns read by name since their order differs per cloud), or
`budget/data/prices.csv`. Output: `Prices`, the cheapest place (region, zone) per (cloud,
instance type, spot), each offer dated, and where the prices came from.

Known-bad catalog fields are skipped, never trusted: Vast's `SpotPrice` (0.00 on every row),
RunPod's `GpuInfo` memory (GB stored as MiB), empty AWS prices (capacity blocks), fractional AWS
GPU counts (g6f slices), ARM hosts (GH200) and GCP, whose GPU is priced in a row apart from its
host VM. Vast's `GpuInfo` memory is the machine's total (SkyPilot's fetcher stores
`gpu_total_ram`), so it is divided by the GPU count.

AWS zones: the catalog's `AvailabilityZone` holds zone *ids* (`use1-az1`), which SkyPilot rejects
in `--infra` (`Invalid zone`); the id-to-name mapping is per AWS account, and SkyPilot caches it
as `aws/az_mappings-<account hash>.csv` next to the catalog (`sky/catalog/aws_catalog.py`). Ids are
turned into names with the newest such file, rows of zones it does not list are dropped (as
SkyPilot drops them); without one an AWS offer names no zone, so a launch pins its region only.

Dates: a file SkyPilot fetched has a `.meta/<cloud>/vms.csv.md5`, written only when a fetch
succeeds; its mtime is the prices' date. The CSV's own mtime is not: a failed refresh touches it
(`os.utime`) and keeps the old prices. A CSV without a matching md5 was placed by hand and is never
refreshed by SkyPilot, so its mtime is its date.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import math
import os
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from pathlib import Path

from budget.gpus import DATA_DIR, catalog_gpu, gpu_table
from dream_job.errors import BudgetError

COUNTS = (1, 2, 4, 8)
SNAPSHOT = DATA_DIR / "prices.csv"
# Clouds without FUSE cannot mount a bucket (SkyPilot PR #3389; `STORAGE_MOUNTING` is in their
# `_CLOUD_UNSUPPORTED_FEATURES`): a run there keeps its run dir on the machine's disk.
NO_FUSE_CLOUDS = frozenset({"runpod", "vast", "shadeform"})


@dataclass(frozen=True)
class Offer:
    """One machine to rent: an instance type in one place on a cloud, on-demand or spot.

    Attributes:
        cloud: SkyPilot cloud name, lower case.
        instance_type: The catalog's `InstanceType`; what `sky launch -t` takes.
        accelerator: The catalog's accelerator name; what `sky launch --gpus` takes.
        gpu: Canonical name in budget/data/gpus.csv.
        count: GPUs per machine.
        gpu_mem_gib: Memory per GPU (from our GPU table, which the catalog row was mapped to).
        spot: Spot/preemptible price.
        usd_per_hour: The whole machine's price in this place.
        region: The catalog's region ('' when the source does not say).
        zone: The zone this price is for, None when the cloud prices per region.
        max_usd_per_hour_in_region: Highest price of this instance type and kind among the
            region's zones (what a managed job recovering inside the region may pay).
        host_mem_gib: Host RAM; None when unknown or a catalog placeholder.
        priced_on: Date of the price.
    """

    cloud: str
    instance_type: str
    accelerator: str
    gpu: str
    count: int
    gpu_mem_gib: float
    spot: bool
    usd_per_hour: float
    region: str
    zone: str | None
    max_usd_per_hour_in_region: float
    host_mem_gib: float | None
    priced_on: date


@dataclass(frozen=True)
class Prices:
    """The offers and where they came from (`date`: the oldest price among them)."""

    offers: list[Offer]
    source: str
    date: date
    notes: list[str] = field(default_factory=list)


def pins_zone(region: str, zone: str | None, *, managed: bool) -> bool:
    """Return whether a launch pins the offer's zone: a cluster does where the offer names one; a
    managed job keeps its region's zones open to recover into."""
    return bool(region and zone) and not managed


def guard_usd_per_hour(offer: Offer, *, managed: bool) -> float:
    """Return the hourly price a run of `offer` is budgeted at (the in-job guard's price).

    A pinned zone (`pins_zone`) is paid at its own price; otherwise the run may land in any zone
    of the region, so the dearest counts.
    """
    pinned = pins_zone(offer.region, offer.zone, managed=managed)
    return offer.usd_per_hour if pinned else offer.max_usd_per_hour_in_region


def default_catalog_dir() -> Path:
    """Return where SkyPilot caches its catalog: `$SKY_RUNTIME_DIR` or `$HOME`, then `.sky/catalogs/v8`."""
    root = os.environ.get("SKY_RUNTIME_DIR") or str(Path.home())
    return Path(root) / ".sky" / "catalogs" / "v8"


def refresh_hint(folder: Path, cloud: str) -> str:
    """Return the command that makes SkyPilot fetch `cloud`'s prices anew.

    Deleting the file first works for every cloud: SkyPilot re-fetches Vast (and other
    marketplaces) only when the file is missing, and never overwrites a file without its md5.
    """
    return f"`rm -f {folder / cloud / 'vms.csv'} && sky gpus list --infra {cloud}`"


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _gpu_memory_mib(gpu_info: str | None, cloud: str, count: float) -> float | None:
    """Return memory per GPU from a catalog `GpuInfo` (a Python-dict string), None where untrusted."""
    if cloud == "runpod":
        return None  # GB written into the MiB field
    try:
        info = ast.literal_eval(gpu_info or "")
        size = float(info["Gpus"][0]["MemoryInfo"]["SizeInMiB"])
    except (ValueError, SyntaxError, KeyError, IndexError, TypeError):
        return None
    return size / count if cloud == "vast" and count else size


def _file_date(path: Path) -> date:
    return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc).date()


def catalog_file_date(folder: Path, cloud: str) -> date:
    """Return the date of `cloud`'s prices in SkyPilot's catalog folder (see the module docstring)."""
    csv_path = folder / cloud / "vms.csv"
    md5_path = folder / ".meta" / cloud / "vms.csv.md5"
    if md5_path.is_file():
        digest = hashlib.md5(csv_path.read_bytes(), usedforsecurity=False).hexdigest()
        if md5_path.read_text(encoding="utf-8").strip() == digest:
            return _file_date(md5_path)
    return _file_date(csv_path)


def aws_zone_names(folder: Path) -> dict[str, str] | None:
    """Return SkyPilot's AWS zone id -> zone name mapping (its newest `aws/az_mappings-*.csv`), None when absent."""
    files = sorted((folder / "aws").glob("az_mappings-*.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    with open(files[-1], newline="", encoding="utf-8") as f:
        return {row["AvailabilityZone"]: row["AvailabilityZoneName"] for row in csv.DictReader(f)
                if row.get("AvailabilityZone") and row.get("AvailabilityZoneName")}


def zone_name(zone: str | None, region: str, names: dict[str, str] | None) -> tuple[bool, str | None]:
    """Return (usable, zone name) for a catalog zone: a zone name as is; an AWS zone id through `names`.

    An id that `names` does not list is not usable (SkyPilot drops its rows: the account has no
    such zone); without `names` an id gives no zone at all (the offer is pinned to its region).
    """
    if not zone or zone.startswith(region):
        return True, zone or None
    if names is None:
        return True, None
    return (zone in names), names.get(zone)


def listed_in_catalog(folder: Path, cloud: str, instance_type: str, region: str) -> bool | None:
    """Return whether SkyPilot's catalog for `cloud` lists `instance_type` (in `region` when given); None: no file."""
    path = folder / cloud / "vms.csv"
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        return any(row.get("InstanceType") == instance_type and (not region or row.get("Region") == region)
                   for row in csv.DictReader(f))


def parse_vms_csv(path: Path, cloud: str, *, priced_on: date,
                  zone_names: dict[str, str] | None = None) -> tuple[list[Offer], int]:
    """Return every usable (row, kind) of one SkyPilot `vms.csv` and how many GPU rows were not usable.

    Rows are skipped when the GPU is not in our table, the count is fractional or not 1/2/4/8,
    the host is ARM, or the price is missing; Vast spot prices are always dropped. Zones go
    through `zone_name` (AWS zone ids become this account's zone names, `zone_names`).
    """
    offers, skipped = [], 0
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            accelerator = (row.get("AcceleratorName") or "").strip()
            count = _number(row.get("AcceleratorCount"))
            if not accelerator or count is None or count <= 0:
                continue  # host-only rows (GCP) and CPU instances
            memory = _gpu_memory_mib(row.get("GpuInfo") or row.get("GPUInfo"), cloud, count)
            gpu = catalog_gpu(accelerator, cloud=cloud, instance_type=row.get("InstanceType", ""), memory_mib=memory)
            arch = (row.get("Arch") or "").lower()
            if gpu is None or count != int(count) or int(count) not in COUNTS or arch in ("arm64", "aarch64"):
                skipped += 1
                continue
            host = None if cloud == "vast" else _number(row.get("MemoryGiB"))  # Vast: fixed placeholders
            region = row.get("Region", "") or ""
            usable, zone = zone_name((row.get("AvailabilityZone") or "").strip(), region, zone_names)
            if not usable:
                continue
            prices = [(False, _number(row.get("Price")))]
            if cloud != "vast":
                prices.append((True, _number(row.get("SpotPrice"))))
            for spot, price in prices:
                if price is None or price <= 0:
                    continue
                offers.append(Offer(
                    cloud=cloud, instance_type=row.get("InstanceType", ""), accelerator=accelerator, gpu=gpu,
                    count=int(count), gpu_mem_gib=gpu_table()[gpu].vram_gib, spot=spot, usd_per_hour=price,
                    region=region, zone=zone,
                    max_usd_per_hour_in_region=price, host_mem_gib=host, priced_on=priced_on,
                ))
    return offers, skipped


def cheapest_places(offers: list[Offer]) -> list[Offer]:
    """Keep the cheapest place per (cloud, instance type, spot), with its region's highest price."""
    ceiling: dict[tuple[str, str, bool, str], float] = {}
    for o in offers:
        key = (o.cloud, o.instance_type, o.spot, o.region)
        ceiling[key] = max(ceiling.get(key, 0.0), o.max_usd_per_hour_in_region)
    best: dict[tuple[str, str, bool], Offer] = {}
    for o in offers:
        key = (o.cloud, o.instance_type, o.spot)
        if key not in best or (o.usd_per_hour, o.region, o.zone or "") < (
                best[key].usd_per_hour, best[key].region, best[key].zone or ""):
            best[key] = o
    return sorted((replace(o, max_usd_per_hour_in_region=ceiling[(o.cloud, o.instance_type, o.spot, o.region)])
                   for o in best.values()), key=lambda o: (o.gpu, o.count, o.cloud, o.spot, o.instance_type))


def _snapshot_offers() -> list[Offer]:
    offers = []
    with open(SNAPSHOT, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            on = date.fromisoformat(row["read_on"])
            kinds = ((False, _number(row["usd_per_hour"]), _number(row["usd_per_hour"])),
                     (True, _number(row["spot_usd_per_hour"]), _number(row["spot_usd_per_hour_max"])))
            for spot, price, highest in kinds:
                if price is None or price <= 0:
                    continue
                offers.append(Offer(
                    cloud=row["cloud"], instance_type=row["instance_type"], accelerator=row["accelerator"],
                    gpu=row["gpu"], count=int(row["count"]), gpu_mem_gib=gpu_table()[row["gpu"]].vram_gib,
                    spot=spot, usd_per_hour=price, region=row["region"], zone=row["zone"] or None,
                    max_usd_per_hour_in_region=max(price, highest or price),
                    host_mem_gib=_number(row["host_mem_gib"]), priced_on=on,
                ))
    return offers


def load_prices(catalog_dir: Path | None, *, clouds: list[str]) -> Prices:
    """Return the offers of SkyPilot's catalog per cloud, and the shipped snapshot's for clouds it lacks.

    A cloud's catalog file that is missing, unreadable or holds no usable offer (e.g. a failed
    first fetch leaves only a lock file) falls back to the snapshot for that cloud, with a note.

    Args:
        catalog_dir: The catalog folder; None means `default_catalog_dir()`.
        clouds: Only these clouds (empty: every cloud of the catalog and the snapshot).

    Raises:
        BudgetError: A cloud in `clouds` has prices in neither the catalog nor the snapshot.
    """
    folder = catalog_dir if catalog_dir is not None else default_catalog_dir()
    snapshot = _snapshot_offers()
    snapshot_clouds = sorted({o.cloud for o in snapshot})
    files = {p.parent.name: p for p in sorted(folder.glob("*/vms.csv")) if p.parent.name != "common"}
    zone_names = aws_zone_names(folder)
    wanted = clouds or sorted(set(files) | set(snapshot_clouds))
    offers, notes, from_catalog, from_snapshot, skipped = [], [], [], [], 0
    for cloud in wanted:
        if cloud == "gcp":
            notes.append("GCP skipped: its catalog prices GPUs apart from their host VMs")
            continue
        why = "has no file"
        if cloud in files:
            try:
                cloud_offers, cloud_skipped = parse_vms_csv(files[cloud], cloud,
                                                            priced_on=catalog_file_date(folder, cloud),
                                                            zone_names=zone_names)
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                cloud_offers, cloud_skipped, why = [], 0, f"is unreadable ({type(exc).__name__})"
            if cloud_offers:
                offers += cloud_offers
                skipped += cloud_skipped
                from_catalog.append(cloud)
                continue
            why = why if why != "has no file" else "holds no GPU offer we can price"
        shipped = [o for o in snapshot if o.cloud == cloud]
        if not shipped:
            if clouds:
                raise BudgetError(
                    f"cloud `{cloud}` in `budget.clouds` has no prices: the SkyPilot catalog `{folder}` {why} and "
                    "the shipped snapshot has none",
                    hint=f"fetch them with {refresh_hint(folder, cloud)}, or choose among the snapshot's clouds: "
                    + ", ".join(f"`{c}`" for c in snapshot_clouds),
                )
            continue
        offers += shipped
        from_snapshot.append(cloud)
        if folder.is_dir():
            notes.append(f"`{cloud}`: the SkyPilot catalog {why}; the shipped snapshot "
                         f"({min(o.priced_on for o in shipped)}) is used; refresh: {refresh_hint(folder, cloud)}")
    if not offers:
        raise BudgetError(f"no GPU prices for `budget.clouds` {clouds} in `{folder}` or the shipped snapshot",
                          hint="leave `budget.clouds` empty to consider every cloud")
    if skipped:
        notes.append(f"{skipped} catalog rows skipped (GPU not in budget/data/gpus.csv, fractional or odd count, ARM)")
    if "aws" in from_catalog and zone_names is None:
        notes.append("AWS zones: SkyPilot has not mapped this account's zone ids to zone names yet (no "
                     f"`{folder / 'aws'}/az_mappings-*.csv`; `sky check aws` then `sky gpus list --infra aws` writes "
                     "it): AWS offers are pinned to their region only")
    if "vast" in from_catalog:
        notes.append("Vast spot prices ignored (the catalog lists 0.00); Vast host RAM unknown")
    sources = []
    if from_catalog:
        sources.append(f"SkyPilot catalog {folder} ({', '.join(from_catalog)})")
    if from_snapshot:
        sources.append(f"snapshot budget/data/prices.csv ({', '.join(from_snapshot)}; skypilot-catalog, indicative)")
    return Prices(offers=cheapest_places(offers), source="; ".join(sources),
                  date=min(o.priced_on for o in offers), notes=notes)
