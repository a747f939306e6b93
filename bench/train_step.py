"""Training-step benchmark at Dream-7B's shape: the project's step vs a naive step, side by side.

For each method that fits one GPU it builds the trainer's own model (`shard_model`: the plain
module on one GPU where the method allows, else FSDP2) and optimizer (`make_optimizer`) from
Dream's published config with random weights (speed and memory do not depend on the values),
applies the job's `--set` overrides (`train.compile`, `train.activation_checkpointing`, ...),
then times, in the same process:

- the project's step: `DreamForMaskedDiffusion.forward` (no attention mask: SDPA's flash path;
  lm_head + CE only at masked positions, in chunks) + backward, gradients accumulated over the
  timed micro-steps, then clip + optimizer step, as the real job's 16-sequence steps;
- a naive step on the same weights, the official trainer's: eager layers, full-vocab logits for
  every position, a 4-D bool attention mask, CE over the whole [L, V] logits, no chunking.

MFU = model FLOPs per token (budget/flops.py: 6 x matmul params + 12·L·d·layers for
bidirectional attention + the lm_head at the masked fraction) x tokens/s / 989 TFLOP/s (H100
dense bf16). Peaks are `max_memory_allocated` of the micro-steps (with held gradients) and of
the optimizer step; `forward_saved_gib` is what one forward keeps for backward.

    PYTHONPATH=. python bench/train_step.py --methods full_8bit --lengths 2048 4096 \
        --set train.compile=true --set train.activation_checkpointing=false
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from budget.flops import peak_flops, train_flops_per_token  # noqa: E402
from dream_job.diffusion.objective import loss_weights, mask_tokens, sample_t  # noqa: E402
from dream_job.model.dream import DreamConfig, DreamModel  # noqa: E402
from torch.distributed.fsdp import register_fsdp_forward_method  # noqa: E402
from dream_job.spec import load_spec  # noqa: E402
from dream_job.train.build import make_optimizer, reset_lora, shard_model  # noqa: E402
from dream_job.train.distributed import init_distributed  # noqa: E402

DREAM_CONFIG = REPO / "tests" / "fixtures" / "dream-hub" / "config.json"


def _batch(length: int, micro_batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 151643, (micro_batch, length), generator=generator, device="cuda")
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    loss_mask[:, length // 10 :] = True  # a 10 % prompt, as s1K rows have about that much
    return ids, loss_mask


def optimizer_step(model, optimizer) -> None:
    """Clip and step, as the trainer does once per global batch."""
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def project_micro(model, ids, loss_mask, generator) -> float:
    """The trainer's micro-step: forward with the masked chunked loss, backward."""
    loss, _ = model(ids, loss_mask_BL=loss_mask, attention_mask_BL=None, position_ids_BL=None, generator=generator,
                    time_eps=1e-3, weighting="cart", cart_p=0.1)
    loss.backward()
    return float(loss)


def naive_micro(model, ids, loss_mask, generator) -> float:
    """The official trainer's step: eager layers, full-vocab logits at every position, a 4-D bool mask,
    unchunked CE."""
    with eager_layers(model):
        return _naive_micro(model, ids, loss_mask, generator)


@contextlib.contextmanager
def eager_layers(model):
    """Run the decoder layers uncompiled (`train.compile` sets a compiled `forward` on each instance)."""
    compiled = {layer: layer.__dict__.pop("forward") for layer in model.model.layers if "forward" in layer.__dict__}
    try:
        yield
    finally:
        for layer, forward in compiled.items():
            layer.forward = forward


def _naive_micro(model, ids, loss_mask, generator) -> float:
    config = model.config
    t = sample_t(ids.shape[0], eps=1e-3, generator=generator, device="cuda")
    noisy, masked = mask_tokens(ids, loss_mask, t, mask_token_id=config.mask_token_id, generator=generator)
    w = loss_weights(masked, t, scheme="cart", cart_p=0.1)
    # An all-ones padding mask makes the model build the [B, 1, L, L] bool mask (no flash path).
    # `DreamModel.forward` (full logits) through FSDP's hooks: registered as an FSDP forward method.
    logits = model.full_logits(noisy, attention_mask_BL=torch.ones_like(ids, dtype=torch.bool))
    shifted = torch.cat([logits[:, :1], logits[:, :-1]], dim=1).float()
    ce = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), ids.reshape(-1), reduction="none").view_as(ids)
    loss = (ce * w * masked).sum() / masked.sum()
    loss.backward()
    return float(loss)


ACCUMULATION = 16  # the real job's global batch of 16 sequences on one GPU
WINDOWS = 2  # timed accumulation windows (micro-steps, then one optimizer step) per measurement


def measure(micro, model, optimizer, config, length: int, micro_batch: int, warmup: int,
            steps: int) -> dict[str, float]:
    """Time micro-steps (forward + backward) and the optimizer step separately, after `warmup` steps.

    Returns tokens/s of the micro-step alone and of a whole optimizer step at the real job's
    accumulation (16 sequences per step), MFU of both, and peak memory.
    """
    generator = torch.Generator(device="cuda").manual_seed(0)
    ids, loss_mask = _batch(length, micro_batch, generator)
    for _ in range(warmup):
        micro(model, ids, loss_mask, generator)
        optimizer_step(model, optimizer)
    saved_gib = saved_by_forward(model, optimizer, ids, loss_mask, generator) if micro is project_micro else None
    # One accumulation window: `steps` micro-steps, then the optimizer. From the second micro-step
    # on the gradients of the earlier ones are held, as in the real job's 16-sequence steps.
    micro_s = opt_s = train_peak = step_peak = 0.0
    for _ in range(WINDOWS):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            micro(model, ids, loss_mask, generator)
        torch.cuda.synchronize()
        middle = time.perf_counter()
        train_peak = max(train_peak, torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()
        optimizer_step(model, optimizer)
        torch.cuda.synchronize()
        step_peak = max(step_peak, torch.cuda.max_memory_allocated())
        micro_s += (middle - start) / steps / WINDOWS
        opt_s += (time.perf_counter() - middle) / WINDOWS
    micro_steps = ACCUMULATION // micro_batch
    seconds = (micro_steps * micro_s + opt_s) / ACCUMULATION  # per sequence
    flops = train_flops_per_token(
        hidden=config.hidden_size, intermediate=config.intermediate_size, num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads, num_kv_heads=config.num_key_value_heads, vocab=config.vocab_size,
        seq_len=length,
    )
    tokens_per_s = length / seconds
    peak = peak_flops(torch.cuda.get_device_name()) or 989e12
    micro_tokens = micro_batch * length
    return {"micro_s": micro_s, "optimizer_s": opt_s, "micro_tokens_per_s": micro_tokens / micro_s,
            "micro_mfu": flops * micro_tokens / micro_s / peak, "tokens_per_s": tokens_per_s,
            "mfu": flops * tokens_per_s / peak, "peak_gib": max(train_peak, step_peak) / 2**30,
            "train_peak_gib": train_peak / 2**30, "step_peak_gib": step_peak / 2**30,
            "forward_saved_gib": saved_gib}


def saved_by_forward(model, optimizer, ids, loss_mask, generator) -> float:
    """GiB the project's forward keeps for backward (allocated after forward minus before), grads freed."""
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    loss, _ = model(ids, loss_mask_BL=loss_mask, attention_mask_BL=None, position_ids_BL=None, generator=generator,
                    time_eps=1e-3, weighting="cart", cart_p=0.1)
    torch.cuda.synchronize()
    saved = torch.cuda.memory_allocated() - before
    loss.backward()
    optimizer.zero_grad(set_to_none=True)
    return saved / 2**30


def bench_method(method: str, lengths: list[int], *, naive: bool, warmup: int, steps: int, settings: list[str],
                 micro_batch: int) -> list[dict]:
    """Build the method's model once, then measure each length (and the naive step when asked).

    `settings` are `--set` overrides of the job (`train.compile=true`, ...), applied to both steps.
    """
    base = Path(tempfile.mkdtemp())
    shutil.copy(DREAM_CONFIG, base / "config.json")
    spec = load_spec(REPO / "jobs" / "dream-s1k.yaml", [
        f"model.base={base}", "model.init=random", f"train.method={method}", "train.device=cuda",
        "train.lora.rank=64", *settings])
    dist_info = init_distributed("cuda")
    config = DreamConfig.from_pretrained_dir(base)
    build_start = time.perf_counter()
    model = shard_model(spec, config, dist_info)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 0.02) if param.dim() > 1 else param.fill_(1.0)
    if method == "lora":
        reset_lora(model, 0)
    model.full_logits = DreamModel.forward.__get__(model)
    register_fsdp_forward_method(model, "full_logits")
    optimizer = make_optimizer(spec, model)
    build_s = time.perf_counter() - build_start
    rows = []
    for length in lengths:
        for kind, step in (("project", project_micro), *((("naive", naive_micro),) if naive else ())):
            try:
                result = measure(step, model, optimizer, config, length, micro_batch, warmup, steps)
            except torch.OutOfMemoryError:
                result = {"oom": True, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
            gc.collect()
            torch.cuda.empty_cache()
            rows.append({"method": method, "length": length, "micro_batch": micro_batch, "step": kind,
                         "settings": settings, "fsdp": spec.wraps_in_fsdp(method, 1), "build_s": build_s, **result})
            print(json.dumps(rows[-1]), flush=True)
    del model, optimizer
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    """Run the benchmark and print one JSON line per measurement, then the ratios.

    `tokens_per_s`/`mfu` are per sequence of a whole optimizer step at 16 accumulated sequences
    (the real job's global batch on one GPU); `micro_*` are the forward + backward alone.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["full_8bit", "lora"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[2048, 4096])
    parser.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--micro-batch", type=int, default=1, help="sequences per micro-step (divides 16)")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        help="job override, e.g. `train.compile=true` or `train.activation_checkpointing=20`")
    parser.add_argument("--force-fsdp", action="store_true",
                        help="wrap in FSDP2 even on one GPU, to measure what its copies cost there")
    args = parser.parse_args()
    if args.force_fsdp:
        from dream_job.spec import JobSpec

        JobSpec.wraps_in_fsdp = lambda self, method, num_gpus: True  # type: ignore[method-assign]
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    rows = []
    for method in args.methods:
        rows += bench_method(method, args.lengths, naive=args.naive, warmup=args.warmup, steps=args.steps,
                             settings=args.settings, micro_batch=args.micro_batch)
    for method in args.methods:
        for length in args.lengths:
            found = {r["step"]: r for r in rows if r["method"] == method and r["length"] == length}
            if "naive" in found and "tokens_per_s" in found["naive"] and "tokens_per_s" in found["project"]:
                ratio = found["project"]["tokens_per_s"] / found["naive"]["tokens_per_s"]
                print(json.dumps({"method": method, "length": length, "project_over_naive": ratio}), flush=True)


if __name__ == "__main__":
    main()
