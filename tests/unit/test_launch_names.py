"""Names SkyPilot accepts, the jobs controller's place and price, the run bucket (fast, no SkyPilot).

Zone ids vs names (SkyPilot rejects `--infra aws/us-east-1/use1-az1`: `Invalid zone`), stale
instance names (a current Vast catalog calls the 80 GB A100 `1x-A100_PCIE-32-65536`), the
controller priced from the catalog row SkyPilot will read, and the run bucket sentence.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml

from budget.catalog import aws_zone_names, listed_in_catalog, load_prices, parse_vms_csv, zone_name
from budget.controller import controller_config, controller_offer, placement_reason
from dream_job.errors import BudgetError
from dream_job.launch import LaunchError, plan_launch
from dream_job.launch.planner import check_catalog_name
from dream_job.launch.template import no_bucket_sentence
from dream_job.spec import load_spec
from tests.conftest import REPO

NOON = time.mktime((2026, 11, 24, 12, 0, 0, 0, 0, -1))
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
# Rows as SkyPilot's v8 AWS catalog writes them: zone *ids* (account-independent), one row per zone.
AWS = """\
InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone,Arch
p4d.24xlarge,A100,8,96.0,1152.0,,21.96,2.47,us-east-1,use1-az6,x86_64
p4d.24xlarge,A100,8,96.0,1152.0,,21.96,7.88,us-east-1,use1-az1,x86_64
p4d.24xlarge,A100,8,96.0,1152.0,,21.96,8.19,us-east-1,use1-az2,x86_64
p4d.24xlarge,A100,8,96.0,1152.0,,21.96,1.10,us-east-1,use1-az3,x86_64
m6i.xlarge,,,4.0,16.0,,0.192,0.0668,us-east-1,use1-az1,x86_64
m6i.xlarge,,,4.0,16.0,,0.192,0.0710,us-east-1,use1-az2,x86_64
m6i.xlarge,,,4.0,16.0,,0.214,0.0900,us-west-1,usw1-az1,x86_64
"""
# What SkyPilot writes once it asked EC2 (`describe_availability_zones`) for this account's names;
# `use1-az3` is not listed: the account has no such zone, SkyPilot drops its rows.
MAPPING = """\
AvailabilityZone,AvailabilityZoneName
use1-az6,us-east-1a
use1-az1,us-east-1b
use1-az2,us-east-1c
usw1-az1,us-west-1b
"""
A100_INFO = "{'Gpus': [{'Name': 'A100', 'Count': 1, 'MemoryInfo': {'SizeInMiB': 81920}}], 'TotalGpuMemoryInMiB': 81920}"
VAST = ("InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region\n"
        f'1x-A100_PCIE-32-65536,A100,1,32,64.0,"{A100_INFO}",0.87,0.00,"Oklahoma, US, NA"\n')


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    os.utime(path, (NOON, NOON))
    return path


# --- zone ids and zone names ------------------------------------------------------------------


def test_zone_ids_become_this_accounts_zone_names_and_unmapped_zones_are_dropped(tmp_path: Path) -> None:
    path = _write(tmp_path, "aws/vms.csv", AWS)
    _write(tmp_path, "aws/az_mappings-1a2b3c4d.csv", MAPPING)
    names = aws_zone_names(tmp_path)
    assert names == {"use1-az6": "us-east-1a", "use1-az1": "us-east-1b", "use1-az2": "us-east-1c",
                     "usw1-az1": "us-west-1b"}
    offers, _ = parse_vms_csv(path, "aws", priced_on=date(2026, 11, 24), zone_names=names)
    spot = sorted((o.zone, o.usd_per_hour) for o in offers if o.spot)
    # use1-az3 ($1.10) is not this account's zone: gone, as SkyPilot drops it; the rest carry names.
    assert spot == [("us-east-1a", 2.47), ("us-east-1b", 7.88), ("us-east-1c", 8.19)]
    prices = load_prices(tmp_path, clouds=["aws"])
    (p4d,) = [o for o in prices.offers if o.spot]
    assert (p4d.zone, p4d.usd_per_hour, p4d.max_usd_per_hour_in_region) == ("us-east-1a", 2.47, 8.19)


def test_without_skypilots_mapping_an_aws_offer_names_no_zone_and_says_why(tmp_path: Path) -> None:
    _write(tmp_path, "aws/vms.csv", AWS)
    prices = load_prices(tmp_path, clouds=["aws"])
    assert {o.zone for o in prices.offers} == {None}  # never `use1-az6`, which SkyPilot rejects
    (p4d,) = [o for o in prices.offers if o.spot]
    assert (p4d.usd_per_hour, p4d.max_usd_per_hour_in_region) == (1.10, 8.19)
    assert any("AWS offers are pinned to their region only" in note for note in prices.notes)


@pytest.mark.parametrize(("zone", "region", "names", "expected"), [
    ("us-east-1a", "us-east-1", None, (True, "us-east-1a")),  # already a name
    ("use1-az1", "us-east-1", None, (True, None)),  # an id, no mapping: no zone
    ("use1-az1", "us-east-1", {"use1-az1": "us-east-1d"}, (True, "us-east-1d")),
    ("use1-az9", "us-east-1", {"use1-az1": "us-east-1d"}, (False, None)),  # not the account's
    ("US-KS-2", "US", None, (True, "US-KS-2")),  # RunPod names its zones itself... after its region code
    ("", "us-east-1", None, (True, None)),
])
def test_zone_name(zone: str, region: str, names: dict[str, str] | None, expected: tuple[bool, str | None]) -> None:
    assert zone_name(zone, region, names) == expected


def test_the_newest_mapping_file_wins(tmp_path: Path) -> None:
    _write(tmp_path, "aws/az_mappings-old.csv", "AvailabilityZone,AvailabilityZoneName\nuse1-az1,us-east-1f\n")
    newer = _write(tmp_path, "aws/az_mappings-new.csv", "AvailabilityZone,AvailabilityZoneName\nuse1-az1,us-east-1b\n")
    os.utime(newer, (NOON + 60, NOON + 60))
    assert aws_zone_names(tmp_path) == {"use1-az1": "us-east-1b"}
    assert aws_zone_names(tmp_path / "nowhere") is None


# --- stale instance names --------------------------------------------------------------------


def test_a_stale_vast_name_is_refused_with_the_refresh_command(tmp_path: Path) -> None:
    _write(tmp_path, "vast/vms.csv", VAST)
    assert listed_in_catalog(tmp_path, "vast", "1x-A100_PCIE-32-65536", "") is True
    assert listed_in_catalog(tmp_path, "vast", "1x-A100-32-65536", "") is False
    assert listed_in_catalog(tmp_path, "runpod", "1x_A100-80GB_SECURE", "") is None  # no file

    class Stale:  # the estimate's choice, as the old snapshot named it
        cloud, instance_type, region = "vast", "1x-A100-32-65536", ""

    with pytest.raises(LaunchError) as raised:
        check_catalog_name(Stale(), tmp_path, for_launch=True)
    assert raised.value.message == (
        f"not launched: `1x-A100-32-65536` is not in SkyPilot's `vast` catalog `{tmp_path / 'vast' / 'vms.csv'}`: "
        "the name the estimate priced is stale")
    assert raised.value.hint == (f"refresh the catalog and estimate again: `rm -f {tmp_path / 'vast' / 'vms.csv'} "
                                 "&& sky gpus list --infra vast`")
    note = check_catalog_name(Stale(), tmp_path, for_launch=False)  # the estimate shows it instead
    assert note is not None and note.startswith("`1x-A100-32-65536` is not in SkyPilot's `vast` catalog")


def test_the_shipped_snapshot_uses_the_current_vast_name() -> None:
    text = (REPO / "budget" / "data" / "prices.csv").read_text(encoding="utf-8")
    assert "vast,1x-A100_PCIE-32-65536,A100,A100-80GB,1,0.87," in text
    assert "\nvast,1x-A100-32-65536," not in text


# --- the jobs controller -----------------------------------------------------------------------


def test_the_controller_is_priced_from_the_catalog_row_skypilot_will_read(tmp_path: Path) -> None:
    _write(tmp_path, "aws/vms.csv", AWS)
    east = controller_offer("aws/us-east-1", "m6i.xlarge", tmp_path)
    assert (east.infra, east.instance_type, east.usd_per_hour, east.priced_on) == (
        "aws/us-east-1", "m6i.xlarge", 0.192, date(2026, 11, 24))
    assert east.source == f"SkyPilot catalog {tmp_path / 'aws' / 'vms.csv'}"
    assert controller_offer("aws/us-west-1", "m6i.xlarge", tmp_path).usd_per_hour == 0.214
    anywhere = controller_offer("aws", "m6i.xlarge", tmp_path)  # no region: the cheapest one
    assert (anywhere.region, anywhere.usd_per_hour) == ("us-east-1", 0.192)
    with pytest.raises(BudgetError) as raised:
        controller_offer("aws/us-east-1", "m7i.large", tmp_path)
    assert raised.value.message.startswith("`budget.controller_instance_type` `m7i.large` has no price in `us-east-1`")
    # No AWS catalog yet: the shipped, dated row.
    shipped = controller_offer("aws/us-east-1", "m6i.xlarge", tmp_path / "empty")
    assert (shipped.usd_per_hour, shipped.priced_on) == (0.192, date(2026, 12, 7))
    assert shipped.source.startswith("snapshot controller_prices.csv")


def test_the_controller_config_is_skypilots_schema_and_the_reason_names_the_cloud(tmp_path: Path) -> None:
    _write(tmp_path, "aws/vms.csv", AWS)
    east = controller_offer("aws/us-east-1", "m6i.xlarge", tmp_path)
    assert controller_config(east) == {"jobs": {"controller": {"resources": {
        "infra": "aws/us-east-1", "instance_type": "m6i.xlarge", "disk_size": 50}}}}
    assert "every Vast machine is a GPU box" in placement_reason("vast", east)
    assert "Lambda cannot host SkyPilot controllers" in placement_reason("lambda", east)
    assert placement_reason("aws", east).endswith("on the task's own cloud as SkyPilot's default would be")


def test_a_managed_job_without_a_controller_place_is_rejected_with_the_fix(in_repo: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    from budget import NoOfferError, estimate

    monkeypatch.setenv("HOME", str(tmp_path))
    spec = load_spec("jobs/dream-s1k.yaml", ["budget.controller_infra=null", "budget.max_catalog_age_days=36500"])
    with pytest.raises(NoOfferError) as raised:
        estimate(spec, data_report=None)
    assert any("`budget.controller_infra` is null: set it" in c.reason for c in raised.value.estimate.candidates)
    cluster = load_spec("jobs/dream-s1k.yaml", ["budget.controller_infra=null", "budget.managed_job=false",
                                                "budget.use_spot=false", "budget.max_cost_yuan=400"])
    result = estimate(cluster, data_report=None)
    assert result.controller is None and result.choice is not None and result.choice.controller_cny == 0


# --- the run bucket ----------------------------------------------------------------------------


def test_the_bucket_sentence_names_the_setting_and_the_flag() -> None:
    assert no_bucket_sentence("lambda") == (
        "no run bucket is set: on `lambda` the run dir lives on an S3 bucket of your own, named before launching "
        "(bucket names are global, so none is shipped); SkyPilot creates it: `export "
        "DREAM_JOB_RUNS_BUCKET=dream-job-runs-<your name>`, or pass `--env RUNS_BUCKET=<name>`")


def test_sky_yaml_ships_no_bucket_name() -> None:
    template = yaml.safe_load((REPO / "sky.yaml").read_text(encoding="utf-8"))
    assert template["envs"]["RUNS_BUCKET"] is None  # SkyPilot refuses a launch that does not name one
    assert template["file_mounts"]["/runs"]["name"] == "${RUNS_BUCKET}"


def test_the_users_bucket_setting_reaches_the_line(in_repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = load_spec("jobs/dream-s1k.yaml", ["budget.clouds=[lambda]", "budget.max_cost_yuan=400"])
    plan = plan_launch(spec, Path("jobs/dream-s1k.yaml"), task_yaml=Path("sky.yaml"), now=NOW,
                       environ={"DREAM_JOB_RUNS_BUCKET": "ada-dream-runs"})
    assert plan.runs_bucket == "ada-dream-runs" and "--env RUNS_BUCKET=ada-dream-runs" in plan.sky_command()
    assert plan.run_dir == f"s3://ada-dream-runs/{plan.run_id}"
