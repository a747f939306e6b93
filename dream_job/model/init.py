"""The starting weights of a run: the base model's, or Dream's seeded random initialisation.

Input: `model.init` and `model.base` of the spec, the model config and `train.seed`. Output: a
full CPU state dict (the trainer's rank 0 broadcasts it into the sharded model) or, for
`model.init: random`, the initialised `DreamModel` itself (evaluation's `base` label). Both the
trainer and the evaluator build the random start here, so "base" is exactly step 0 of training.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dream_job.model.dream import DreamConfig, DreamModel
from dream_job.model.weights import read_state_dict
from dream_job.spec import DTYPES, JobSpec

# `model.dtype` (spec.DTYPES names the choices) as torch dtypes.
TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPES}


def random_init_model(config: DreamConfig, *, seed: int) -> DreamModel:
    """Return Dream with `init_weights()` applied after `torch.manual_seed(seed)` (fp32, on the CPU).

    Seeds the global CPU random stream and leaves it where the initialisation ends, as the trainer
    always has; a caller that must keep its own stream wraps the call in `torch.random.fork_rng`.
    """
    torch.manual_seed(seed)
    model = DreamModel(config)
    model.init_weights()
    return model


def initial_state_dict(spec: JobSpec, base_dir: Path, config: DreamConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Return the full CPU state dict a run starts from, in `dtype`.

    Args:
        spec: `model.init` picks the source: `pretrained` reads the safetensors of `base_dir`,
            `random` builds `random_init_model(config, seed=train.seed)`.
        base_dir: The local base-model folder (`train/build.resolve_base_dir`).
        config: The architecture, read from `base_dir`.
        dtype: The dtype of every tensor returned.

    Raises:
        WeightsMismatchError: The base weights' keys or shapes differ from `config`'s model.
    """
    if spec.model.init == "pretrained":
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in DreamModel(config).state_dict().items()}
        return read_state_dict(base_dir, shapes, dtype=dtype)
    model = random_init_model(config, seed=spec.train.seed)
    return {k: v.to(dtype) for k, v in model.state_dict().items()}
