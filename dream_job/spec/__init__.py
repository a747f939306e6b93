"""The job spec: the only place the YAML shape is defined.

`load_spec(path, overrides)` (YAML reading in `spec/loader.py`, which knows no `JobSpec`) reads a
job file, applies `--set a.b.c=value` overrides and validates it into a `JobSpec` (pydantic v2,
strict, unknown keys are errors). Every stage receives this object, never raw dicts. Errors name
the key path, the file and line, the value got and the values allowed, and suggest the closest
key for typos.

This module holds `JobSpec` and its loading; the sections live next to it, one module per
concern: `training.py` (`model`, `data`, `train`), `evaluation.py` (`eval`, its sampler),
`run.py` (`budget`, `artifacts`), all on `section.py`'s strict base. Import them from here:
`from dream_job.spec import JobSpec, TrainSpec, load_spec`.

This package imports no torch: the laptop CLI starts fast.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from dream_job.spec.evaluation import (
    CUDA_GRAPH_PROMPT_MULTIPLE, SAMPLER_LOGIT_ROWS, EvalSpec, SamplerSpec, round_up_prompt_length,
)
from dream_job.spec.loader import load_yaml_model, parse_override
from dream_job.spec.run import ArtifactsSpec, BudgetSpec
from dream_job.spec.section import Section
from dream_job.spec.training import DTYPES, DataSpec, LoraSpec, ModelSpec, TrainSpec

# The public names: `from dream_job.spec import ...` is the import every stage uses.
__all__ = [
    "CUDA_GRAPH_PROMPT_MULTIPLE", "DTYPES", "RUN_NAME_RE", "SAMPLER_LOGIT_ROWS", "ArtifactsSpec", "BudgetSpec",
    "DataSpec", "EvalSpec", "JobSpec", "LoraSpec", "ModelSpec", "SamplerSpec", "TrainSpec", "load_spec",
    "parse_override", "round_up_prompt_length", "spec_json_schema",
]

# A job name and a run id: they name folders and bucket prefixes (`rundir.run_id`). Use `fullmatch`.
RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class JobSpec(Section):
    """A whole job: model, data, training, evaluation, budget and artifacts."""

    name: str = Field(description="Job name; names the run directory `runs/<name>`.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Base model.")
    data: DataSpec = Field(default_factory=DataSpec, description="Data preparation.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Evaluation.")
    budget: BudgetSpec = Field(default_factory=BudgetSpec, description="Cost limits.")
    artifacts: ArtifactsSpec = Field(default_factory=ArtifactsSpec, description="Run directory and destinations.")

    def wraps_in_fsdp(self, method: str, num_gpus: int) -> bool:
        """Whether the trainer wraps the model in FSDP2 for `method` on `num_gpus` GPUs (processes).

        Several processes shard; one process still needs FSDP2 for CPU offload and for its
        mixed-precision casts (fp32 master weights of `full` computing in bf16, LoRA's fp32
        adapters). Otherwise one process trains the plain module (`dream_job/train/build.py`).
        """
        one_dtype = method == "full_8bit" or (method == "full" and self.model.dtype == "float32")
        return num_gpus > 1 or not one_dtype

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        if not RUN_NAME_RE.fullmatch(self.name):
            raise ValueError(f"`name` must be letters, digits, `.`, `_` or `-`, got `{self.name}`")
        if self.train.global_batch_size % self.train.micro_batch_size:
            raise ValueError(
                f"`train.global_batch_size` ({self.train.global_batch_size}) must be a multiple of "
                f"`train.micro_batch_size` ({self.train.micro_batch_size})"
            )
        return self

    def run_dir(self) -> Path:
        """Return the run directory: `artifacts.run_dir` or `runs/<name>` under the working directory."""
        return Path(self.artifacts.run_dir) if self.artifacts.run_dir else Path("runs") / self.name


def spec_json_schema() -> dict[str, Any]:
    """Return the JSON Schema of a job file."""
    return JobSpec.model_json_schema()


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read a job YAML file, apply `--set a.b.c=value` overrides (values parsed as YAML) and validate it.

    Raises:
        SpecError: The file is missing or not YAML, an override is malformed, or the spec is
            invalid; the message names the key, `file:line` (or the `--set`), value and fix.
    """
    return load_yaml_model(JobSpec, path, overrides)
