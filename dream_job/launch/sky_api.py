"""The only module that imports SkyPilot (lazily, inside each function): build, submit, query, tail.

SkyPilot lives in the launcher's environment, not the container's (its `click<8.2` pin clashes
with huggingface_hub 2.x), so nothing here is imported at module load. `build_task` turns a
`LaunchPlan` into a `sky.Task` from the template, the same way `sky launch --gpus ... --env ...
--secret ... sky.yaml` does (`Task.from_yaml_config` with env and secret overrides, then a
resources override); `submit` hands it to SkyPilot's client SDK (`sky.jobs.launch` or
`sky.launch`, through the local API server SkyPilot starts itself).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from dream_job.launch.plan import INSTALL_HINT, LaunchError, LaunchPlan, read_template

# Terminal states of managed jobs and cluster jobs (SkyPilot's ManagedJobStatus / JobStatus names).
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_PRECHECKS", "FAILED_NO_RESOURCE",
                      "FAILED_CONTROLLER", "FAILED_DRIVER", "CANCELLED"})


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


def build_task(plan: LaunchPlan, environ: Mapping[str, str]) -> Any:
    """Return the `sky.Task` for `plan`: the template with the plan's resources, envs, secrets and caps.

    Secret values are read from `environ` into the task only (SkyPilot redacts them in dumps);
    template secrets the job does not need and the user has not set are left out, so SkyPilot
    does not ask for them.

    Raises:
        LaunchError: SkyPilot is missing, or rejects the template (its message as the cause).
    """
    sky = import_sky()
    config = copy.deepcopy(read_template(plan.task_yaml))  # from_yaml_config mutates its argument
    if isinstance(config.get("secrets"), dict):
        config["secrets"] = {k: v for k, v in config["secrets"].items() if k not in plan.drop_secrets}
        config["secrets"] = config["secrets"] or None
    if plan.drop_mounts:
        config.pop("file_mounts", None)
    try:
        task = sky.Task.from_yaml_config(config, env_overrides=list(plan.envs.items()),
                                         secrets_overrides=[(name, environ[name]) for name in plan.secrets])
    except Exception as exc:  # SkyPilot's schema errors come as several exception types
        raise LaunchError(f"SkyPilot rejects the task template `{plan.task_yaml}`",
                          caused_by=[f"{type(exc).__name__}: {exc}"],
                          hint="fix the file, or restore it: `git checkout sky.yaml`") from None
    override: dict[str, Any] = {"accelerators": plan.accelerators, "infra": plan.cloud, "use_spot": plan.spot}
    if plan.autostop is not None:
        override["autostop"] = plan.autostop
    # One resources object per distinct result: every `any_of` candidate collapses onto the chosen offer.
    unique = {json.dumps(r.to_yaml_config(), sort_keys=True, default=str): r
              for r in (r.copy(**override) for r in task.resources)}
    task.set_resources(next(iter(unique.values())) if len(unique) == 1 else set(unique.values()))
    return task


def submit(task: Any, plan: LaunchPlan, *, dryrun: bool = False) -> int | None:
    """Launch `task` as the plan says; return SkyPilot's job id (None for a dry run).

    A dry run goes through `sky.launch(..., dryrun=True)` in both modes (`sky jobs launch` has
    none): SkyPilot optimizes the task and provisions nothing.
    """
    sky = import_sky()
    if dryrun:
        sky.stream_and_get(sky.launch(task, cluster_name=plan.sky_name, dryrun=True))
        return None
    if plan.mode == "managed":
        job_ids, _ = sky.stream_and_get(sky.jobs.launch(task, name=plan.sky_name))
        return job_ids[0] if isinstance(job_ids, list) else job_ids
    job_id, _ = sky.stream_and_get(sky.launch(task, cluster_name=plan.sky_name))
    return job_id


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
                          exit_code=3) from None
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
