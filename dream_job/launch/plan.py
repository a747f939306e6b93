"""What `dream-job launch` will do, decided before SkyPilot is called: offer, mode, caps, envs, secrets.

Input: the validated spec, its file, the SkyPilot task template (`sky.yaml`, read as YAML, no
SkyPilot import) and the user's environment. Output: a `LaunchPlan`, a frozen value that names
secrets but never holds their values (those are read from the environment at submit time).

Caps, in the order they bite: the in-job budget guard (`dream_job.costs`, from
`DREAM_JOB_USD_PER_HOUR`) stops training early with a checkpoint; `BUDGET_HOURS` (`dream-job task`,
counted from the first start across recoveries) sends SIGTERM, then SIGKILL 10 minutes later, and
ends 15 minutes before the budget is spent (`task.SHUTDOWN_GRACE_S`: 5 more for the last upload); in
cluster mode the autostop hard limit (`wait_for: none`) tears the machine down when the budget is spent,
whatever runs on it. Managed jobs get no `wait_for: none`: SkyPilot's jobs controller launches
the job's cluster with its own 10-minute autodown and keeps the task's `wait_for`, which would
then tear the job down 10 minutes after every start; the controller downs the cluster when the
job ends, and `BUDGET_HOURS` is the cap.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from budget.caps import GRACE_MIN, fitting_budget_cny, run_cap
from budget.catalog import NO_FUSE_CLOUDS, default_catalog_dir, listed_in_catalog, pins_zone, refresh_hint
from budget.controller import ControllerOffer, controller_config, placement_reason
from dream_job.credentials import required_secrets
from dream_job.errors import EXIT_USAGE, DreamJobError
from dream_job.launch.image import IMAGE_ENV, describe_image, with_image
from dream_job.launch.payload import SPEC_DIGEST_ENV, SPEC_ENV, priced_spec, spec_digest, spec_text
from dream_job.rundir import write_text_atomically
from dream_job.spec import JobSpec

Mode = Literal["managed", "cluster"]

# Where the template adapted to one cloud goes: derived from `sky.yaml` on every estimate and
# launch (never edited by hand), so the printed `sky` line can name it.
DERIVED_DIR = Path(".dream-job")
# Every estimate writes a task file for its run id; the newest this many stay, so the lines of the
# last estimates still paste (SkyPilot reads the file only at launch) and older ones do not pile up.
KEEP_TASK_FILES = 20
TASK_FILE_HEADER = "# Derived from `"
# SkyPilot reads the jobs controller's place from this project config file, named on the line
# (`SKYPILOT_PROJECT_CONFIG=... sky jobs launch`): a task YAML's own `config:` section cannot set
# `jobs.controller.resources` (not among SkyPilot 0.14.1's `OVERRIDEABLE_CONFIG_KEYS_IN_TASK`; its API
# server answers "Invalid resources.config override: Found unsupported field 'jobs'").
PROJECT_CONFIG_ENV = "SKYPILOT_PROJECT_CONFIG"
# The task env naming the run bucket (`sky.yaml`'s `/runs` mount), and the user's own setting for it.
RUNS_BUCKET_ENV = "RUNS_BUCKET"
RUNS_BUCKET_SETTING = "DREAM_JOB_RUNS_BUCKET"
# What the estimate's line says while no bucket is set: not a valid bucket name, so SkyPilot refuses
# the pasted line at once (StorageNameError) instead of creating a bucket nobody chose.
BUCKET_PLACEHOLDER = "<your-new-bucket>"
# What a cloud cannot take from the template, and why (SkyPilot 0.14.1).
DROPPED_FOR_CLOUD = {
    "file_mounts": ("no FUSE, so no bucket mount: the run dir stays on the machine's disk and "
                    "`artifacts.destinations` carry the results"),
    f"envs.{RUNS_BUCKET_ENV}": "no bucket mount, so no run bucket to name",
    "resources.image_id": ("SkyPilot logs in to a RunPod pod as root, which a non-root image refuses (its RunPod "
                           "user setting is rejected by the API server): RunPod's own image runs and `setup` installs "
                           "the project"),
}


def dropped_for(cloud: str) -> tuple[str, ...]:
    """Return the template keys a launch on `cloud` must leave out (see `DROPPED_FOR_CLOUD`)."""
    keys = ("file_mounts", f"envs.{RUNS_BUCKET_ENV}") if cloud in NO_FUSE_CLOUDS else ()
    return keys + (("resources.image_id",) if cloud == "runpod" else ())


RUN_ID_ENV = "DREAM_JOB_RUN_ID"
# dream-job is not on PyPI: the launcher installs from the clone, in a venv of its own (SkyPilot's
# `click<8.2` pin clashes with the container's huggingface_hub).
INSTALL_HINT = ("from the repo root, install the launcher extra into a venv of its own: `python3 -m venv "
                ".venv-launcher && .venv-launcher/bin/pip install -e '.[launcher]'`, then run "
                "`.venv-launcher/bin/dream-job`")


def no_bucket_sentence(cloud: str) -> str:
    """Tell a user without a run bucket what to set (one sentence, before anything is provisioned)."""
    return (f"no run bucket is set: on `{cloud}` the run dir lives on an S3 bucket of your own, named before "
            f"launching (bucket names are global, so none is shipped); SkyPilot creates it: `export "
            f"{RUNS_BUCKET_SETTING}=dream-job-runs-<your name>`, or pass `--env {RUNS_BUCKET_ENV}=<name>`")


class LaunchError(DreamJobError):
    """`dream-job launch`, `logs` or `status` cannot go on (missing secret, no SkyPilot, no record)."""


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the launch needs except secret values; `lines()` is what the user confirms."""

    run_id: str
    sky_name: str
    mode: Mode
    job: str
    job_file: str
    task_yaml: Path
    accelerators: str
    cloud: str
    infra: str
    instance_type: str
    spot: bool
    usd_per_hour: float
    guard_usd_per_hour: float
    guard_basis: str
    cost_cny: float
    hours: float
    budget_cny: float
    hard_limit_min: int
    budget_hours: float
    envs: dict[str, str]
    env_overrides: dict[str, str]
    secrets: tuple[str, ...]
    dropped: tuple[str, ...]
    autostop: dict[str, Any] | None
    run_dir: str | None
    destinations: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())
    controller: ControllerOffer | None = None
    controller_reason: str = ""
    runs_bucket: str | None = None
    estimate: Any = field(default=None, compare=False, repr=False)
    # The resolved job the task carries (`payload.spec_text`), and the image it runs (None: the cloud's + `setup`).
    spec_yaml: str = field(default="", repr=False)
    image: str | None = None

    def lines(self) -> list[tuple[str, str]]:
        """Return (what, value) rows describing the launch, for the confirmation prompt."""
        how = ("managed job (`sky jobs launch`, recovers from preemption)" if self.mode == "managed"
               else "cluster (`sky launch`)")
        limit = (f"machine torn down {self.hard_limit_min} min after the job starts, also when it ended earlier "
                 f"(`sky down {self.sky_name}` stops paying sooner)" if self.autostop
                 and self.autostop.get("wait_for") == "none" else "the jobs controller tears the machine down "
                 "when the job ends")
        rows = [
            ("run", f"`{self.run_id}` of `{self.job_file}` as {how} `{self.sky_name}`"),
            ("offer", f"{self.accelerators} `{self.instance_type}` pinned to `{self.infra}`, "
                      f"{'spot' if self.spot else 'on-demand'}, ${self.usd_per_hour:.2f}/h for the machine"),
            ("guard", f"`DREAM_JOB_USD_PER_HOUR={self.guard_usd_per_hour:g}`: {self.guard_basis}"),
            ("estimate", f"¥{self.cost_cny:.2f} for {self.hours:.2f} h of ¥{self.budget_cny:g}"),
            ("caps", f"`BUDGET_HOURS={self.budget_hours:g}` in the job; {limit}"),
            ("secrets", ", ".join(f"`{name}`" for name in self.secrets) or "none"),
            ("run dir", self.run_dir or "the machine's disk (results leave through `artifacts.destinations`)"),
            ("image", describe_image(self.image)),
            ("controller", self.controller_line()),
        ]
        return rows + [("note", note) for note in self.notes]

    def controller_line(self) -> str:
        """Say where SkyPilot's jobs controller runs, its price and why (or why there is none)."""
        if self.controller is None:
            return ("none: a cluster (`sky launch`) runs the job and tears itself down; no recovery from preemption "
                    "(`budget.managed_job: false` or `--cluster`)")
        c, cny = self.controller, getattr(self.estimate.choice, "controller_cny", None) if self.estimate else None
        part = f", ¥{cny:.2f} of the estimate" if cny is not None else ""
        return (f"`{c.instance_type}` on `{c.infra}` at ${c.usd_per_hour:g}/h (price of {c.priced_on}, {c.source})"
                f"{part}; {self.controller_reason}; SkyPilot reads it from `{self.project_config()}`")

    def project_config(self) -> Path | None:
        """Return the SkyPilot project config that places the jobs controller (managed jobs only)."""
        if self.controller is None:
            return None
        c = self.controller
        return DERIVED_DIR / f"sky-controller-{sky_name(c.infra)}-{sky_name(c.instance_type)}.yaml"

    def task_file(self) -> Path:
        """Return the task YAML the launch uses: the template adapted to the chosen cloud, carrying the job."""
        return DERIVED_DIR / f"{self.run_id}.yaml"

    def sky_command(self) -> str:
        """Return the `sky jobs launch` / `sky launch` line that builds the same task as `dream-job launch`.

        Everything the launch sets is on the line: name, pinned place and instance type, GPUs,
        spot, the caps, every task env and secret names (values come from the shell, `--secret NAME`).
        """
        config = self.project_config()
        parts = [f"{PROJECT_CONFIG_ENV}={config.as_posix()}"] if config else []
        parts += (["sky", "jobs", "launch", "-n", self.sky_name] if self.mode == "managed"
                  else ["sky", "launch", "-c", self.sky_name])
        parts += ["--infra", self.infra, "-t", self.instance_type, "--gpus", self.accelerators,
                  "--use-spot" if self.spot else "--no-use-spot"]
        if self.autostop:
            parts += ["-i", str(self.autostop["idle_minutes"]), "--wait-for", str(self.autostop["wait_for"])]
            parts += ["--down"] if self.autostop.get("down") else []
        for key, value in self.env_overrides.items():
            parts += ["--env", f"{key}={value}"]
        for name in self.secrets:
            parts += ["--secret", name]
        return shlex.join([*parts, self.task_file().as_posix()])


def sky_name(text: str) -> str:
    """Return `text` as a SkyPilot cluster/job name: lowercase letters, digits and `-`, a letter first."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name if name[:1].isalpha() else f"dj-{name}"


def new_run_id(job: str, now: datetime | None = None) -> str:
    """Return a run id `<job>-<UTC yyyymmdd-HHMMSS>`, also valid as a SkyPilot name."""
    return f"{sky_name(job)}-{(now or datetime.now(UTC)):%Y%m%d-%H%M%S}"


def read_template(path: Path) -> dict[str, Any]:
    """Return the SkyPilot task template as a dict (plain YAML, no SkyPilot).

    Raises:
        LaunchError: The file is missing or is not a YAML mapping.
    """
    if not path.is_file():
        raise LaunchError(f"SkyPilot task template `{path}` not found",
                          hint="run from the repo root (it holds `sky.yaml`) or pass `--sky-yaml PATH`")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise LaunchError(f"SkyPilot task template `{path}` is not a YAML mapping",
                          hint="restore it from the repo: `git checkout sky.yaml`")
    return config


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


def _runs_mount(template: dict[str, Any], envs: Mapping[str, str]) -> tuple[str, str] | None:
    """Return (mount path, `s3://bucket`) of the template's first S3 bucket mount, env vars filled in."""
    for path, mount in (template.get("file_mounts") or {}).items():
        if isinstance(mount, dict) and mount.get("store") == "s3" and mount.get("name"):
            name = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: envs.get(m.group(1) or m.group(2), m.group(0)),
                          str(mount["name"]))
            return str(path), f"s3://{name}"
    return None


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


def template_has(template: dict[str, Any], key: str) -> bool:
    """Return whether the template sets `key` (`a.b` names a key inside `a`), even to null."""
    head, _, rest = key.partition(".")
    value = template.get(head)
    return (isinstance(value, dict) and rest in value) if rest else head in template


def template_value(template: dict[str, Any], key: str) -> Any:
    """Return the template's value at `key` (`a.b` names a key inside `a`), None when absent."""
    head, _, rest = key.partition(".")
    value = template.get(head)
    return (value.get(rest) if isinstance(value, dict) else None) if rest else value


def derived_template(template: dict[str, Any], dropped: tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of `template` without the `dropped` keys (`a.b` names a key inside `a`)."""
    body = {k: (dict(v) if isinstance(v, dict) else v) for k, v in template.items()}
    for key in dropped:
        head, _, rest = key.partition(".")
        if rest and isinstance(body.get(head), dict):
            body[head].pop(rest, None)
        elif not rest:
            body.pop(head, None)
    return body


def write_project_config(plan: LaunchPlan) -> None:
    """Write the SkyPilot project config that places the plan's jobs controller (atomically)."""
    path = plan.project_config()
    if path is None or plan.controller is None:
        return
    write_text_atomically(path, "# Written by dream-job: where SkyPilot places the jobs controller of a managed job "
                          "(`budget.controller_infra`, `budget.controller_instance_type`); regenerated on every "
                          "estimate and launch.\n" + yaml.safe_dump(controller_config(plan.controller),
                                                                    sort_keys=False))


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


def write_derived_template(template: dict[str, Any], plan: LaunchPlan) -> None:
    """Write the template adapted to the plan's cloud, carrying the resolved job, to `plan.task_file()` (atomically)."""
    body = derived_template(template, plan.dropped)
    body["envs"] = {**(body.get("envs") or {}), SPEC_ENV: plan.spec_yaml}  # checked against the line's digest
    write_text_atomically(plan.task_file(), f"{TASK_FILE_HEADER}{plan.task_yaml}` by dream-job for `{plan.cloud}` "
                          f"(left out: {', '.join(plan.dropped) or 'nothing'}) for run `{plan.run_id}`; written by "
                          "every estimate and launch: edit the source instead.\n"
                          + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=1000))
    prune_task_files(plan.task_file().parent, keep=KEEP_TASK_FILES)


def prune_task_files(folder: Path, *, keep: int) -> list[Path]:
    """Delete all but the `keep` newest task files dream-job wrote in `folder`; return those deleted.

    Only files named like a run id (`<job>-<yyyymmdd-HHMMSS>.yaml`) that start with dream-job's header
    are touched; the controller's project config and anything else in the folder stay.
    """
    ours = [path for path in folder.glob("*.yaml") if re.fullmatch(r"[a-z][a-z0-9-]*-\d{8}-\d{6}", path.stem)
            and path.read_text(encoding="utf-8").startswith(TASK_FILE_HEADER)]
    ours.sort(key=lambda path: (path.stat().st_mtime, path.name), reverse=True)
    for path in ours[keep:]:
        path.unlink(missing_ok=True)
    return ours[keep:]


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
            directory, no spot offer fits, the budget buys less than the grace period, or the
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
    overrides = {"JOB": job_file, "DREAM_JOB_USD_PER_HOUR": f"{guard_usd:g}", "BUDGET_HOURS": f"{budget_hours:g}",
                 RUN_ID_ENV: run_id, SPEC_DIGEST_ENV: spec_digest(carried), **extra_envs}
    # The estimate rejects FUSE-less offers for jobs without destinations (`budget.estimate.no_fuse_reason`).
    dropped = tuple(key for key in dropped_for(choice.cloud) if template_has(template, key))
    bucket = None
    if "file_mounts" not in dropped and _runs_mount(template, {RUNS_BUCKET_ENV: "x"}):
        bucket = overrides.get(RUNS_BUCKET_ENV) or environ.get(RUNS_BUCKET_SETTING) or None
        if bucket is None and for_launch:
            raise LaunchError(f"not launched: {no_bucket_sentence(choice.cloud)}", exit_code=EXIT_USAGE)
        if bucket is None:
            notes.append(no_bucket_sentence(choice.cloud))
        overrides[RUNS_BUCKET_ENV] = bucket or BUCKET_PLACEHOLDER
    task_envs = {**template_envs, **overrides}
    mount = _runs_mount(template, task_envs)
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
