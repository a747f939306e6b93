"""The job spec: the only place the YAML shape is defined.

`load_spec(path, overrides)` (YAML reading in `spec_loader.py`, which knows no `JobSpec`) reads a job file, applies
`--set a.b.c=value` overrides and validates it into a `JobSpec` (pydantic v2, strict, unknown
keys are errors). Every stage
receives this object, never raw dicts. Errors name the key path, the file and line, the
value got and the values allowed, and suggest the closest key for typos.

This module imports no torch: the laptop CLI starts fast.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dream_job.errors import SpecError
from dream_job.spec_loader import load_yaml_model, parse_override  # parse_override: re-exported

# A job name and a run id: they name folders and bucket prefixes (`rundir.run_id`). Use `fullmatch`.
RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

DTYPES = ("bfloat16", "float32", "float16")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class ModelSpec(_Section):
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


class DataSpec(_Section):
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


class LoraSpec(_Section):
    """LoRA adapter settings (used when `train.method` is `lora`)."""

    rank: int = Field(64, ge=1, description="LoRA rank r.")
    alpha: int = Field(128, ge=1, description="LoRA scaling alpha.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    targets: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Linear module names that get adapters.",
    )


class TrainSpec(_Section):
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


# Masked positions per proposal chunk of the sampler (dream_job/diffusion/sampler.py): bounds its
# [rows, vocab] temporaries (V = 152,064 for Dream: 256 rows are ~150 MB each in fp32). The memory
# estimate (budget/memory.py) counts the same rows through `SamplerSpec.logit_rows`.
SAMPLER_LOGIT_ROWS = 256
# With CUDA graphs, prompts are left-padded to a multiple of this many tokens so batches of similar
# length share graphs (dream_job/diffusion/forwards.py); padding costs at most 63 masked-out columns.
CUDA_GRAPH_PROMPT_MULTIPLE = 64


def round_up_prompt_length(tokens: int, multiple: int) -> int:
    """Return `tokens` rounded up to a multiple of `multiple` (the padded prompt columns of a batch)."""
    return -(-tokens // multiple) * multiple


class SamplerSpec(_Section):
    """Diffusion decoding settings used by evaluation."""

    mode: Literal["reference", "fast"] = Field("fast", description="Dream's reference sampler or block-wise cached.")
    gen_length: int = Field(512, ge=1, description="Generated tokens per prompt.")
    steps: int = Field(512, ge=1, description="Denoising steps (reference mode).")
    alg: Literal["origin", "maskgit_plus", "topk_margin", "entropy"] = Field(
        "entropy",
        description="Which masked positions to reveal each step (reference mode, chosen with `torch.topk` as Dream's "
        "code, so exact ties go the same way; fast mode ranks by p(token)).",
    )
    temperature: float = Field(0.0, ge=0.0, description="0 means greedy (deterministic).")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    top_k: int | None = Field(
        50,
        ge=1,
        description="Keep the k most likely tokens before the softmax (null: all). It also changes the "
        "confidences that rank positions. 50 is what Dream's `diffusion_generate` uses when called without a "
        "`generation_config` (transformers 4.46.2's legacy default), so reference mode matches a user's call.",
    )
    alg_temp: float | None = Field(
        None, ge=0.0, description="Temperature of position selection (reference mode); null or 0 is greedy."
    )
    eps: float = Field(1e-3, gt=0.0, lt=1.0, description="Final time of the schedule (reference mode).")
    block_length: int = Field(32, ge=1, description="Block size of the fast sampler.")
    threshold: float = Field(
        0.9, gt=0.0, le=1.0, description="Confidence above which the fast sampler unmasks (1.0: one token per step)."
    )
    dual_cache: bool = Field(
        False,
        description="Fast sampler: also cache the masked suffix's keys/values at each block start "
        "(Fast-dLLM DualCache), so a step runs only the current block.",
    )
    cuda_graphs: bool = Field(
        True,
        description="On a GPU, record each forward once per batch shape as a CUDA graph and replay it (prompts are "
        "left-padded to a multiple of 64 tokens so batches share graphs); same results as eager calls on the same "
        "padded batch, several times faster at small batches. No effect on the CPU.",
    )
    compile: bool = Field(
        False,
        description="On a GPU, compile each decoder layer (torch.compile) before recording the graphs: fuses its "
        "small kernels, which bound a batch-1 step; each new batch shape costs a compile first.",
    )

    def padded_prompt_length(self, tokens: int) -> int:
        """Return the columns a batch whose longest prompt has `tokens` tokens gets (CUDA graphs pad it)."""
        return round_up_prompt_length(tokens, CUDA_GRAPH_PROMPT_MULTIPLE if self.cuda_graphs else 1)

    @property
    def greedy_top_k(self) -> bool:
        """Whether proposals are argmaxes ranked by p(x0) renormalised over the top k (no sampling, no top-p)."""
        return self.temperature == 0 and self.top_p in (None, 1.0) and self.top_k is not None

    def logit_rows(self, batch_size: int, context_tokens: int) -> int:
        """Return the most positions whose logits the sampler holds at once for `batch_size` prompts.

        Reference mode computes the logits of every position of the batch, as Dream's forward
        does (`batch_size` x `context_tokens`, the padded prompt plus `gen_length`), so that its
        steps equal Dream's bit for bit; fast mode's greedy top-k step proposes for every position
        of the block at once (fixed shapes, so it can run inside a CUDA graph); otherwise fast
        proposals go in chunks of `SAMPLER_LOGIT_ROWS`.
        """
        if self.mode == "reference":
            return batch_size * context_tokens
        if self.greedy_top_k:
            return batch_size * min(self.block_length, self.gen_length)
        return min(batch_size * self.gen_length, SAMPLER_LOGIT_ROWS)


class EvalSpec(_Section):
    """Evaluation of the base and fine-tuned models."""

    suites: list[Literal["s1k_holdout", "gsm8k", "math500"]] = Field(
        ["s1k_holdout", "gsm8k", "math500"], description="Benchmarks to run."
    )
    models: list[Literal["base", "final"]] = Field(["base", "final"], description="Which models to evaluate.")
    limit: int | None = Field(None, ge=1, description="Evaluate at most this many items per suite (null: all).")
    seed: int = Field(0, description="Seed of the `limit` subsample and of sampling.")
    batch_size: int = Field(8, ge=1, description="Prompts decoded together.")
    processes: int | None = Field(
        None, ge=1, description="Decoding processes, each with a whole model on its own GPU and every n-th batch "
        "(null: one per visible GPU of `train.device` cuda, one on the CPU). Greedy decoding gives the same items "
        "for any number.",
    )
    sampler: SamplerSpec = Field(default_factory=SamplerSpec, description="Decoding settings.")
    sources: dict[Literal["s1k_holdout", "gsm8k", "math500"], str] = Field(
        {},
        description="Per-suite override of where the items come from: a local .jsonl/.json/.parquet/.arrow "
        "file (or folder of them) in the suite's schema, or a hub dataset id (split `test`). Defaults: "
        "`<run_dir>/data/holdout.jsonl`, `openai/gsm8k` (config `main`), `HuggingFaceH4/MATH-500`.",
    )
    prefill_think: bool = Field(
        True,
        description="End each prompt with the `<|im_start|>think\\n` header, as s1's inference prompt and the "
        "training layout do; false lets the model write (or skip) the header itself.",
    )


class BudgetSpec(_Section):
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


class ArtifactsSpec(_Section):
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


class JobSpec(BaseModel):
    """A whole job: model, data, training, evaluation, budget and artifacts."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

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
