"""Where SkyPilot's jobs controller runs for a managed job, why, and its price per hour.

SkyPilot 0.14.1 places the controller of `sky jobs launch` on the task's own cloud unless
`jobs.controller.resources` says otherwise (`sky/utils/controller_utils.py`,
`get_controller_resources`). That default fails for the GPU marketplaces: every Vast and RunPod
machine is a GPU box (no `cpus: 4+` CPU machine in their catalogs), and Lambda cannot host
controllers at all. So a managed launch always names the controller's place and machine
(`budget.controller_infra`, `budget.controller_instance_type`) in a SkyPilot project config
file, and the estimate prices that machine from the catalog row SkyPilot will read for it
(else from the shipped, dated `budget/data/controller_prices.csv`).

Input: those two spec fields and SkyPilot's catalog folder. Output: `ControllerOffer` (place,
machine, price, its date and source) and `controller_config()`, the config file's content.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from budget.catalog import catalog_file_date, default_catalog_dir, refresh_hint
from budget.gpus import DATA_DIR
from dream_job.errors import BudgetError

SNAPSHOT = DATA_DIR / "controller_prices.csv"
# SkyPilot's own defaults for the controller (`sky/jobs/constants.py` CONTROLLER_RESOURCES), kept
# next to the instance type so the config asks for the same machine size SkyPilot would.
CONTROLLER_DISK_GB = 50
# Clouds whose SkyPilot catalog has no CPU-only machine to host a controller, or which cannot host
# one (`HOST_CONTROLLERS` in their `_CLOUD_UNSUPPORTED_FEATURES`), and why, for the printed reason.
NO_CONTROLLER_HOST = {
    "vast": "every Vast machine is a GPU box, so SkyPilot's default (the task's own cloud) finds no "
            "controller machine (`cpus=4+`)",
    "runpod": "every RunPod machine is a GPU pod, so SkyPilot's default (the task's own cloud) finds no "
              "controller machine (`cpus=4+`)",
    "shadeform": "Shadeform cannot host SkyPilot controllers",
    "lambda": "Lambda cannot host SkyPilot controllers, so SkyPilot would put it on any enabled cloud",
}
# The ten minutes the controller idles after the job ends before it stops (SkyPilot's default
# `jobs.controller.resources.autostop`), counted in the estimate.
IDLE_HOURS = 10 / 60


@dataclass(frozen=True)
class ControllerOffer:
    """The jobs controller's machine and its on-demand price.

    Attributes:
        cloud: SkyPilot cloud name, lower case.
        region: The region it is pinned to ('' when the infra names only a cloud).
        instance_type: The machine (`budget.controller_instance_type`).
        usd_per_hour: Its price there (the cheapest region's when no region is pinned).
        priced_on: Date of that price.
        source: Where the price came from (a catalog file or the shipped snapshot).
    """

    cloud: str
    region: str
    instance_type: str
    usd_per_hour: float
    priced_on: date
    source: str

    @property
    def infra(self) -> str:
        """SkyPilot's `infra` for the controller: `cloud` or `cloud/region`."""
        return "/".join(p for p in (self.cloud, self.region) if p)


def split_infra(infra: str) -> tuple[str, str]:
    """Return (cloud, region) of an `infra` string `cloud[/region]` (cloud lower-cased)."""
    cloud, _, region = infra.strip().partition("/")
    return cloud.lower(), region.split("/")[0]


def _cheapest(rows: list[tuple[str, float]], region: str) -> tuple[str, float] | None:
    matching = [(r, p) for r, p in rows if not region or r == region]
    return min(matching, key=lambda rp: (rp[1], rp[0])) if matching else None


def controller_offer(infra: str, instance_type: str, catalog_dir: Path | None = None) -> ControllerOffer:
    """Return the controller machine `instance_type` on `infra` with its price.

    The price is the on-demand `Price` of SkyPilot's catalog row for that instance type in
    that region (`<catalog>/<cloud>/vms.csv`); when SkyPilot has no catalog file for the cloud,
    the shipped snapshot's row.

    Raises:
        BudgetError: Neither source prices `instance_type` in that place.
    """
    folder = catalog_dir if catalog_dir is not None else default_catalog_dir()
    cloud, region = split_infra(infra)
    path = folder / cloud / "vms.csv"
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(row.get("Region", ""), float(row["Price"])) for row in csv.DictReader(f)
                    if row.get("InstanceType") == instance_type and (row.get("Price") or "").strip()]
        if (found := _cheapest(rows, region)) is not None:
            return ControllerOffer(cloud=cloud, region=region or found[0], instance_type=instance_type,
                                   usd_per_hour=found[1], priced_on=catalog_file_date(folder, cloud),
                                   source=f"SkyPilot catalog {path}")
        raise BudgetError(
            f"`budget.controller_instance_type` `{instance_type}` has no price in `{region or cloud}` in SkyPilot's "
            f"catalog `{path}`, so the jobs controller cannot be placed there",
            hint=f"name a machine that catalog lists (e.g. `--set budget.controller_instance_type=m6i.xlarge`), or "
                 f"refresh it with {refresh_hint(folder, cloud)}")
    with open(SNAPSHOT, newline="", encoding="utf-8") as f:
        shipped = [row for row in csv.DictReader(f) if row["cloud"] == cloud and row["instance_type"] == instance_type]
    found = _cheapest([(row["region"], float(row["usd_per_hour"])) for row in shipped], region)
    if found is None:
        raise BudgetError(
            f"no price for the jobs controller `{instance_type}` on `{infra}`: SkyPilot has no `{cloud}` catalog in "
            f"`{folder}` and the shipped `{SNAPSHOT.name}` does not list it",
            hint=f"fetch SkyPilot's catalog with `sky gpus list --infra {cloud}`, or set "
                 "`budget.controller_infra` and `budget.controller_instance_type` to a listed pair "
                 "(`aws/us-east-1`, `m6i.xlarge`)")
    row = next(r for r in shipped if (r["region"], float(r["usd_per_hour"])) == found)
    return ControllerOffer(cloud=cloud, region=found[0], instance_type=instance_type, usd_per_hour=found[1],
                           priced_on=date.fromisoformat(row["read_on"]), source=f"snapshot {SNAPSHOT.name} "
                           f"({row['source']})")


def placement_reason(task_cloud: str, controller: ControllerOffer) -> str:
    """Say why the controller runs on `controller`'s place for a task on `task_cloud` (one clause)."""
    if task_cloud in NO_CONTROLLER_HOST:
        return f"set by `budget.controller_infra`: {NO_CONTROLLER_HOST[task_cloud]}"
    if task_cloud == controller.cloud:
        return "set by `budget.controller_infra`, on the task's own cloud as SkyPilot's default would be"
    return f"set by `budget.controller_infra` instead of SkyPilot's default (the task's cloud, `{task_cloud}`)"


def controller_config(controller: ControllerOffer) -> dict[str, Any]:
    """Return the SkyPilot config (`~/.sky/config.yaml` schema) that places the jobs controller."""
    return {"jobs": {"controller": {"resources": {"infra": controller.infra,
                                                   "instance_type": controller.instance_type,
                                                   "disk_size": CONTROLLER_DISK_GB}}}}
