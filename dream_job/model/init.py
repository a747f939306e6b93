"""The starting weights of a run: the base model's, or Dream's seeded random initialisation.

Input: `model.init` and `model.base` of the spec, the model config, `train.seed`, and a model
already built on the meta device and allocated (uninitialised) where it trains or evaluates.
Output: that model's Dream parameters, filled in place one tensor at a time
(`fill_parameters`), so no process ever holds a whole copy of the weights in host RAM:

- `pretrained`: the base folder's safetensors tensors, read one by one straight to the device
  (`weights.stream_weights`);
- `random`: on a GPU, every tensor drawn on the GPU from a generator seeded with `train.seed`
  (torchtitan's way: meta build, then initialise on the device); on the CPU, the tensors of
  `random_init_model` (the CPU bytes the tests pin, unchanged since the first release).

The GPU's random values differ from the CPU's (another generator) and may differ between GPU
models (CUDA's random kernels split the work by the device's multiprocessor count); the same
spec, seed, GPU model and torch version give the same bytes. Both the trainer and the evaluator
build the random start here, on the same device, so "base" is exactly step 0 of training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from dream_job.model.dream import DreamConfig, DreamModel, DreamRMSNorm
from dream_job.model.weights import stream_weights
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


def random_tensors(config: DreamConfig, *, seed: int, device: torch.device | str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield Dream's random initial tensors (fp32) as (state-dict key, tensor), one at a time.

    On the CPU: the tensors of `random_init_model(config, seed=seed)` (it seeds the global CPU
    stream). Elsewhere: `init_weights`' distributions (normal(0, initializer_range) for linear and
    embedding weights, zero biases, unit norm gains) drawn on `device`, in module order, from a
    private generator seeded with `seed`: only one tensor exists at a time, the host holds none.
    """
    device = torch.device(device)
    if device.type == "cpu":
        yield from random_init_model(config, seed=seed).state_dict().items()
        return
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    std = config.initializer_range
    with torch.device("meta"):
        reference = DreamModel(config)
    for name, module in reference.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            weight = torch.empty(module.weight.shape, dtype=torch.float32, device=device)
            yield f"{prefix}weight", weight.normal_(mean=0.0, std=std, generator=generator)
            if getattr(module, "bias", None) is not None:
                yield f"{prefix}bias", torch.zeros(module.bias.shape, dtype=torch.float32, device=device)
        elif isinstance(module, DreamRMSNorm):
            yield f"{prefix}weight", torch.ones(module.weight.shape, dtype=torch.float32, device=device)


def initial_tensors(
    spec: JobSpec, base_dir: Path, config: DreamConfig, device: torch.device | str
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the tensors a run starts from, one at a time, as (Dream key, tensor on `device` or the CPU).

    `model.init: pretrained` streams the safetensors of `base_dir` (keys and shapes are checked
    against `config` before the first tensor is read); `random` yields `random_tensors`.

    Raises:
        WeightsMismatchError: The base weights' keys or shapes differ from `config`'s model.
    """
    if spec.model.init == "pretrained":
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in DreamModel(config).state_dict().items()}
        return stream_weights(base_dir, shapes, device=device)
    return random_tensors(config, seed=spec.train.seed, device=device)


def plain_key(name: str) -> str:
    """Dream's key of a parameter name that peft's LoRA layers changed (`q_proj.base_layer.weight`)."""
    return name.replace(".base_layer.", ".")


@torch.no_grad()
def fill_parameters(
    model: nn.Module, tensors: Iterable[tuple[str, torch.Tensor]], *, skip: Callable[[str], bool] = lambda name: False
) -> int:
    """Copy each (Dream key, whole tensor) into `model`'s parameter of that key; return how many were filled.

    The tensor is cast to the parameter's dtype and moved to its device; an FSDP2 (DTensor)
    parameter takes only its own shard. Each tensor is dropped once copied, so the peak on top
    of the model is one whole tensor. Parameter names may carry peft's `.base_layer.`.

    Args:
        model: A plain, LoRA-injected or FSDP2-sharded Dream model, allocated on its device(s).
        tensors: (key, tensor) pairs covering every parameter not `skip`ped, e.g. `initial_tensors`.
        skip: Names of parameters filled elsewhere (LoRA adapters).

    Raises:
        ValueError: A parameter was left unfilled or a key names no parameter (a bug: callers check
            the keys against the config first).
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = {plain_key(name): param for name, param in model.named_parameters() if not skip(name)}
    filled: set[str] = set()
    for key, full in tensors:
        if key not in params:
            raise ValueError(f"`{key}` names no parameter of the model")
        param = params[key]
        if isinstance(param, DTensor):
            full = full.to(param.device_mesh.device_type)
            local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()
            param.to_local().copy_(local)
        else:
            param.copy_(full)
        filled.add(key)
        del full
    if missing := sorted(params.keys() - filled):
        raise ValueError(f"{len(missing)} parameter(s) were not filled: {', '.join(missing[:5])}")
    return len(filled)
