"""Price sources: SkyPilot catalog CSVs (their real column layouts and known-bad fields) and the snapshot."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import date
from pathlib import Path

import pytest

from budget.catalog import catalog_file_date, guard_usd_per_hour, load_prices, parse_vms_csv
from budget.gpus import catalog_gpu, resolve_gpu
from dream_job.errors import BudgetError

TODAY = date(2026, 11, 24)
# Every file date below is set by the test (os.utime), never taken from the wall clock.
NOON = time.mktime((2026, 11, 24, 12, 0, 0, 0, 0, -1))


def gpu_info(name: str, mib: int, count: int = 1) -> str:
    # SkyPilot stores GpuInfo as a Python-dict string (single quotes), not JSON.
    return ('"{\'Gpus\': [{\'Name\': \'%s\', \'Manufacturer\': \'NVIDIA\', \'Count\': %d.0, '
            '\'MemoryInfo\': {\'SizeInMiB\': %d}}], \'TotalGpuMemoryInMiB\': %d}"' % (name, count, mib, mib * count))


# Column orders as the v8 catalogs write them (skypilot.md §8); a few real rows each.
RUNPOD = "\n".join([
    "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Region,SpotPrice,Price,AvailabilityZone,GpuInfo",
    # RunPod writes GB into SizeInMiB (24 for a 24 GB card): must not be read as VRAM.
    f"1x_RTX4090_SECURE,RTX4090,1,5,29,CA,0.29,0.59,CA-MTL-1,{gpu_info('RTX4090', 24)}",
    f"1x_RTX4090_SECURE,RTX4090,1,5,29,US,0.35,0.69,US-TX-3,{gpu_info('RTX4090', 24)}",
    f"2x_H100-SXM_SECURE,H100-SXM,2,32,250,US,6.58,6.58,US-KS-2,{gpu_info('H100-SXM', 80, 2)}",
    f"3x_H200-SXM_SECURE,H200-SXM,3,48,564,US,13.77,13.77,US-KS-2,{gpu_info('H200-SXM', 141, 3)}",
])
VAST = "\n".join([
    "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region",
    # Vast: SpotPrice 0.00 on every row (bogus), vCPU/memory fixed 32/64 placeholders.
    f'1x-RTX_4090-32-65536,RTX4090,1,32,64,{gpu_info("RTX_4090", 24564)},0.40,0.00,"Germany, DE, EU"',
    # Vast labels an 80 GB A100 PCIe `A100`; its GpuInfo memory tells it apart.
    f'1x-A100-32-65536,A100,1,32,64,{gpu_info("A100_PCIE", 81920)},0.87,0.00,"United States, US, NA"',
    # Vast's GpuInfo holds the machine's total (SkyPilot's fetcher writes `gpu_total_ram`): two 40 GB cards.
    f'2x-A100_SXM4-32-65536,A100,2,32,64,{gpu_info("A100", 81920)},1.40,0.00,"United States, US, NA"',
])
AWS = "\n".join([
    "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone,"
    "Arch",
    "g6.xlarge,L4,1,4,16,,0.8048,0.4012,us-east-1,us-east-1a,x86_64",
    "g6.xlarge,L4,1,4,16,,0.8048,0.3901,us-east-1,us-east-1b,x86_64",
    "g6f.large,L4,0.125,2,8,,0.2,0.1,us-east-1,us-east-1a,x86_64",  # fractional GPU slice
    "p5e.48xlarge,H200,8,192,2048,,,18.7,us-east-2,us-east-2a,x86_64",  # capacity blocks: empty Price
    "p4de.24xlarge,A100-80GB,8,96,1152,,27.45,8.65,us-east-1,us-east-1c,x86_64",
    "p4de.24xlarge,A100-80GB,8,96,1152,,27.45,9.97,us-east-1,us-east-1a,x86_64",  # a dearer zone of the region
    "g5g.xlarge,T4G,1,4,8,,0.42,0.2,us-east-1,us-east-1a,arm64",  # GPU not in our table, ARM
])
LAMBDA = "\n".join([
    "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,Region,GpuInfo,SpotPrice",
    "gpu_1x_h100_pcie,H100,1,26,200,3.29,us-east-1,,",
    "gpu_1x_gh200,GH200,1,64,432,2.29,us-east-3,,",  # not in the table (ARM host)
])


def write_catalog(root: Path, **clouds: str) -> Path:
    folder = root / ".sky" / "catalogs" / "v8"
    (folder / "common").mkdir(parents=True)
    (folder / "common" / "accelerators.csv").write_text("AcceleratorName,Clouds\n")
    for cloud, text in clouds.items():
        (folder / cloud).mkdir()
        (folder / cloud / "vms.csv").write_text(text + "\n")
        os.utime(folder / cloud / "vms.csv", (NOON, NOON))
    return folder


def by_key(offers):
    return {(o.cloud, o.gpu, o.count, o.spot): o for o in offers}


def test_catalog_rows_become_the_cheapest_offer_per_gpu_count_and_kind(tmp_path: Path) -> None:
    folder = write_catalog(tmp_path, runpod=RUNPOD, vast=VAST, aws=AWS, **{"lambda": LAMBDA})
    prices = load_prices(folder, clouds=["runpod", "vast", "aws", "lambda"])
    offers = by_key(prices.offers)
    assert offers[("runpod", "RTX4090", 1, False)].usd_per_hour == 0.59  # cheaper of two regions
    assert offers[("runpod", "RTX4090", 1, True)].usd_per_hour == 0.29
    assert offers[("runpod", "RTX4090", 1, False)].host_mem_gib == 29
    assert offers[("runpod", "H100", 2, False)].accelerator == "H100-SXM"  # what `--gpus` takes
    assert ("runpod", "H200", 3, False) not in offers  # 3 GPUs is not a count we plan for
    # Vast: on-demand kept, the 0.00 spot dropped, host RAM placeholder ignored, 80 GB A100 recognised.
    assert offers[("vast", "RTX4090", 1, False)].usd_per_hour == 0.40
    assert ("vast", "RTX4090", 1, True) not in offers
    assert offers[("vast", "RTX4090", 1, False)].host_mem_gib is None
    assert offers[("vast", "A100-80GB", 1, False)].instance_type == "1x-A100-32-65536"
    assert offers[("vast", "A100", 2, False)].gpu_mem_gib == 40.0  # 81920 MiB over 2 cards, not one 80 GB card
    # AWS: cheapest AZ's spot, no fractional slice, no on-demand without a Price, SXM A100 by type.
    assert offers[("aws", "L4", 1, True)].usd_per_hour == pytest.approx(0.3901)
    assert ("aws", "H200", 8, False) not in offers and offers[("aws", "H200", 8, True)].usd_per_hour == 18.7
    p4de = offers[("aws", "A100-80GB-SXM", 8, True)]
    assert (p4de.usd_per_hour, p4de.zone, p4de.max_usd_per_hour_in_region) == (8.65, "us-east-1c", 9.97)
    assert guard_usd_per_hour(p4de, managed=False) == 8.65  # a cluster pinned to us-east-1c
    assert guard_usd_per_hour(p4de, managed=True) == 9.97  # a managed job may recover into us-east-1a
    assert all(o.count in (1, 2, 4, 8) for o in prices.offers)
    # Lambda: the PCIe H100 by its instance type; no spot; GH200 skipped.
    assert ("lambda", "H100-PCIE", 1, False) in offers and ("lambda", "H100-PCIE", 1, True) not in offers
    assert not any(o.gpu == "GH200" for o in prices.offers)
    assert prices.date == TODAY and all(o.priced_on == TODAY for o in prices.offers)
    assert "SkyPilot catalog" in prices.source
    assert any("Vast spot prices ignored" in n for n in prices.notes)


def test_runpod_gpu_memory_field_is_never_used_for_vram() -> None:
    # RunPod's 24 ("GB" in a MiB field) would make an 80 GB A100 a 40 GB one if trusted.
    assert catalog_gpu("A100-80GB", cloud="runpod", instance_type="1x_A100-80GB_SECURE", memory_mib=None) == "A100-80GB"
    assert catalog_gpu("A100", cloud="vast", instance_type="x", memory_mib=81920) == "A100-80GB"
    assert catalog_gpu("A100", cloud="lambda", instance_type="gpu_1x_a100", memory_mib=None) == "A100"
    assert resolve_gpu("RTX4090").vram_gib == pytest.approx(24564 / 1024)


def test_parse_counts_unusable_gpu_rows(tmp_path: Path) -> None:
    (tmp_path / "vms.csv").write_text(AWS + "\n")
    offers, skipped = parse_vms_csv(tmp_path / "vms.csv", "aws", priced_on=TODAY)
    assert skipped == 2  # the fractional g6f slice and the ARM T4G
    assert len(offers) == 9  # g6.xlarge on-demand + spot in two AZs, p5e spot only, p4de in two AZs
    assert sorted({(o.instance_type, o.spot) for o in offers}) == [
        ("g6.xlarge", False), ("g6.xlarge", True), ("p4de.24xlarge", False), ("p4de.24xlarge", True),
        ("p5e.48xlarge", True),
    ]


def test_missing_catalog_folder_falls_back_to_the_dated_snapshot(tmp_path: Path) -> None:
    prices = load_prices(tmp_path / "no-such-folder", clouds=[])
    assert prices.source.startswith("snapshot budget/data/prices.csv")
    assert prices.date == date(2026, 11, 24)
    offers = by_key(prices.offers)
    assert offers[("runpod", "A100-80GB", 1, False)].usd_per_hour == 1.39
    assert not any(o.cloud == "vast" and o.spot for o in prices.offers)
    p4d = offers[("aws", "A100", 8, True)]  # one zone's $2.47; the region's dearest zone $8.19
    assert (p4d.usd_per_hour, p4d.max_usd_per_hour_in_region, p4d.zone) == (2.47, 8.19, None)
    assert guard_usd_per_hour(p4d, managed=False) == 8.19  # no zone to pin: the dearest counts


def test_a_failed_first_fetch_leaves_a_lock_only_and_the_snapshot_is_used_with_a_note(tmp_path: Path) -> None:
    folder = tmp_path / ".sky" / "catalogs" / "v8"
    (folder / ".meta" / "vast").mkdir(parents=True)
    (folder / ".meta" / "vast" / "vms.csv.lock").write_text("")
    prices = load_prices(folder, clouds=["vast", "runpod"])
    assert prices.source == "snapshot budget/data/prices.csv (vast, runpod; skypilot-catalog, indicative)"
    assert {o.cloud for o in prices.offers} == {"vast", "runpod"}
    assert prices.notes[0] == (
        f"`vast`: the SkyPilot catalog has no file; the shipped snapshot (2026-11-24) is used; refresh: "
        f"`rm -f {folder / 'vast' / 'vms.csv'} && sky gpus list --infra vast`")


def test_a_cloud_with_an_unusable_file_falls_back_while_others_keep_the_catalog(tmp_path: Path) -> None:
    folder = write_catalog(tmp_path, runpod=RUNPOD, vast="InstanceType,AcceleratorName\n")
    prices = load_prices(folder, clouds=["runpod", "vast"])
    assert {o.cloud for o in prices.offers if o.priced_on == TODAY} >= {"runpod"}
    assert prices.source.startswith(f"SkyPilot catalog {folder} (runpod); snapshot budget/data/prices.csv (vast")
    assert any(n.startswith("`vast`: the SkyPilot catalog holds no GPU offer we can price") for n in prices.notes)


def test_a_failed_refresh_does_not_make_old_prices_look_new(tmp_path: Path) -> None:
    folder = write_catalog(tmp_path, runpod=RUNPOD)
    csv_path, md5 = folder / "runpod" / "vms.csv", folder / ".meta" / "runpod" / "vms.csv.md5"
    md5.parent.mkdir(parents=True)
    md5.write_text(hashlib.md5(csv_path.read_bytes()).hexdigest())
    fetched = time.mktime((2026, 10, 1, 12, 0, 0, 0, 0, -1))
    os.utime(md5, (fetched, fetched))  # SkyPilot writes the md5 only when a fetch succeeds
    os.utime(csv_path, (NOON, NOON))  # ... and touches the CSV when a later fetch fails
    assert catalog_file_date(folder, "runpod") == date(2026, 10, 1)
    assert load_prices(folder, clouds=["runpod"]).date == date(2026, 10, 1)
    md5.write_text("0" * 32)  # the user edited the CSV since: SkyPilot never refreshes it, its mtime is its date
    assert catalog_file_date(folder, "runpod") == TODAY


def test_a_required_cloud_without_any_prices(tmp_path: Path) -> None:
    folder = write_catalog(tmp_path, runpod=RUNPOD)
    with pytest.raises(BudgetError) as raised:
        load_prices(folder, clouds=["azure"])
    assert raised.value.message == (
        f"cloud `azure` in `budget.clouds` has no prices: the SkyPilot catalog `{folder}` has no file and the "
        "shipped snapshot has none")
    assert f"`rm -f {folder / 'azure' / 'vms.csv'} && sky gpus list --infra azure`" in raised.value.hint


def test_unknown_gpu_name_is_one_clear_sentence() -> None:
    with pytest.raises(BudgetError) as raised:
        resolve_gpu("RTX5090")
    assert raised.value.message == "unknown GPU `RTX5090` in `budget.gpus`"
    assert "`RTX4090`" in raised.value.hint
    assert resolve_gpu("h100-sxm").name == "H100"
    assert resolve_gpu("a100 80gb").name == "A100-80GB"
