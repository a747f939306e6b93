"""The base of every job-spec section: strict, frozen, unknown keys refused.

Job: one home for the pydantic settings every section of `JobSpec` shares, so a key the spec
does not define is an error (`extra="forbid"`) and no value is coerced (`strict`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A section of the job file (`model:`, `train:`, ...): strict, frozen, no unknown keys, no inf/nan."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
