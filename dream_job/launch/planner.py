"""Planning a launch: `plan_launch` decides offer, mode, caps, envs and secrets before SkyPilot is called.

Input: the validated spec, its file, the SkyPilot task template (`sky.yaml`, read as YAML, no
SkyPilot import) and the user's environment. Output: a `LaunchPlan`, a frozen value that names
secrets but never holds their values (those are read from the environment at submit time), and the
run's task file (`template`). Also the checks a launch makes first: secrets, the prices' age, the
instance type's name in SkyPilot's catalog.

Caps, in the order they bite: the in-job budget guard (`dream_job.costs`, from
`DREAM_JOB_USD_PER_HOUR`) stops training early with a checkpoint; `BUDGET_HOURS` (`dream-job task`,
counted from the first start across recoveries) sends SIGTERM, then SIGKILL 10 minutes later, and
ends 15 minutes before the budget is spent (`budget.caps.SHUTDOWN_GRACE_S`: 5 more for the last upload;
the estimate accepts only offers whose hours fit it); in cluster mode the autostop hard limit
(`wait_for: none`) tears the machine down when the budget is spent, whatever runs on it. Managed
jobs get no `wait_for: none`: SkyPilot's jobs controller launches the job's cluster with its own
10-minute autodown and keeps the task's `wait_for`, which would then tear the job down 10 minutes
after every start; the controller downs the cluster when the job ends, and `BUDGET_HOURS` is the cap.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from budget.caps import GRACE_MIN, fitting_budget_cny, run_cap
from budget.catalog import default_catalog_dir, listed_in_catalog, pins_zone, refresh_hint
from budget.controller import placement_reason
from dream_job.credentials import required_secrets
from dream_job.errors import EXIT_USAGE
from dream_job.launch.image import IMAGE_ENV, with_image
from dream_job.launch.payload import SPEC_DIGEST_ENV, priced_spec, spec_digest, spec_text
from dream_job.launch.plan import LaunchError, LaunchPlan, Mode, new_run_id
from dream_job.launch.task import BUDGET_HOURS_ENV, JOB_ENV, USD_PER_HOUR_ENV
from dream_job.launch.template import (BUCKET_PLACEHOLDER, DROPPED_FOR_CLOUD, RUNS_BUCKET_ENV, RUNS_BUCKET_SETTING,
                                       dropped_for, no_bucket_sentence, read_template, runs_mount, template_has,
                                       template_value, write_derived_template, write_project_config)
from dream_job.rundir import RUN_ID_ENV
from dream_job.spec import JobSpec


def check_secrets(needed: Mapping[str, str], environ: Mapping[str, str]) -> None:
    """Raise `LaunchError` naming every required secret missing from `environ` (values are never shown)."""
    missing = [f"`{name}` ({why})" for name, why in needed.items() if not environ.get(name)]
    if missing:
        names = " ".join(f"{name}=..." for name in needed if not environ.get(name))
        raise LaunchError(f"missing secret {', '.join(missing)} in this shell's environment; nothing was launched",
                          hint=f"export it and launch again: `export {names}`")


def _choose(estimate: Any, spot: bool) -> Any:
    if not spot:
        return estimate.choice
    spot_offers = [c for c in estimate.candidates if c.accepted and c.spot]
    if not spot_offers:
        raise LaunchError(f"no spot offer runs `{estimate.job}` within its budget ¥{estimate.budget_cny:g}",
                          hint="launch without `--spot`, or allow spot with `--set budget.use_spot=true`")
    return min(spot_offers, key=lambda c: (round(c.cost_cny, 2), c.hours))


def _estimate(spec: JobSpec, managed: bool, **kwargs: Any) -> Any:
    from budget import estimate

    kwargs.setdefault("data_report", None)
    if spec.budget.managed_job != managed:  # the estimate counts the jobs controller only for managed jobs
        spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"managed_job": managed})})
    return estimate(spec, **kwargs)


def _job_file(spec_path: Path) -> str:
    try:
        return Path(os.path.relpath(spec_path.resolve(), Path.cwd())).as_posix()
    except ValueError:  # another drive (Windows)
        return spec_path.as_posix()


def pinned_place(cloud: str, region: str, zone: str | None, *, pin_zone: bool) -> str:
    """Return SkyPilot's `infra` for an offer: `cloud`, `cloud/region` or `cloud/region/zone`."""
    parts = [cloud] + ([region] if region else []) + ([zone] if region and zone and pin_zone else [])
    return "/".join(parts)


def guard_basis(choice: Any, *, zone_pinned: bool, mode: Mode) -> str:
    """Say why the guard counts `choice.guard_usd_per_hour` (rule: `budget.catalog.guard_usd_per_hour`)."""
    if zone_pinned:
        return f"the price of zone `{choice.zone}`, where the cluster is pinned"
    if choice.guard_usd_per_hour <= choice.usd_per_hour:
        return f"the price in `{choice.region or choice.cloud}`, where the machine is pinned"
    recover = "a managed job may recover into" if mode == "managed" else "SkyPilot may place it in"
    return (f"the highest price among the zones of `{choice.region}` {recover} (the cheapest, "
            f"${choice.usd_per_hour:g}, is what SkyPilot shows)")


def check_catalog_name(choice: Any, catalog_dir: Path | None, *, for_launch: bool) -> str | None:
    """Check the chosen instance type against the catalog SkyPilot will read; return a note for the estimate.

    When SkyPilot has no catalog file for the cloud yet, the name comes from the shipped snapshot:
    the estimate says so, and the launch checks it with SkyPilot itself (`sky_api.check_instance_type`,
    which fetches the catalog as SkyPilot's launch would).

    Raises:
        LaunchError: (launch only) SkyPilot's catalog does not list the name: it is stale.
    """
    folder = catalog_dir if catalog_dir is not None else default_catalog_dir()
    listed = listed_in_catalog(folder, choice.cloud, choice.instance_type, choice.region)
    if listed:
        return None
    if listed is None:
        return (f"SkyPilot has no `{choice.cloud}` catalog in `{folder}` yet: `{choice.instance_type}` is the shipped "
                f"snapshot's name, checked against SkyPilot's own catalog at launch (fetch it now with `sky gpus "
                f"list --infra {choice.cloud}`)")
    where = f" in `{choice.region}`" if choice.region else ""
    message = (f"`{choice.instance_type}`{where} is not in SkyPilot's `{choice.cloud}` catalog "
               f"`{folder / choice.cloud / 'vms.csv'}`: the name the estimate priced is stale")
    hint = f"refresh the catalog and estimate again: {refresh_hint(folder, choice.cloud)}"
    if for_launch:
        raise LaunchError(f"not launched: {message}", hint=hint)
    return f"{message}; {hint}"


def stale_name_error(cloud: str, instance_type: str, catalog_dir: Path | None = None) -> LaunchError:
    """Return the error for an instance type SkyPilot's own catalog does not list (with the refresh command)."""
    folder = catalog_dir if catalog_dir is not None else default_catalog_dir()
    return LaunchError(f"not launched: SkyPilot's `{cloud}` catalog has no instance type `{instance_type}`: the name "
                       "the estimate priced is stale",
                       hint=f"refresh the catalog and estimate again: {refresh_hint(folder, cloud)}")


def check_price_age(estimate: Any, catalog_dir: Path | None) -> None:
    """Raise `LaunchError` when the choice's price is older than `budget.max_catalog_age_days`."""
    warning = estimate.stale_price_warning()
    if warning is None:
        return
    choice = estimate.choice
    fix = refresh_hint(catalog_dir if catalog_dir is not None else default_catalog_dir(), choice.cloud)
    raise LaunchError(f"not launched: the {choice.cloud} {warning}",
                      hint=f"refresh them with {fix}, or accept them with "
                      f"`--set budget.max_catalog_age_days={estimate.price_age_days(choice)}`")


def plan_launch(spec: JobSpec, spec_path: Path, *, task_yaml: Path, mode: Mode | None = None, spot: bool = False,
                envs: list[str] | None = None, secrets: list[str] | None = None,
                environ: Mapping[str, str] | None = None, now: datetime | None = None,
                for_launch: bool = True, **estimate_kwargs: Any) -> LaunchPlan:
    """Estimate the job and decide how to launch it; writes only the derived task file (`.dream-job/<run id>.yaml`).

    `dream-job estimate` calls this too (`for_launch=False`), so the line it prints is the task
    `dream-job launch` builds.

    Args:
        spec: The validated job.
        spec_path: Its file; must lie under the working directory (the task's `workdir`).
        task_yaml: The SkyPilot task template (`sky.yaml`).
        mode: `managed` or `cluster`; None: managed for a spot offer, else `budget.managed_job`.
        spot: Only spot offers.
        envs: Extra `K=V` task envs (e.g. `RUNS_BUCKET=my-bucket`); they override the template's.
        secrets: Extra secret names the job needs, taken from `environ`.
        environ: Where secrets come from (default `os.environ`); only presence is checked here.
        now: Clock for the run id and the age of the prices (default: the system clock).
        for_launch: Check that the secrets are set and the prices fresh (a launch); False names
            the secrets and lets the estimate show old prices with a warning.
        **estimate_kwargs: Passed to `budget.estimate` (`data_report`, `catalog_dir`).

    Returns:
        The plan; `LaunchPlan.lines()` describes it, `LaunchPlan.sky_command()` is its `sky` line.

    Raises:
        LaunchError: A required secret is missing, the job file lies outside the working
            directory, no spot offer fits, the pick outlasts the `BUDGET_HOURS` its budget buys, or the
            chosen price is older than `budget.max_catalog_age_days` (launch only).
        BudgetError: From the estimate (nothing fits, a cloud without prices, ...).
    """
    environ = os.environ if environ is None else environ
    job_file = _job_file(spec_path)
    if job_file.startswith("../") or Path(job_file).is_absolute():
        raise LaunchError(f"job file `{spec_path}` is outside the working directory, so the machine cannot read it",
                          hint="launch from the repo root with a job file under it, e.g. `jobs/my-job.yaml`")
    template = with_image(read_template(task_yaml), environ.get(IMAGE_ENV))
    needed = required_secrets(spec.artifacts.destinations, secrets or [])
    if for_launch:
        check_secrets(needed, environ)
    extra_envs = dict(item.split("=", 1) if "=" in item else (item, environ.get(item, "")) for item in envs or [])

    if now is not None:
        estimate_kwargs.setdefault("now", now.date())
    managed = mode == "managed" if mode else spec.budget.managed_job
    result = _estimate(spec, managed, **estimate_kwargs)
    choice = _choose(result, spot)
    if mode is None and choice.spot and not managed:  # spot offers recover only as managed jobs
        managed = True
        result = _estimate(spec, managed, **estimate_kwargs)
        choice = _choose(result, spot)
    run_mode: Mode = "managed" if managed else "cluster"
    result = dataclasses.replace(result, choice=choice)
    if for_launch:
        check_price_age(result, estimate_kwargs.get("catalog_dir"))

    zone_pinned = pins_zone(choice.region, choice.zone, managed=managed)
    infra = pinned_place(choice.cloud, choice.region, choice.zone, pin_zone=zone_pinned)
    guard_usd, why_guard = choice.guard_usd_per_hour, guard_basis(choice, zone_pinned=zone_pinned, mode=run_mode)
    controller = result.controller if managed else None
    # The estimate accepts only offers whose hours fit this cap (`budget.caps`, same prices): a pick that does
    # not is a bug between the two, and a job its own cap would kill is never launched.
    run_usd = guard_usd + (controller.usd_per_hour if controller else 0.0)
    cap = run_cap(spec.budget.max_cost_yuan, cny_per_usd=spec.budget.cny_per_usd, usd_per_hour=run_usd)
    hard_limit_min, budget_hours = cap.hard_limit_min, cap.budget_hours
    if not cap.fits(choice.hours):
        raise LaunchError(
            f"not launched: `{spec.name}` on {choice.count}x {choice.gpu} ({choice.cloud}) needs {choice.hours:.2f} h "
            f"but `budget.max_cost_yuan` ¥{spec.budget.max_cost_yuan:g} buys {hard_limit_min} min, so "
            f"`BUDGET_HOURS` would stop it at {max(budget_hours, 0):g} h ({GRACE_MIN} min shutdown grace)",
            hint=f"raise it: `--set budget.max_cost_yuan="
                 f"{fitting_budget_cny(choice.hours, cny_per_usd=spec.budget.cny_per_usd, usd_per_hour=run_usd)}`")
    notes: list[str] = []
    if (stale := check_catalog_name(choice, estimate_kwargs.get("catalog_dir"), for_launch=for_launch)) is not None:
        notes.append(stale)

    run_id = new_run_id(spec.name, now)
    # The job as priced on this offer (`auto` save interval resolved): in the task file, its digest on the line.
    carried = spec_text(priced_spec(spec, choice.save_every_steps))
    template_envs = {k: str(v) for k, v in (template.get("envs") or {}).items() if v is not None}
    overrides = {JOB_ENV: job_file, USD_PER_HOUR_ENV: f"{guard_usd:g}", BUDGET_HOURS_ENV: f"{budget_hours:g}",
                 RUN_ID_ENV: run_id, SPEC_DIGEST_ENV: spec_digest(carried), **extra_envs}
    # The estimate rejects FUSE-less offers for jobs without destinations (`budget.estimate.no_fuse_reason`).
    dropped = tuple(key for key in dropped_for(choice.cloud) if template_has(template, key))
    bucket = None
    if "file_mounts" not in dropped and runs_mount(template, {RUNS_BUCKET_ENV: "x"}):
        bucket = overrides.get(RUNS_BUCKET_ENV) or environ.get(RUNS_BUCKET_SETTING) or None
        if bucket is None and for_launch:
            raise LaunchError(f"not launched: {no_bucket_sentence(choice.cloud)}", exit_code=EXIT_USAGE)
        if bucket is None:
            notes.append(no_bucket_sentence(choice.cloud))
        overrides[RUNS_BUCKET_ENV] = bucket or BUCKET_PLACEHOLDER
    task_envs = {**template_envs, **overrides}
    mount = runs_mount(template, task_envs)
    notes += [f"`{choice.cloud}`: the task leaves out `{key}` of `{task_yaml}`: {DROPPED_FOR_CLOUD[key]}"
              for key in dropped]
    declared = template.get("secrets") or {}
    passed = [name for name in declared if environ.get(name)] if isinstance(declared, dict) else []
    passed += [name for name in needed if name not in passed]
    autostop = ({"idle_minutes": hard_limit_min, "down": True, "wait_for": "none"} if run_mode == "cluster"
                else None)
    plan = LaunchPlan(
        run_id=run_id, sky_name=run_id, mode=run_mode, job=spec.name, job_file=job_file, task_yaml=task_yaml,
        accelerators=f"{choice.accelerator}:{choice.count}", cloud=choice.cloud, infra=infra,
        instance_type=choice.instance_type, spot=choice.spot, usd_per_hour=choice.usd_per_hour,
        guard_usd_per_hour=guard_usd, guard_basis=why_guard, cost_cny=choice.cost_cny, hours=choice.hours,
        budget_cny=spec.budget.max_cost_yuan, hard_limit_min=hard_limit_min, budget_hours=budget_hours,
        envs=task_envs, env_overrides=overrides, secrets=tuple(passed),
        dropped=dropped, autostop=autostop,
        run_dir=None if "file_mounts" in dropped or mount is None else f"{mount[1]}/{run_id}",
        destinations=tuple(spec.artifacts.destinations), notes=tuple(notes), estimate=result,
        spec_yaml=carried,
        image=None if "resources.image_id" in dropped else template_value(template, "resources.image_id"),
        controller=controller, controller_reason=placement_reason(choice.cloud, controller) if controller else "",
        runs_bucket=bucket,
    )
    write_derived_template(template, plan)  # always: the per-run task file carries the job
    write_project_config(plan)
    return plan
