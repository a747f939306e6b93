"""Memory model of dream-job's trainer: peak GPU memory per GPU and host RAM, per method.

Mirrors `dream_job/train/build.py` and `loop.py` (FSDP2 full shard over the GPU count; one
`fully_shard` unit per decoder layer plus the root unit embedding + final norm + lm_head;
`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`):

- `full`: fp32 master params, fp32 grads, fp32 AdamW m and v, sharded: 16 B/param / GPUs.
  `foreach` AdamW allocates one more fp32 param-sized temporary (sqrt of v) in the step.
- `full_8bit`: bf16 params and grads (2 + 2 B) + torchao AdamW8bit states (~2.05 B measured), sharded.
- `full_offload`: params, grads and AdamW states in host RAM (pinned fp32, 16 B/param, plus the
  4 B/param `foreach` temporary of the CPU step); the GPU holds bf16 compute copies only.
- `lora`: frozen bf16 base (2 B/param, sharded) + fp32 adapters with fp32 grads and AdamW (16 B).

Terms every method shares: the root unit's bf16 params stay unsharded from forward to the end of
backward (FSDP2 does not reshard the root; also on one GPU, where it still copies), two decoder
layers are unsharded at once (current + prefetch). **Gradient accumulation** adds nothing: the
trainer reduce-scatters after every micro-step (with sync off, FSDP2 would keep an unsharded fp32
gradient of every parameter on each GPU, measured +5.4 GiB on a 14-layer model, so the trainer
does not do that). Activations: with per-layer checkpointing the bf16 input of each layer
(2·T·d B) plus one layer's recompute and backward workspace; without, every layer's saved
tensors. The loss applies the lm_head to masked rows only, in chunks of 1024 rows recomputed in
backward. The save peak (after `zero_grad`, so no grads) gathers one whole tensor at a time.

Checked on 1x H100 (2026-11-24, torch 2.11, Dream 7B shape, the trainer's `build_training` and
micro-step sequence at 2048 tokens with every response position masked): `max_memory_allocated`
in forward/backward was 51.1 GiB for full_8bit without accumulation (model: 50.5) and 32.7 for
a 14-layer full_8bit (model: 31.9), both measured before the trainer dropped no-sync
accumulation; reserved memory was 9-22 % above allocated. Sizes are
bytes; results in GiB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from budget.shape import ModelShape

GIB = 2**30
LOSS_CHUNK_ROWS = 1024  # DreamForMaskedDiffusion.loss_chunk_size
TRAINABLE_FULL = ("full", "full_8bit", "full_offload")
# The stages whose host RAM the model gives (`host_stage_bytes`) and bench/host_memory.py measures.
HOST_STAGES = ("prep", "weight load", "first step", "steady step", "checkpoint save", "export", "eval model load")


@dataclass(frozen=True)
class MemoryConstants:
    """Calibration of the memory model (`[memory]` of budget/data/calibration.toml)."""

    cuda_context_gib: float
    nccl_gib: float
    allocator_headroom: float
    host_per_rank_gib: float
    unknown_host_ram_per_vram: float
    adam8bit_bytes_per_param: float
    loss_bytes_per_logit: float
    compiled_activation_factor: float
    host_compile_gib: float = 0.0
    host_eval_process_gib: float = 0.0
    host_prep_gib: float = 0.0
    host_prep_worker_gib: float = 0.0


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU memory by phase and the host RAM a node needs.

    Attributes:
        phases_gib: Allocated GiB per GPU in `train` (forward/backward), `step` (optimizer),
            `save` (checkpoint and export) and `eval` (the sampler), before context and headroom.
        breakdown_gib: The terms of the `train` phase.
        peak_gib: max(phases) x (1 + allocator headroom) + CUDA context (+ NCCL): what must fit.
        host_gib: Peak host RAM of the node (all ranks), GiB: the largest of `host_stages_gib`.
        host_stages_gib: Host RAM of the node in each of `HOST_STAGES`, GiB.
    """

    phases_gib: dict[str, float]
    breakdown_gib: dict[str, float]
    peak_gib: float
    host_gib: float
    host_stages_gib: dict[str, float] = field(default_factory=dict)

    @property
    def host_peak_stage(self) -> str:
        return max(self.host_stages_gib, key=self.host_stages_gib.__getitem__)

    @property
    def peak_phase(self) -> str:
        return max(self.phases_gib, key=self.phases_gib.__getitem__)


def activation_bytes_per_token_layer(shape: ModelShape, *, lora_in_features: int = 0) -> float:
    """Bytes one decoder layer saves for backward per token (bf16, flash/efficient SDPA, no L x L).

    RMSNorm inputs and fp32 internals (~4·d elements for the two norms), their outputs (2·d),
    q, k, v (d + 2·kv), kv heads repeated for GQA (2·d), attention output and its contiguous
    copy for o_proj (2·d), the residual stream into norm 2 (d), MLP gate, up, silu(gate) and
    their product (4·I): 12·d + 2·kv + 4·I elements of 2 B. LoRA with dropout adds one dropped
    copy (2 B) and a 1-byte mask per targeted linear's input.
    """
    d, kv, inter = shape.hidden, shape.kv_dim, shape.intermediate
    return 2.0 * (12 * d + 2 * kv + 4 * inter) + 3.0 * lora_in_features


def gpu_state_bytes(shape: ModelShape, method: str, num_gpus: int, *, trainable: int,
                    adam8bit: float) -> dict[str, float]:
    """Return the sharded per-GPU bytes of params, optimizer states and (keys `grads ...`) gradients."""
    p, n = shape.num_params, num_gpus
    if method == "full":
        return {"params fp32": 4 * p / n, "AdamW m,v fp32": 8 * p / n, "grads fp32": 4 * p / n}
    if method == "full_8bit":
        return {"params bf16": 2 * p / n, "AdamW8bit states": adam8bit * p / n, "grads bf16": 2 * p / n}
    if method == "full_offload":
        return {}
    if method == "lora":
        return {"base bf16 (frozen)": 2 * p / n, "adapters+AdamW fp32": 12 * trainable / n,
                "grads fp32 (adapters)": 4 * trainable / n}
    raise ValueError(f"unknown method {method!r}")


def estimate_memory(
    shape: ModelShape,
    *,
    method: str,
    num_gpus: int,
    micro_batch_size: int,
    max_length: int,
    checkpointed_layers: int,
    fsdp: bool,
    compiled: bool,
    accumulation_steps: int,
    lora_rank: int,
    lora_targets: list[str],
    lora_dropout: float,
    eval_batch_size: int,
    eval_context: int,
    constants: MemoryConstants,
    eval_logit_rows: int,
    init: str = "pretrained",
    prep_processes: int = 1,
) -> MemoryEstimate:
    """Return the per-GPU peak and host RAM of one training run (see the module docstring).

    Args:
        accumulation_steps: Micro-steps per optimizer step on each GPU
            (global batch / (micro batch x GPUs)). The trainer reduce-scatters after every
            micro-step, so accumulation adds no unsharded gradients.
        checkpointed_layers: Decoder layers recomputed in backward (the others keep all their activations).
        fsdp: The model is wrapped in FSDP2 (`JobSpec.wraps_in_fsdp`); one process without it holds
            no unsharded copies, prefetch or reduce-scatter buffers.
        compiled: The decoder layers are compiled (`train.compile`): a layer kept whole saves
            `compiled_activation_factor` of the eager bytes (inductor recomputes cheap pointwise ops).
        eval_context: Prompt + generated tokens per sequence of the sampler (0: no evaluation).
        eval_logit_rows: Masked positions whose logits the sampler holds at once
            (`SamplerSpec.logit_rows`).
        init: `model.init`: `pretrained` reads the base weights, `random` draws them on the GPU.
        prep_processes: `data.num_proc`: tokenizing processes of the prep stage.
    """
    n, p, d, vocab = num_gpus, shape.num_params, shape.hidden, shape.vocab
    is_lora = method == "lora"
    trainable = shape.lora_params(lora_rank, lora_targets) if is_lora else p
    layer, root, embed = shape.layer_params, shape.root_params, shape.embed_params
    states = gpu_state_bytes(shape, method, n, trainable=trainable, adam8bit=constants.adam8bit_bytes_per_param)
    tokens = micro_batch_size * max_length
    lora_in = shape.lora_input_features(lora_targets) if is_lora and lora_dropout > 0 else 0
    per_layer = activation_bytes_per_token_layer(shape, lora_in_features=lora_in)

    grads = {k: v for k, v in states.items() if k.startswith("grads")}
    held = {k: v for k, v in states.items() if k not in grads}
    # Held through forward/backward: params, optimizer states, the root unit unsharded (FSDP2),
    # what checkpointing saves and the layers kept whole. On top (FSDP2), the larger of two moments of the last micro-step's backward
    # (zero_grad freed the sharded grads at the previous step): its start, with the loss chunk,
    # one layer prefetched, the lm_head grad and the no-sync grads of the earlier micro-steps; and
    # its end, with one layer's recompute and backward, the root's grads and all sharded grads
    # (the no-sync grads were reduce-scattered into them layer by layer, except the root's).
    common = dict(held)
    kept_layers = shape.num_layers - checkpointed_layers
    if checkpointed_layers:
        common["activations: inputs of checkpointed layers"] = checkpointed_layers * tokens * d * 2
    if kept_layers:
        kept_per_layer = per_layer * (constants.compiled_activation_factor if compiled else 1.0)
        common["activations: layers kept whole"] = kept_layers * tokens * kept_per_layer
    # The layer in backward: recomputed activations + their gradients, or only the gradients.
    workspace = (2 if checkpointed_layers else 1) * tokens * per_layer
    common["activations: embeddings, final hidden, grads"] = tokens * d * 12
    loss_chunk = min(LOSS_CHUNK_ROWS, tokens) * vocab * constants.loss_bytes_per_logit
    if not fsdp:
        # The plain module: gradients accumulate in place, so they are all there from the second
        # micro-step on; on top, the larger of the loss chunk and one layer's backward.
        start = {"loss: one logits chunk": loss_chunk, **grads}
        end = {"activations: 1-layer recompute/backward": workspace, **grads}
    else:
        common["unsharded bf16 root (embed + lm_head)"] = 2 * root
        start = {"loss: one logits chunk": loss_chunk, "unsharded bf16: 1 layer (prefetch)": 2 * layer}
        end = {"unsharded bf16: 2 layers": 4 * layer, "activations: 1-layer recompute/backward": workspace, **grads}
        if not is_lora:
            start["unsharded bf16 lm_head grad"] = 2 * embed
            end["unsharded bf16 grads: root + 1 layer"] = 2 * root + 2 * layer
            end["reduce-scatter fp32 buffer"] = 4 * layer
    moment = max(start, end, key=lambda terms: sum(terms.values()))
    terms = common | moment
    train = sum(terms.values())

    persistent = sum(held.values()) + sum(grads.values())
    if method == "full":
        step_temp = 4 * p / n  # foreach AdamW: sqrt(v) for every param at once
    elif method == "full_8bit":
        step_temp = 8 * embed / n  # torchao's per-param fp32 temporaries (measured: 8 B x the embedding)
    elif is_lora:
        step_temp = 4 * trainable / n
    else:
        step_temp = 0.0
    master_bytes = 4 if method in ("full", "full_offload") else 2
    # After zero_grad; the export gathers one tensor at a time and casts an fp32 one to bf16 on the GPU.
    save = sum(held.values()) + master_bytes * embed + (2 * embed if master_bytes == 4 else 0)
    evaluation = 0.0
    if eval_context:
        # bf16 weights; one layer's transients over the batch; the keys/values of every layer twice
        # (the block start's and the step's gathered copy, or the CUDA graphs' buffers); and the
        # proposal logits: bf16 out of lm_head, fp32 copy, probabilities and a temporary (12 B each).
        batch_tokens = eval_batch_size * eval_context
        kv = 2 * shape.num_layers * 4 * shape.kv_dim
        evaluation = 2 * p + batch_tokens * (per_layer + kv) + eval_logit_rows * vocab * 12
    phases = {"train": train, "step": persistent + step_temp, "save": save, "eval": evaluation}

    overhead = constants.cuda_context_gib + (constants.nccl_gib if n > 1 else 0.0)
    peak = max(phases.values()) / GIB * (1 + constants.allocator_headroom) + overhead
    stages = host_stage_bytes(shape, method=method, num_gpus=n, trainable=trainable, lora_targets=lora_targets,
                              init=init, compiled=compiled, constants=constants, prep_processes=prep_processes)
    return MemoryEstimate(
        phases_gib={k: v / GIB for k, v in phases.items()},
        breakdown_gib={k: v / GIB for k, v in terms.items()},
        peak_gib=peak,
        host_gib=max(stages.values()) / GIB,
        host_stages_gib={k: v / GIB for k, v in stages.items()},
    )


def host_stage_bytes(shape: ModelShape, *, method: str, num_gpus: int, trainable: int, lora_targets: list[str],
                     init: str, compiled: bool, constants: MemoryConstants,
                     prep_processes: int = 1) -> dict[str, float]:
    """Return the node's host RAM (resident: anonymous + file-backed, all processes) in each of `HOST_STAGES`.

    Prep (CPU only, before training) is one process (`host_prep_gib`: datasets, the tokenizer)
    plus `host_prep_worker_gib` for each of `data.num_proc` tokenizing workers (none for 1).
    Every later stage holds one process per GPU (`host_per_rank_gib`: Python, torch, the CUDA
    libraries and context, the tokenizer, the memory-mapped dataset) plus what the stage adds; no
    stage holds a copy of the model (dream_job/model/init.py, train/export_weights.py):

    - weight load: `pretrained`: each rank reads every base tensor into host memory on its way to
      the GPU, one at a time: the largest, in its stored bf16 (the embedding, 2 B x vocab x hidden).
      `random`: drawn on the GPU, nothing;
    - first step: `train.compile`'s inductor workers (`host_compile_gib` per process);
    - steady step: nothing;
    - checkpoint save: DCP copies each tensor to the host before writing it: each rank its shard of
      the largest one, in the master dtype (the whole tensor over the node);
    - export: rank 0 holds one bf16 tensor, or for LoRA the fp32 adapters plus the merge of one
      targeted weight (`export_host_bytes`);
    - eval model load: one evaluation process per GPU (`host_eval_process_gib`: the sampler and
      answer checking instead of the trainer) reading one bf16 tensor at a time.

    `full_offload` adds the offloaded fp32 params and AdamW states (16 B/param) to every training
    stage, and the CPU step's `foreach` temporary (4 B/param) to the steps.
    """
    p, n = shape.num_params, num_gpus
    processes = n * constants.host_per_rank_gib * GIB
    largest_bf16 = 2 * max(shape.embed_params, max(i * o for i, o in shape.linear_shapes().values()))
    master_bytes = 4 if method in ("full", "full_offload") else 2
    offloaded = 16 * p if method == "full_offload" else 0
    cpu_step = 4 * p if method == "full_offload" else 0
    workers = prep_processes if prep_processes > 1 else 0
    return {
        "prep": (constants.host_prep_gib + workers * constants.host_prep_worker_gib) * GIB,
        "weight load": processes + offloaded + (n * largest_bf16 if init == "pretrained" else 0),
        "first step": processes + offloaded + cpu_step + (n * constants.host_compile_gib * GIB if compiled else 0),
        "steady step": processes + offloaded + cpu_step,
        "checkpoint save": processes + offloaded + largest_bf16 // 2 * master_bytes,
        "export": processes + offloaded + export_host_bytes(shape, method=method, trainable=trainable,
                                                            lora_targets=lora_targets),
        "eval model load": n * (constants.host_per_rank_gib + constants.host_eval_process_gib) * GIB + n * largest_bf16,
    }


def export_host_bytes(shape: ModelShape, *, method: str, trainable: int, lora_targets: list[str]) -> float:
    """Return rank 0's host RAM while exporting (`train/export_weights.py` streams it tensor by tensor).

    One bf16 tensor on its way to the file: the largest one (the embedding or lm_head). Other
    tensors are cast to bf16 where they live and go straight into the file. LoRA adds the fp32
    adapters kept for the merges and `adapter/` (4 B x trainable) and, while the largest targeted
    weight is merged, its bf16 CPU copy and peft's `get_delta_weight` (B @ A, then that times the
    scaling: two fp32 tensors of its size for a moment), 2 + 4 + 4 B per element on a bf16 base.
    """
    largest = 2 * max(shape.embed_params, max(i * o for i, o in shape.linear_shapes().values()))
    if method != "lora":
        return largest
    targeted = max((i * o for name, (i, o) in shape.linear_shapes().items() if name in lora_targets), default=0)
    return 4 * trainable + max(largest, 10 * targeted)
