"""The job-spec sections of where a job runs and what it may spend: `BudgetSpec`, `ArtifactsSpec`.

Job: the `budget:` keys (cost limits, which offers the estimate may choose, the jobs controller,
transfer rates) and the `artifacts:` keys (run directory, destinations, S3 endpoint) of a job
file. Imports no torch.
"""

from __future__ import annotations

from pydantic import Field

from dream_job.spec.section import Section

class BudgetSpec(Section):
    """Cost limits for the preflight estimate and the in-job guard."""

    max_cost_yuan: float = Field(100.0, gt=0.0, description="Total spend allowed for the whole run, in CNY.")
    cny_per_usd: float = Field(7.10, gt=0.0, description="Exchange rate, CNY per USD; set your own with its date in "
                               "`cny_per_usd_source`.")
    cny_per_usd_source: str = Field(
        "dream-job's planning default of 2026-11-24 (not a market quote)",
        description="Where and when `cny_per_usd` was read; shown next to every ¥ figure.",
    )
    usd_per_hour: float | None = Field(
        None, ge=0.0, description="Hourly price of the machine running the job, for the in-job budget guard; "
        "the launcher's `DREAM_JOB_USD_PER_HOUR` overrides it (null and unset: no guard).",
    )
    reserve_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="Share of `max_cost_yuan` the guard keeps for evaluation, publishing and a "
        "margin: training stops early (checkpointed) when spend reaches the rest.",
    )
    use_spot: bool = Field(True, description="Consider spot/preemptible offers.")
    gpus: list[str] = Field([], description="Restrict candidates to these GPU names (empty: all in the catalog).")
    clouds: list[str] = Field(
        [],
        description="Restrict candidates to these SkyPilot clouds (`runpod`, `vast`, `lambda`, `aws`, ...; empty: "
        "all); with exactly one, the launch command gets `--infra <cloud>`.",
    )
    allow_recipe_change: bool = Field(
        False,
        description="Let the estimate choose a `train.method` that changes the training recipe (8-bit AdamW, "
        "LoRA) when it is cheaper; otherwise such methods are only listed as alternatives.",
    )
    managed_job: bool = Field(
        True,
        description="Launch with `sky jobs launch` (recovers from spot preemption); the estimate then counts "
        "the SkyPilot jobs-controller VM.",
    )
    controller_infra: str | None = Field(
        "aws/us-east-1",
        pattern=r"^[a-z0-9-]+(/[A-Za-z0-9 ,._-]+)?$",
        description="Where SkyPilot's jobs controller of a managed job runs, `cloud/region` (a cloud you enabled "
        "with `sky check`); its price comes from that cloud's catalog. null: no managed jobs (the estimate "
        "then rejects them; launch as a cluster with `budget.managed_job=false`).",
    )
    controller_instance_type: str = Field(
        "m6i.xlarge",
        min_length=1,
        description="The jobs controller's machine on `controller_infra` (SkyPilot's own default family: 4 vCPU, "
        "16 GiB on AWS).",
    )
    download_mb_per_s: float = Field(
        100.0,
        gt=0.0,
        description="Download rate of the GPU machine for the container image and the base model, MB/s "
        "(assumption of 2026-11-24; clouds usually do better).",
    )
    upload_mb_per_s: float = Field(
        50.0, gt=0.0, description="Upload rate to `artifacts.destinations`, MB/s (assumption of 2026-11-24)."
    )
    max_catalog_age_days: int = Field(
        14,
        ge=1,
        description="Prices older than this many days are flagged on the estimate's first line, and `dream-job "
        "launch` refuses them until refreshed.",
    )


class ArtifactsSpec(Section):
    """Where the run lives and where its results are published."""

    run_dir: str | None = Field(None, description="Run directory; default `runs/<name>` under the working directory.")
    destinations: list[str] = Field(
        [], description="Where to publish: `s3://bucket/prefix`, `hf://user/repo` or `file:///path`."
    )
    sync_every_steps: int | None = Field(
        None, ge=1, description="Upload checkpoints every N steps so a preempted run resumes elsewhere."
    )
    s3_endpoint_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s/]+",
        description="Endpoint of an S3-compatible store (R2, MinIO, SeaweedFS, ...) for `s3://` destinations, "
        "e.g. `https://<account>.r2.cloudflarestorage.com`; default: `AWS_ENDPOINT_URL`, else AWS S3. "
        "Credentials always come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).",
    )
