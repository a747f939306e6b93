"""Disk a run needs on its machine: the base-model download, the export and the kept checkpoints.

Input: the spec (method, LoRA settings, `train.keep_checkpoints`), the model shape and whether the
base weights are downloaded. Output: bytes. Checkpoint sizes come from `budget.timing.checkpoint_bytes`
(the same figure the time model writes to disk), so the preflight's disk check and the estimate agree.
"""

from __future__ import annotations

from budget.shape import ModelShape
from budget.timing import calibration, checkpoint_bytes
from dream_job.spec import JobSpec


def disk_need_bytes(spec: JobSpec, shape: ModelShape, *, downloads_base: bool) -> float:
    """Return the bytes the run puts on its disk at most.

    The bf16 base weights when they are downloaded (a local folder is on disk already, a random
    init has none), the bf16 export, and `keep_checkpoints + 1` checkpoints: the kept ones plus the
    one being written before the oldest is pruned.

    Args:
        spec: The job; `train.method`, `train.lora` and `train.keep_checkpoints` are read.
        shape: The model's shape (`budget.shape.model_shape`).
        downloads_base: The base weights are downloaded from the Hub onto this disk.
    """
    train = spec.train
    trainable = (shape.lora_params(train.lora.rank, list(train.lora.targets)) if train.method == "lora"
                 else shape.num_params)
    adam8bit = calibration().section("memory")["adam8bit_bytes_per_param"]
    weights = 2 * shape.num_params  # bf16 safetensors
    checkpoints = checkpoint_bytes(shape, train.method, trainable, adam8bit) * (train.keep_checkpoints + 1)
    return (weights if downloads_base else 0) + weights + checkpoints
