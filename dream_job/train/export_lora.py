"""LoRA in the export: find peft's layers, compute each delta with peft's own code, write `adapter/`.

Input: a model carrying peft LoRA layers (a `PeftModel`, or layers injected into a `DreamModel`)
and, on rank 0, the full LoRA tensors. Output: what `train/export_weights.py` needs to fold each
delta into its weight (`LoraMerge`, `peft_delta_weight`) and the `adapter/` folder
`PeftModel.from_pretrained` reads (`write_adapter`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

# The prefix `PeftModel` puts before the wrapped model's parameter names.
PEFT_PREFIX = "base_model.model."
# One LoRA layer: (adapter name, scaling, fan_in_fan_out), read from the peft module.
LoraLayerInfo = tuple[str, float, bool]


@dataclass(frozen=True)
class LoraMerge:
    """One LoRA delta to fold into a weight: peft's `get_delta_weight` of these adapter tensors."""

    b_key: str
    a_key: str
    adapter: str
    scaling: float
    fan_in_fan_out: bool = False


def find_lora_layers(model: nn.Module) -> dict[str, LoraLayerInfo]:
    """Map each peft LoRA module's name to (adapter, scaling, fan_in_fan_out).

    Scaling is read from the layer (alpha/r, rsLoRA, rank patterns already applied there).
    """
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora import Linear as LoraLinear

    layers: dict[str, LoraLayerInfo] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if not isinstance(module, LoraLinear) or module.lora_variant or module.merged_adapters:
            raise ValueError(f"cannot merge `{name}`: only plain LoRA on `nn.Linear`, not yet merged, is supported")
        if len(module.active_adapters) != 1:
            raise ValueError(f"`{name}` has active adapters {module.active_adapters}; export exactly one")
        adapter = module.active_adapters[0]
        if module.lora_bias[adapter]:  # the trainer never asks for it (train/build.py)
            raise ValueError(f"cannot merge `{name}`: LoRA with `lora_bias` is not supported")
        layers[name] = (adapter, float(module.scaling[adapter]), bool(getattr(module, "fan_in_fan_out", False)))
    if len({adapter for adapter, *_ in layers.values()}) > 1:
        raise ValueError("the model has more than one active LoRA adapter; export one at a time")
    return layers


def is_adapter_key(key: str) -> bool:
    """Whether state-dict `key` names a LoRA tensor (a `lora_*` segment), not a weight of the model."""
    return any(part.startswith("lora_") for part in key.split("."))


def peft_delta_weight(a: Tensor, b: Tensor, merge: LoraMerge) -> Tensor:
    """Return peft's `get_delta_weight` for adapters `a` (r x in) and `b` (out x r) of one layer, in fp32.

    The stand-in is a peft LoRA layer injected into a meta `nn.Linear` (no weights, no random
    draws), given the layer's own adapters and scaling. The result is a new tensor of out x in.
    """
    from peft import LoraConfig, inject_adapter_in_model

    rank, in_features = a.shape
    with torch.device("meta"):  # meta: peft's initialisation allocates nothing and draws no random numbers
        holder = nn.ModuleDict({"linear": nn.Linear(in_features, b.shape[0], bias=False)})
        holder = inject_adapter_in_model(
            LoraConfig(r=rank, lora_alpha=rank, target_modules=["linear"], init_lora_weights=False),
            holder, adapter_name=merge.adapter)
    layer = holder["linear"]
    layer.lora_A[merge.adapter].weight = nn.Parameter(a.float(), requires_grad=False)
    layer.lora_B[merge.adapter].weight = nn.Parameter(b.float(), requires_grad=False)
    layer.scaling[merge.adapter] = merge.scaling
    layer.fan_in_fan_out = merge.fan_in_fan_out
    return layer.get_delta_weight(merge.adapter)


def write_adapter(model: nn.Module, adapters: dict[str, Tensor], adapter: str, folder: Path) -> None:
    """Write peft's `adapter_model.safetensors` + `adapter_config.json` (`PeftModel.from_pretrained` reads them).

    `adapters` holds the full LoRA tensors under the model's state-dict keys (rank 0's CPU copies).
    """
    from peft.utils import get_peft_model_state_dict

    tensors = get_peft_model_state_dict(model, state_dict=adapters, adapter_name=adapter, save_embedding_layers=False)
    # Injected layers (no PeftModel around the DreamModel) lack the prefix PeftModel expects on load.
    prefixed = {key if key.startswith(PEFT_PREFIX) else PEFT_PREFIX + key: t for key, t in tensors.items()}
    tensors = {key: t.detach().to("cpu").contiguous() for key, t in prefixed.items()}
    folder.mkdir()
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    peft_config = copy.deepcopy(model.peft_config[adapter])
    peft_config.inference_mode = True  # as `PeftModel.save_pretrained` writes it
    peft_config.save_pretrained(str(folder))
