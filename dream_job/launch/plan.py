"""The launch plan: what `dream-job launch` will do, as a frozen value, and how it reads.

`LaunchPlan` names the offer, mode, caps, envs and secrets of one launch but never holds secret
values (those are read from the environment at submit time). `lines()` is what the user confirms,
`sky_command()` the `sky` line `dream-job estimate` prints; both build the same task. The plan is
made by `planner.plan_launch`; the task file and the controller's config it names are written by
`template`. No SkyPilot, no torch.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from budget.controller import ControllerOffer
from dream_job.errors import DreamJobError
from dream_job.launch.image import describe_image

Mode = Literal["managed", "cluster"]
# Where the template adapted to one cloud goes: derived from `sky.yaml` on every estimate and
# launch (never edited by hand), so the printed `sky` line can name it.
DERIVED_DIR = Path(".dream-job")
# SkyPilot reads the jobs controller's place from this project config file, named on the line
# (`SKYPILOT_PROJECT_CONFIG=... sky jobs launch`): a task YAML's own `config:` section cannot set
# `jobs.controller.resources` (not among SkyPilot 0.14.1's `OVERRIDEABLE_CONFIG_KEYS_IN_TASK`; its API
# server answers "Invalid resources.config override: Found unsupported field 'jobs'").
PROJECT_CONFIG_ENV = "SKYPILOT_PROJECT_CONFIG"
# dream-job is not on PyPI: the launcher installs from the clone, in a venv of its own (SkyPilot's
# `click<8.2` pin clashes with the container's huggingface_hub).
INSTALL_HINT = ("from the repo root, install the launcher extra into a venv of its own: `python3 -m venv "
                ".venv-launcher && .venv-launcher/bin/pip install -e '.[launcher]'`, then run "
                "`.venv-launcher/bin/dream-job`")


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
