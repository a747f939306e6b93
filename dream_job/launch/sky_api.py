"""The only module that imports SkyPilot (lazily, inside each function): build, submit, query, tail.

SkyPilot lives in the launcher's environment, not the container's (its `click<8.2` pin clashes
with huggingface_hub 2.x), so nothing here is imported at module load. `build_task` turns a
`LaunchPlan` into a `sky.Task` from the template, the same way `sky launch --gpus ... --env ...
--secret ... sky.yaml` does (`Task.from_yaml_config` with env and secret overrides, then a
resources override); `submit` hands it to SkyPilot's client SDK (`sky.jobs.launch` or
`sky.launch`, through the local API server SkyPilot starts itself), with the plan's SkyPilot project
config (the jobs controller's place) in effect, as `SKYPILOT_PROJECT_CONFIG=... sky jobs launch`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from dream_job.errors import EXIT_TRANSIENT
from dream_job.launch.plan import INSTALL_HINT, PROJECT_CONFIG_ENV, LaunchError, LaunchPlan
from dream_job.launch.planner import stale_name_error
from dream_job.launch.template import read_template

# Terminal states of managed jobs and cluster jobs (SkyPilot's ManagedJobStatus / JobStatus names).
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_PRECHECKS", "FAILED_NO_RESOURCE",
                      "FAILED_CONTROLLER", "FAILED_DRIVER", "CANCELLED"})

# Failures of the network or of SkyPilot's API server rather than of the task, by class name (in
# the exception's MRO, or a `CloudError`'s `error_type`), so nothing here imports SkyPilot or
# requests: running the same command later is the fix (exit 3).
TRANSIENT_ERRORS = frozenset({
    "ApiServerConnectionError", "ServerTemporarilyUnavailableError", "NetworkError", "RequestInterruptedError",
    "ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "TimeoutError", "EndpointConnectionError",
    "ConnectTimeoutError", "ReadTimeoutError", "NameResolutionError",
})
# SkyPilot colours parts of its messages (`Run: \x1b[1msky check\x1b[0m`).
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def import_sky() -> Any:
    """Return the `sky` module.

    Raises:
        LaunchError: SkyPilot is not installed here.
    """
    try:
        import sky
    except ImportError:
        raise LaunchError("SkyPilot is not installed in this environment (it stays out of the container's)",
                          hint=INSTALL_HINT) from None
    return sky


def check_instance_type(plan: LaunchPlan) -> None:
    """Raise `LaunchError` (stale name, with the refresh command) when SkyPilot's catalog lacks the plan's machine.

    Asks SkyPilot's own catalog (`sky.catalog.instance_type_exists`), which reads the file the
    launch will read and fetches it first where it is missing, as the launch would.
    """
    import_sky()
    from sky import catalog

    try:
        exists = catalog.instance_type_exists(plan.instance_type, clouds=plan.cloud)
    except Exception as exc:  # a fetch that fails offline: SkyPilot's own launch fails the same way
        raise skypilot_failure(exc, plan) from None
    if not exists:
        raise stale_name_error(plan.cloud, plan.instance_type)


def build_task(plan: LaunchPlan, environ: Mapping[str, str]) -> Any:
    """Return the `sky.Task` for `plan`: the template with the plan's resources, envs, secrets and caps.

    The same task as `plan.sky_command()` gives SkyPilot's CLI: the template (or its no-mounts
    copy) with the env overrides, the secrets by name with their values from `environ` (SkyPilot
    redacts them in dumps) and the resources override (place, instance type, GPUs, spot).

    Raises:
        LaunchError: SkyPilot is missing, or rejects the template (its message as the cause).
    """
    sky = import_sky()
    check_instance_type(plan)
    config = copy.deepcopy(read_template(plan.task_file()))  # from_yaml_config mutates its argument
    try:
        task = sky.Task.from_yaml_config(config, env_overrides=list(plan.env_overrides.items()),
                                         secrets_overrides=[(name, environ[name]) for name in plan.secrets])
    except Exception as exc:  # SkyPilot's schema errors come as several exception types
        raise LaunchError(f"SkyPilot rejects the task template `{plan.task_yaml}`",
                          caused_by=[f"{type(exc).__name__}: {exc}"],
                          hint="fix the file, or restore it: `git checkout sky.yaml`") from None
    # The offer pinned as the estimate priced it: place and instance type, so SkyPilot cannot
    # substitute another machine with the same GPU name (e.g. Vast's 40 GB A100 for the 80 GB one).
    override: dict[str, Any] = {"accelerators": plan.accelerators, "infra": plan.infra,
                                "instance_type": plan.instance_type, "use_spot": plan.spot}
    if plan.mode == "managed":
        task.name = plan.sky_name  # as `sky jobs launch -n NAME` names the task
    # One resources object per distinct result: every `any_of` candidate collapses onto the chosen offer.
    unique = {json.dumps(r.to_yaml_config(), sort_keys=True, default=str): r
              for r in (r.copy(**override) for r in task.resources)}
    task.set_resources(next(iter(unique.values())) if len(unique) == 1 else set(unique.values()))
    return task


@contextlib.contextmanager
def project_config(plan: LaunchPlan) -> Iterator[None]:
    """Put the plan's SkyPilot project config in effect for this process (as the printed line's
    `SKYPILOT_PROJECT_CONFIG=...` does for SkyPilot's CLI); the client SDK sends it with each request."""
    path = plan.project_config()
    if path is None:
        yield
        return
    from sky import skypilot_config

    before = os.environ.get(PROJECT_CONFIG_ENV)
    os.environ[PROJECT_CONFIG_ENV] = str(path)
    skypilot_config.reload_config()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROJECT_CONFIG_ENV, None)
        else:
            os.environ[PROJECT_CONFIG_ENV] = before
        skypilot_config.reload_config()


# The name of the controller's dry run (a launch may not use the real controller's name).
CONTROLLER_DRYRUN_NAME = "dream-job-controller-dryrun"


def controller_task(task: Any) -> Any:
    """Return a task on the machine SkyPilot places the jobs controller of `task` on.

    The resources come from SkyPilot's own `controller_utils.get_controller_resources`, which
    `sky jobs launch` calls on the API server with the client's config (the plan's project
    config in effect): the same place, machine and disk.
    """
    sky = import_sky()
    from sky.utils import controller_utils

    resources = controller_utils.get_controller_resources(controller_utils.Controllers.JOBS_CONTROLLER,
                                                          list(task.resources))
    placed = sky.Task(name=CONTROLLER_DRYRUN_NAME, run="true")
    placed.set_resources(resources)
    return placed


def submit(task: Any, plan: LaunchPlan, *, dryrun: bool = False) -> int | None:
    """Launch `task` as the plan says; return SkyPilot's job id (None for a dry run).

    A dry run goes through `sky.launch(..., dryrun=True)` (`sky jobs launch` has none):
    SkyPilot's API server validates and optimizes the task, checks the chosen cloud's features
    (failing over as a launch would), creates a missing bucket of the task's `file_mounts` (as
    SkyPilot's own `sky launch --dryrun` does) and provisions nothing. A managed job's dry run
    then places its jobs controller the way `sky jobs launch` does (`controller_task`) and dry-runs
    that machine too, so a controller SkyPilot cannot place fails here, not after the launch. A real
    managed launch dry-runs the controller first as well: `sky jobs launch` would upload the workdir
    to a bucket before finding out.

    Raises:
        LaunchError: SkyPilot is missing, rejects the task (exit 1), or cannot be reached (exit 3).
    """
    sky = import_sky()
    try:
        with project_config(plan):
            if dryrun:
                sky.stream_and_get(sky.launch(task, cluster_name=plan.sky_name, dryrun=True))
                if plan.mode == "managed":
                    dry_run_controller(task, plan)
                return None
            if plan.mode == "managed":
                # `sky jobs launch` uploads the workdir before it places the controller: place it first.
                dry_run_controller(task, plan)
                job_ids, _ = sky.stream_and_get(sky.jobs.launch(task, name=plan.sky_name))
                return job_ids[0] if isinstance(job_ids, list) else job_ids
            job_id, _ = sky.stream_and_get(sky.launch(task, cluster_name=plan.sky_name, **autostop_kwargs(plan)))
            return job_id
    except LaunchError:
        raise
    except Exception as exc:  # the API server sends back whatever the task raised there
        raise skypilot_failure(exc, plan) from None


def dry_run_controller(task: Any, plan: LaunchPlan) -> None:
    """Dry-run the jobs controller's machine for `task` (see `controller_task`) through the API server.

    Raises:
        LaunchError: SkyPilot cannot place the controller there (exit 1), or cannot be reached (exit 3).
    """
    sky = import_sky()
    try:
        sky.stream_and_get(sky.launch(controller_task(task), cluster_name=CONTROLLER_DRYRUN_NAME, dryrun=True))
    except Exception as exc:
        if is_transient(exc):
            raise skypilot_failure(exc, plan) from None
        lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
        where = plan.controller.infra if plan.controller else "?"
        cloud = where.split("/")[0]
        raise LaunchError(
            f"SkyPilot cannot place the jobs controller of run `{plan.run_id}` on `{where}`, so the managed job "
            "would fail after launching",
            caused_by=[f"{type(exc).__name__}: {lines[0] if lines else '(no message)'}", *lines[1:]],
            hint=f"enable that cloud (`sky check {cloud}`), or place the controller on one you enabled "
                 "(`--set budget.controller_infra=<cloud/region>` with `budget.controller_instance_type`), or launch "
                 "as a cluster (`--cluster`)") from None


def is_transient(exc: BaseException) -> bool:
    """True when `exc` is a network or API-server failure (see `TRANSIENT_ERRORS`), not the task's fault."""
    names = {cls.__name__ for cls in type(exc).__mro__} | {str(getattr(exc, "error_type", ""))}
    return bool(names & TRANSIENT_ERRORS)


def skypilot_failure(exc: Exception, plan: LaunchPlan) -> LaunchError:
    """Return the one-sentence `LaunchError` for an exception SkyPilot raised while launching `plan`.

    SkyPilot's message becomes the cause lines (colours stripped); the hint follows its kind:
    the task template, the run bucket, cloud access, availability of the pinned offer.
    """
    name = type(exc).__name__
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    caused_by = [f"{name}: {lines[0] if lines else '(no message)'}", *lines[1:]]
    run = f"run `{plan.run_id}` of `{plan.job_file}`"
    if is_transient(exc):
        if name == "ApiServerConnectionError":
            return LaunchError(f"SkyPilot's API server cannot be reached, so {run} was not launched",
                               caused_by=caused_by, exit_code=EXIT_TRANSIENT,
                               hint="check `sky api status` (or the `SKYPILOT_API_SERVER_ENDPOINT` you set), "
                                    "then run the same command again")
        return LaunchError(f"a network failure stopped SkyPilot while launching {run}", caused_by=caused_by,
                           exit_code=EXIT_TRANSIENT, hint="check the connection, then run the same command again")
    kinds = {cls.__name__ for cls in type(exc).__mro__}
    if kinds & {"StorageError", "StorageSpecError", "StorageNameError"}:
        hint = ("the run bucket is `RUNS_BUCKET`: pass a bucket name SkyPilot may create, "
                "`--env RUNS_BUCKET=<new name>` (or `export DREAM_JOB_RUNS_BUCKET=<new name>`)")
    elif "NoCloudAccessError" in kinds or "CloudUserIdentityError" in kinds:
        hint = f"set up access to `{plan.cloud}` and check it: `sky check {plan.cloud}`"
    elif "ResourcesUnavailableError" in kinds:
        hint = (f"SkyPilot found no `{plan.instance_type}` in `{plan.infra}` it could use: run `dream-job estimate "
                f"{plan.job_file}` again, or leave the cloud out: `--set budget.clouds=[...]`")
    else:
        hint = (f"fix `{plan.task_yaml}` as SkyPilot says (or restore it: `git checkout {plan.task_yaml}`), "
                f"or the job file `{plan.job_file}`")
    return LaunchError(f"SkyPilot rejects {run} (task `{plan.task_yaml}`)", caused_by=caused_by, hint=hint)


def autostop_kwargs(plan: LaunchPlan) -> dict[str, Any]:
    """Return `sky.launch`'s autostop arguments for the plan, as `sky launch -i N --wait-for W --down` passes them."""
    if plan.autostop is None:
        return {}
    from sky.skylet import autostop_lib

    return {"idle_minutes_to_autostop": plan.autostop["idle_minutes"], "down": bool(plan.autostop.get("down")),
            "wait_for": autostop_lib.AutostopWaitFor.from_str(plan.autostop["wait_for"])}


def _value(status: Any) -> str | None:
    return None if status is None else str(getattr(status, "value", status))


def job_state(record: Mapping[str, Any]) -> dict[str, Any]:
    """Return `{state, recoveries, started_at, ended_at, failure}` of a launched run from SkyPilot.

    Raises:
        LaunchError: SkyPilot is missing, or cannot answer (its message as the cause).
    """
    sky = import_sky()
    try:
        if record["mode"] == "managed":
            jobs = sky.get(sky.jobs.queue(refresh=False, skip_finished=False, job_ids=[record["job_id"]]))
            jobs = jobs[0] if isinstance(jobs, tuple) else jobs
            job = next((j for j in jobs if j.get("job_id") == record["job_id"]), None)
        else:
            clusters = sky.get(sky.status(cluster_names=[record["sky_name"]]))
            if not clusters:
                return {"state": "cluster down", "recoveries": None, "started_at": None, "ended_at": None,
                        "failure": None}
            jobs = sky.get(sky.queue(record["sky_name"], skip_finished=False))
            job = next((j for j in jobs if j.get("job_id") == record["job_id"]), None)
    except Exception as exc:
        raise LaunchError(f"SkyPilot cannot report on run `{record['run_id']}`",
                          caused_by=[f"{type(exc).__name__}: {exc}"], hint="check `sky api status` and `sky check`",
                          exit_code=EXIT_TRANSIENT) from None
    if job is None:
        return {"state": "unknown to SkyPilot", "recoveries": None, "started_at": None, "ended_at": None,
                "failure": None}
    return {"state": _value(job.get("status")), "recoveries": job.get("recovery_count"),
            "started_at": job.get("start_at"), "ended_at": job.get("end_at"), "failure": job.get("failure_reason")}


def tail_logs(record: Mapping[str, Any], *, follow: bool) -> int:
    """Stream the run's log lines to stdout; return SkyPilot's exit code (0: the job succeeded)."""
    sky = import_sky()
    if record["mode"] == "managed":
        code = sky.jobs.tail_logs(job_id=record["job_id"], follow=follow)
    else:
        code = sky.tail_logs(record["sky_name"], record["job_id"], follow=follow)
    return int(code or 0)
