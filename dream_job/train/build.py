"""Build what a training run needs: the base model folder, the FSDP2-sharded model, the optimizer.

Methods (`train.method`):
- `full`: fp32 master weights, gradients and AdamW states, bf16 compute (FSDP2
  mixed precision; Dream's recipe, for several GPUs).
- `full_8bit`: weights in the compute dtype and torchao's 8-bit AdamW. torchao over
  bitsandbytes because torchao's optimizer states are tensor subclasses that work with
  FSDP2's DTensor shards and with torch.distributed.checkpoint; bitsandbytes' paged 8-bit
  states do not shard under FSDP2.
- `full_offload`: fp32 master weights and AdamW states on the CPU (FSDP2 CPU offload), so
  the optimizer step runs on the CPU; needs a CUDA GPU for the compute.
- `lora`: peft LoRA adapters (fp32) injected into the frozen base (compute dtype).

The model is built on the meta device, sharded (`fully_shard` per decoder layer, then the
root), allocated on the device, and filled one tensor at a time (`model.init`): each rank reads
every base tensor (through one host buffer) onto its GPU and keeps its own shard, or draws the
random start on the GPU. No process holds a whole copy of the weights in host RAM: start-up at
Dream 7B needs the process itself plus one tensor (bench/RESULTS.md, "Host memory per stage").

One process with one dtype (`full_8bit`, or `full` computing in fp32) trains the plain module:
FSDP2 would still copy every weight in and out of its all-gather buffers at each forward and
backward and cast every gradient for a reduce-scatter to itself, which measured 42 % of a
2048-token micro-step of Dream 7B on one H100 (bench/RESULTS.md). Checkpoints are the same DCP
format either way, so a run resumes across world sizes in both directions.

With `train.compile`, each decoder layer's `forward` is compiled (`torch.compile`); FSDP2's hooks
and activation checkpointing stay outside the compiled code, and parameter names do not change.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from dream_job.data.tokenizer import is_local
from dream_job.diffusion.lm import DreamForMaskedDiffusion
from dream_job.errors import InputError, SpecError
from dream_job.model.dream import DreamConfig
from dream_job.model.init import TORCH_DTYPES, fill_parameters, initial_tensors
from dream_job.spec import JobSpec
from dream_job.train.distributed import Dist

logger = logging.getLogger(__name__)

@dataclass
class Built:
    """The sharded model, its optimizer and where the base came from."""

    model: DreamForMaskedDiffusion
    optimizer: torch.optim.Optimizer
    config: DreamConfig
    base_dir: Path
    num_trainable: int


def resolve_base_dir(spec: JobSpec) -> Path:
    """Return a local folder holding the base model's config (and weights, for `init: pretrained`).

    A hub id is downloaded with `huggingface_hub.snapshot_download` (weights only when needed).

    Raises:
        InputError: The folder has no `config.json`, or no weights for a pretrained start.
    """
    base, pretrained = spec.model.base, spec.model.init == "pretrained"
    if is_local(base):
        folder = Path(base).expanduser()
    else:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.py", "*.txt", *(["*.safetensors"] if pretrained else [])]
        try:
            folder = Path(snapshot_download(base, revision=spec.model.revision, allow_patterns=patterns))
        except Exception as exc:  # the hub client raises many types; all mean "cannot fetch"
            raise InputError(
                f"cannot download the base model `{base}` given by `model.base`", key="model.base", value=base,
                caused_by=[str(exc).splitlines()[0] if str(exc) else type(exc).__name__],
                hint="check the id and revision; gated or private repos need `HF_TOKEN` in the environment",
            ) from None
    if not (folder / "config.json").is_file():
        raise InputError(
            f"`model.base` folder `{folder}` has no `config.json`", key="model.base", path=folder,
            hint="point `model.base` at a Dream model folder (config.json, tokenizer and safetensors weights)",
        )
    if pretrained and not any(folder.glob("*.safetensors")):
        raise InputError(
            f"`model.base` folder `{folder}` has no safetensors weights but `model.init` is `pretrained`",
            key="model.base", path=folder,
            hint="add the weights, or `--set model.init=random` to train from a random start",
        )
    return folder


def _check_method(spec: JobSpec, device: torch.device) -> None:
    """Fail at start, not after an hour, when the method cannot run here."""
    method = spec.train.method
    if method == "full_offload" and device.type != "cuda":
        raise SpecError(
            "`train.method` `full_offload` moves the optimizer to the CPU and needs a CUDA GPU for the compute",
            key="train.method", value="full_offload",
            hint="on a CPU machine use `--set train.method=full`",
        )
    if method == "full_8bit":
        try:
            import torchao.optim  # noqa: F401
        except ImportError:
            raise InputError(
                "`train.method` `full_8bit` needs torchao, which is not installed", key="train.method",
                value="full_8bit",
                hint="`pip install torchao` (it is in the container image)",
            ) from None


def shard_model(spec: JobSpec, config: DreamConfig, dist_info: Dist) -> DreamForMaskedDiffusion:
    """Build the training model on meta, add LoRA adapters, shard it with FSDP2 and allocate it (uninitialised).

    One process with a single dtype gets the plain module instead (`JobSpec.wraps_in_fsdp`).

    Weights are materialised on the device (on the CPU for `full_offload`) in the master dtype:
    fp32 for `full`/`full_offload`, the compute dtype for `full_8bit` and LoRA's frozen base.
    """
    train = spec.train
    compute_dtype = TORCH_DTYPES[spec.model.dtype]
    master_dtype = torch.float32 if train.method in ("full", "full_offload") else compute_dtype
    with torch.device("meta"):
        model = DreamForMaskedDiffusion(config)
    model.model.set_checkpointed_layers(train.num_checkpointed_layers(config.num_hidden_layers))
    model.to(master_dtype)
    if train.method == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lora = LoraConfig(r=train.lora.rank, lora_alpha=train.lora.alpha, lora_dropout=train.lora.dropout,
                          target_modules=list(train.lora.targets))
        model = inject_adapter_in_model(lora, model)
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name)
            if "lora_" in name:
                param.data = param.data.to(torch.float32)
    if train.compile:
        for layer in model.model.layers:
            layer.forward = torch.compile(layer.forward)  # instance attribute: hooks and names stay as they are
    if not spec.wraps_in_fsdp(train.method, dist_info.world_size):
        model.to_empty(device=dist_info.device)
        model.init_buffers(dist_info.device)
        return model
    mesh = init_device_mesh(dist_info.device.type, (dist_info.world_size,))
    shard_kwargs: dict[str, Any] = {
        "mesh": mesh,
        "mp_policy": MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32),
        "offload_policy": CPUOffloadPolicy() if train.method == "full_offload" else OffloadPolicy(),
    }
    for layer in model.model.layers:
        fully_shard(layer, **shard_kwargs)
    fully_shard(model, **shard_kwargs)
    model.to_empty(device="cpu" if train.method == "full_offload" else dist_info.device)
    model.init_buffers(dist_info.device)
    return model


def reset_lora(model: torch.nn.Module, seed: int) -> None:
    """Initialise LoRA adapters as peft does (B = 0: training starts exactly at the base model)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_lora_parameters"):
            module.reset_lora_parameters("default", True)


def make_optimizer(spec: JobSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Return the method's optimizer over the trainable parameters."""
    train = spec.train
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = {"lr": train.learning_rate, "betas": tuple(train.adam_betas), "weight_decay": train.weight_decay}
    if train.method == "full_8bit":
        from torchao.optim import AdamW8bit

        # Weights are bf16 here: at lr 1e-5 an update is ~1e-3 of a weight, below bf16's resolution
        # (2^-8), so round-to-nearest would drop most updates; stochastic rounding keeps them in expectation.
        bf16 = all(p.dtype == torch.bfloat16 for p in params)
        return AdamW8bit(params, bf16_stochastic_round=bf16, **kwargs)
    return torch.optim.AdamW(params, foreach=True, **kwargs)


def build_training(spec: JobSpec, dist_info: Dist) -> Built:
    """Build the sharded training model, fill it one tensor at a time (`model.init`), and make its optimizer.

    Raises:
        InputError, SpecError: The base model is missing or the method cannot run on this hardware.
    """
    train = spec.train
    _check_method(spec, dist_info.device)
    base_dir = resolve_base_dir(spec)
    config = DreamConfig.from_pretrained_dir(base_dir)
    model = shard_model(spec, config, dist_info)
    started = time.perf_counter()
    # LoRA adapters are not Dream weights: `reset_lora` initialises them below.
    fill_parameters(model, initial_tensors(spec, base_dir, config, dist_info.device),
                    skip=lambda name: "lora_" in name)
    if dist_info.device.type == "cuda":
        torch.cuda.synchronize(dist_info.device)
    logger.info("weights ready (%s) in %.1f s", spec.model.init, time.perf_counter() - started)
    if train.method == "lora":
        reset_lora(model, train.seed)
    optimizer = make_optimizer(spec, model)
    num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("model %s: %s parameters, %s trainable (%s)", spec.model.base, f"{config.num_parameters():,}",
                f"{num_trainable:,}", train.method)
    return Built(model=model, optimizer=optimizer, config=config, base_dir=base_dir, num_trainable=num_trainable)
