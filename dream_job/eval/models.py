"""Find and load the model and tokenizer that evaluation runs on.

A model is named by a label and an optional folder:

- `base` (no folder): the job's base model, `model.base` (a local folder or a hub snapshot). For
  `model.init: random` (tiny smoke models) it is the random start of training, built exactly as
  the trainer builds it, on the same device (`model/init.py: random_tensors`);
- `final` (no folder): the run's export, `<run_dir>/export/`;
- any label with a folder: that HF folder (`config.json` + safetensors).

The tokenizer is the run's own (`<run_dir>/data/tokenizer/`, written by prep) when present,
else `model.tokenizer` or `model.base`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dream_job.data.tokenizer import MASK_TOKEN, load_tokenizer
from dream_job.errors import CheckpointError, DataError
from dream_job.model.dream import DreamConfig, DreamModel
from dream_job.model.init import TORCH_DTYPES, fill_parameters, random_tensors
from dream_job.model.weights import INDEX_NAME, SINGLE_FILE_NAME, load_safetensors_weights, weights_digest
from dream_job.rundir import EXPORT_DIR, TOKENIZER_DIR
from dream_job.spec import JobSpec

logger = logging.getLogger(__name__)



@dataclass
class EvalModel:
    """A model ready to decode, where it came from, and the token ids the sampler needs."""

    model: DreamModel
    config: DreamConfig
    source: str  # where the weights came from, for people (summary, report)
    fingerprint: str  # identifies the weights independently of where the run dir is mounted; keys reuse
    mask_id: int
    eos_id: int
    pad_id: int


def eval_device(spec: JobSpec) -> torch.device:
    """Return the device of `train.device` (`auto`: CUDA when present)."""
    if spec.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec.train.device)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from, known without loading them (see `describe_eval_model`)."""

    config: DreamConfig
    source: str  # for people (summary, report)
    fingerprint: str  # identifies the weights independently of where the run dir is mounted; keys reuse
    folder: Path | None  # the HF folder of the weights; None for `base` with `model.init: random`


def describe_eval_model(spec: JobSpec, *, label: str, model_dir: Path | None, tokenizer: Any) -> ModelSource:
    """Find the model a label names (see the module docstring) and check it, without reading its weights.

    Raises:
        CheckpointError: The folder is missing, is not a Dream checkpoint; `final` before training
            exported anything.
        DataError: The tokenizer's EOS or mask id differs from the model config's.
        DreamJobError: The base model cannot be found or downloaded.
    """
    if model_dir is None and label == "base":
        from dream_job.train.build import resolve_base_dir

        base_dir = resolve_base_dir(spec)
        if spec.model.init == "random":
            config = _read_config(base_dir)
            source = f"{spec.model.base} (random init, seed {spec.train.seed})"
            return _checked(ModelSource(config, source, json.dumps([source, config.to_hf_dict()], sort_keys=True),
                                        None), tokenizer)
        folder = base_dir
        source = f"{spec.model.base}@{spec.model.revision or 'default'}"
    elif model_dir is None and label == "final":
        folder = spec.run_dir() / EXPORT_DIR
        if not folder.is_dir():
            raise CheckpointError(
                f"the run has no exported model at `{folder}` to evaluate as `final`",
                hint="train first (`dream-job train`), or pass the folder of a Dream checkpoint",
            )
        source = str(folder.resolve())
    elif model_dir is None:
        raise CheckpointError(
            f"model label `{label}` is neither `base` nor `final` and no model folder was given",
            hint="pass the folder of a Dream checkpoint to evaluate under this label",
        )
    else:
        folder = Path(model_dir)
        source = str(folder.resolve())
    config = _read_config(folder)
    if not ((folder / INDEX_NAME).is_file() or (folder / SINGLE_FILE_NAME).is_file()):
        raise CheckpointError(
            f"`{folder}` is not a Dream checkpoint: it has no `{INDEX_NAME}` or `{SINGLE_FILE_NAME}`",
            hint="pass a folder written by `dream-job train` (`<run_dir>/export/`) or a Dream hub snapshot",
        )
    # The weights' bytes, not the folder's name: no item decoded by other (or missing) weights is reused.
    return _checked(ModelSource(config, source, _folder_fingerprint(folder), folder), tokenizer)


def load_described_model(spec: JobSpec, described: ModelSource) -> EvalModel:
    """Load the weights of a described model in `model.dtype` on `train.device`.

    Raises:
        CheckpointError: The weights do not match the config.
    """
    dtype, device, config = TORCH_DTYPES[spec.model.dtype], eval_device(spec), described.config
    if described.folder is None:
        with torch.device("meta"):
            model = DreamModel(config)
        model.to(dtype).to_empty(device=device)
        model.init_buffers(device)
        with torch.random.fork_rng(devices=[]):  # leave the caller's CPU random stream alone
            fill_parameters(model, random_tensors(config, seed=spec.train.seed, device=device))  # the trainer's start
    else:
        with torch.device("meta"):
            model = DreamModel(config)
        load_safetensors_weights(model, described.folder, dtype=dtype, device=device)
    return EvalModel(model.eval(), config, described.source, described.fingerprint, config.mask_token_id,
                     config.eos_token_id, config.pad_token_id)


def load_eval_model(spec: JobSpec, *, label: str, model_dir: Path | None, tokenizer: Any) -> EvalModel:
    """Describe (`describe_eval_model`) and load (`load_described_model`) the model a label names."""
    return load_described_model(spec, describe_eval_model(spec, label=label, model_dir=model_dir, tokenizer=tokenizer))


def load_eval_tokenizer(spec: JobSpec) -> Any:
    """Load the run's tokenizer (`<run_dir>/data/tokenizer/`), else the spec's.

    Raises:
        DataError: The tokenizer cannot be loaded or lacks EOS, mask token or chat template.
    """
    run_tokenizer = spec.run_dir() / TOKENIZER_DIR
    if run_tokenizer.is_dir():
        return load_tokenizer(str(run_tokenizer), key=TOKENIZER_DIR)
    if spec.model.tokenizer:
        return load_tokenizer(spec.model.tokenizer, spec.model.revision, key="model.tokenizer")
    return load_tokenizer(spec.model.base, spec.model.revision, key="model.base")


def _read_config(folder: Path) -> DreamConfig:
    """Read a Dream `config.json`, refusing folders that hold no Dream model."""
    if not folder.is_dir():
        raise CheckpointError(f"model folder `{folder}` does not exist", hint="check the path")
    path = folder / "config.json"
    hint = "pass a folder written by `dream-job train` (`<run_dir>/export/`) or a Dream hub snapshot"
    if not path.is_file():
        raise CheckpointError(f"`{folder}` is not a Dream checkpoint: it has no `config.json`", hint=hint)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model_type = data.get("model_type", "Dream")
        if model_type != "Dream":
            raise CheckpointError(
                f"`{folder}` is not a Dream checkpoint: `config.json` has `model_type` `{model_type}`, "
                f"expected `Dream`",
                hint=hint,
            )
        return DreamConfig.from_dict(data)
    except (ValueError, TypeError, AttributeError) as exc:  # bad JSON, or maths Dream does not have
        raise CheckpointError(
            f"`{path}` is not a Dream config", caused_by=[str(exc).splitlines()[0]], hint=hint
        ) from None


def _folder_fingerprint(folder: Path) -> str:
    """Hash a checkpoint folder's config, weight index and the bytes of every weight file (`weights_digest`).

    Not its path: a run directory mounted elsewhere after a restart keeps its finished items. Other
    weights (a re-export that trained further, a shard replaced) change it; missing weights are
    refused rather than answered from the cache.

    Raises:
        CheckpointError: A weight file is missing.
    """
    digest = hashlib.sha256()
    for name in ("config.json", INDEX_NAME):
        if (folder / name).is_file():
            digest.update((folder / name).read_bytes())
    digest.update(weights_digest(folder).encode())
    return digest.hexdigest()


def _checked(described: ModelSource, tokenizer: Any) -> ModelSource:
    """Check that the tokenizer's EOS and mask ids are the config's (the sampler uses the config's, as training does)."""
    config = described.config
    mask_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    for what, tokenizer_id, config_id in (
        ("EOS", tokenizer.eos_token_id, config.eos_token_id),
        ("mask", mask_id, config.mask_token_id),
    ):
        if tokenizer_id != config_id:
            raise DataError(
                f"the tokenizer's {what} id is `{tokenizer_id}` but the model config says `{config_id}`",
                hint="use the tokenizer the model was trained with (`<run_dir>/data/tokenizer/` or `model.tokenizer`)",
            )
    return described
