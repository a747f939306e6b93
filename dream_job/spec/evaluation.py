"""The job-spec sections of evaluation: `EvalSpec` and its decoding settings, `SamplerSpec`.

Job: the `eval:` keys of a job file, and the sampler's sizes that the memory estimate and the
sampler share (`SAMPLER_LOGIT_ROWS`, `CUDA_GRAPH_PROMPT_MULTIPLE`, `round_up_prompt_length`).
Imports no torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dream_job.spec.section import Section

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


class SamplerSpec(Section):
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


class EvalSpec(Section):
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
