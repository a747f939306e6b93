"""The job-spec sections of what is trained: `ModelSpec`, `DataSpec`, `LoraSpec`, `TrainSpec`.

Job: the `model:`, `data:` and `train:` keys of a job file, with their defaults, limits and the
helpers that read them (`TrainSpec.save_interval`, `TrainSpec.num_checkpointed_layers`).
Imports no torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from dream_job.errors import SpecError
from dream_job.spec.section import Section

DTYPES = ("bfloat16", "float32", "float16")


class ModelSpec(Section):
    """Which model to fine-tune and how to hold it."""

    base: str = Field(
        "Dream-org/Dream-v0-Base-7B",
        description="Hugging Face hub id or local folder of the base model (config.json, "
        "tokenizer files and, for `init: pretrained`, safetensors weights).",
    )
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit) of `base`; pin a commit for reproducible runs."
    )
    tokenizer: str | None = Field(
        None, description="Hub id or local folder of the tokenizer; defaults to `base`."
    )
    dtype: Literal["bfloat16", "float32", "float16"] = Field(
        "bfloat16", description="Compute dtype of the model weights."
    )
    init: Literal["pretrained", "random"] = Field(
        "pretrained",
        description="`pretrained` loads the base weights; `random` initialises from `config.json` "
        "only (tiny smoke and test models).",
    )


class DataSpec(Section):
    """Where the s1K-1.1 rows come from and how they become token sequences."""

    dataset: str = Field(
        "simplescaling/s1K-1.1",
        description="Hub dataset id, or a local parquet/jsonl/json/arrow file or folder.",
    )
    revision: str | None = Field(None, description="Hub revision of `dataset`; pin it for reproducible runs.")
    split: str = Field("train", description="Dataset split to read.")
    trace_source: Literal["deepseek", "gemini"] = Field(
        "deepseek",
        description="Which columns hold the thinking trace and final attempt: "
        "`deepseek_thinking_trajectory`/`deepseek_attempt` (s1.1) or `gemini_*` (s1).",
    )
    system_prompt: str | None = Field(
        None,
        description="System message for the chat template; null lets the template insert its default "
        "('You are a helpful assistant.' for Dream).",
    )
    max_length: int = Field(2048, ge=16, description="Maximum tokens per training sequence (prompt + response + EOS).")
    truncation: Literal["right", "drop", "keep_answer"] = Field(
        "keep_answer",
        description="Over-length rows: `right` keeps the first max_length tokens (Dream's trainer), `drop` "
        "filters them, `keep_answer` shortens the thinking trace so the answer and EOS always fit.",
    )
    truncation_marker: str = Field(
        "\n\n[... thinking trace shortened ...]\n\n",
        description="Text put where `keep_answer` cut the thinking trace.",
    )
    holdout_size: int = Field(
        50, ge=0, description="Rows kept out of training for evaluation (deterministic by `seed`)."
    )
    seed: int = Field(42, description="Seed of the hold-out split.")
    num_proc: int = Field(1, ge=1, description="Processes used to tokenize.")
    max_bad_row_fraction: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Fail when more than this fraction of rows is skipped (missing fields, prompt over "
        "max_length).",
    )


class LoraSpec(Section):
    """LoRA adapter settings (used when `train.method` is `lora`)."""

    rank: int = Field(64, ge=1, description="LoRA rank r.")
    alpha: int = Field(128, ge=1, description="LoRA scaling alpha.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    targets: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Linear module names that get adapters.",
    )


class TrainSpec(Section):
    """Masked-diffusion SFT settings."""

    method: Literal["full", "full_8bit", "full_offload", "lora"] = Field(
        "full",
        description="`full`: AdamW with fp32 master weights and states; `full_8bit`: 8-bit AdamW, bf16 "
        "weights; `full_offload`: optimizer state and step on CPU; `lora`: adapters only.",
    )
    epochs: int = Field(3, ge=1, description="Passes over the training rows.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (null: all epochs).")
    global_batch_size: int = Field(16, ge=1, description="Sequences per optimizer step over all GPUs.")
    micro_batch_size: int = Field(1, ge=1, description="Sequences per forward/backward on one GPU.")
    learning_rate: float = Field(1e-5, gt=0.0, description="Peak learning rate.")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="Final learning rate as a fraction of the peak.")
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Fraction of steps of linear warm-up before cosine decay.")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay.")
    adam_betas: list[float] = Field([0.9, 0.95], min_length=2, max_length=2, description="AdamW betas.")
    grad_clip: float = Field(1.0, gt=0.0, description="Gradient-norm clipping threshold.")
    activation_checkpointing: bool | int = Field(
        True,
        description="Decoder layers recomputed in backward: `true` all (least memory), `false` none (fastest), "
        "or a number of layers spread evenly over the depth (in between).",
    )
    compile: bool = Field(
        False, description="Compile each decoder layer with `torch.compile` (faster on GPUs; the first steps "
        "take a minute longer).",
    )
    loss_weighting: Literal["cart", "linear", "inverse_t", "none"] = Field(
        "cart", description="Per-token loss weight: CART (Dream's), 1 - t, 1 / t or none."
    )
    cart_p: float = Field(0.1, gt=0.0, lt=1.0, description="CART geometric kernel parameter p.")
    cutoff: Literal["random_with_input_pad", "none"] = Field(
        "random_with_input_pad", description="Per-batch response cut-off (Dream's) or none."
    )
    time_eps: float = Field(1e-3, gt=0.0, lt=1.0, description="Noise level t is drawn from U(eps, 1).")
    save_every_steps: int | Literal["auto"] = Field(
        50, description="Write a resumable checkpoint every N optimizer steps (and at the last one, and when "
        "stopped); `auto`: the interval that minimises the expected loss to preemptions of the offer "
        "(Young-Daly: `dream-job estimate`/`launch` resolve it for the offer and the job the task carries has the "
        "number; a run not launched for an offer saves at the last step only).",
    )
    async_save: bool = Field(
        False, description="Write checkpoints in the background (`torch.distributed.checkpoint.async_save`): "
        "training waits only for a copy to host RAM, which keeps one copy of the checkpoint there for the "
        "whole run (`dream-job estimate` counts it against the machine's RAM).",
    )
    keep_checkpoints: int = Field(2, ge=1, description="Complete checkpoints kept on disk.")
    log_every_steps: int = Field(1, ge=1, description="Log a metrics line every N optimizer steps.")
    eval_every_steps: int | None = Field(
        50, ge=1, description="Validation loss on the held-out rows every N optimizer steps and at the last one "
        "(fixed t grid and masks: comparable across steps and runs); null: never.",
    )
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        ["tensorboard"], description="Metric sinks besides `train.log` and `metrics.jsonl`; `wandb` needs "
        "`pip install 'dream-job[wandb]'` and reads `WANDB_*` from the environment (`WANDB_MODE=offline` works).",
    )
    seed: int = Field(42, description="Seed for data order, noise and initialisation.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="`auto` uses CUDA when present.")
    on_memory_mismatch: Literal["refuse", "switch"] = Field(
        "refuse", description="When the memory model says `method` does not fit the GPUs the job got: `refuse` "
        "stops before any download, `switch` trains with the first method that fits (same recipe first).",
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings for `method: lora`.")

    @field_validator("save_every_steps", mode="before")
    @classmethod
    def _steps_or_auto(cls, value: Any) -> Any:
        # One message for the union instead of pydantic's one per branch.
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"must be a number of steps (1 or more) or `auto`, got `{value}`")

    @field_validator("activation_checkpointing", mode="before")
    @classmethod
    def _layers_or_flag(cls, value: Any) -> Any:
        # One message for the union instead of pydantic's one per branch.
        if isinstance(value, bool) or (isinstance(value, int) and value >= 0):
            return value
        raise ValueError(f"must be `true`, `false` or a number of layers (0 or more), got `{value}`")

    def save_interval(self) -> int | None:
        """Return the steps between checkpoint saves; None: the last step only (and stops).

        A launched job never reaches the machine with `auto`: the launch resolves it for the offer
        (`launch.payload.priced_spec`). A run still holding `auto` was not launched for an offer and is
        taken to be on a machine nobody preempts, where Young-Daly's interval is longer than any job
        (`budget.checkpoints`).
        """
        return None if self.save_every_steps == "auto" else self.save_every_steps

    def num_checkpointed_layers(self, num_layers: int) -> int:
        """Return how many of the model's `num_layers` decoder layers `activation_checkpointing` recomputes.

        Raises:
            SpecError: A layer count larger than the model has.
        """
        setting = self.activation_checkpointing
        if isinstance(setting, bool):
            return num_layers if setting else 0
        if setting > num_layers:
            raise SpecError(
                f"`train.activation_checkpointing` is {setting} but the model has {num_layers} decoder layers",
                hint=f"use a number from 0 to {num_layers}, `true` (all) or `false` (none)",
            )
        return setting
