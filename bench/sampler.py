"""Sampler benchmark at Dream-7B's shape: reference vs fast decoding, eager vs CUDA graphs, side by side.

Dream's published config with random bf16 weights on one GPU; random prompts; the project's
`generate` in every mode on the same model and prompts. With random weights no token clears the
fast sampler's confidence threshold, so every mode reveals one token per forward and the ratios
are the engine's alone (KV cache, dual cache, CUDA graphs); a trained model also reveals several
tokens per step in fast mode (bench/learning.py measures that).

Reference mode runs `--reference-steps` steps (its time per forward does not depend on how many
tokens a step reveals); every row reports the time per forward and the tokens/s at one token
per forward = batch / time per forward. Every mode is called twice on the same shapes: the
first call picks kernels and records the graphs (`first_call_s`; the reference's has 8 steps),
the second is timed. (Before 2026-12-06 eager modes were warmed up at another shape, which left
the reference's first timed call cold: 29.8-37.8 ms per forward instead of 22.1 warm.) Then the evaluation of the real job's configuration is projected from one
timed batch of that configuration (`--eval-*`).

    PYTHONPATH=. python bench/sampler.py                      # the plan below, ~4 min on an H100
    PYTHONPATH=. python bench/sampler.py --batches 1 --modes reference fast+graphs
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from dream_job.diffusion.forwards import make_forwards, uncompile_decoder_layers  # noqa: E402
from dream_job.diffusion.sampler import generate  # noqa: E402
from dream_job.model.dream import DreamConfig, DreamModel  # noqa: E402
from dream_job.spec import SamplerSpec  # noqa: E402

DREAM_CONFIG = REPO / "tests" / "fixtures" / "dream-hub" / "config.json"
# name -> sampler settings (gen_length and steps are filled in per run)
MODES = {
    "reference": {"mode": "reference", "cuda_graphs": False},
    "reference+graphs": {"mode": "reference", "cuda_graphs": True},
    "fast": {"mode": "fast", "cuda_graphs": False},
    "fast+graphs": {"mode": "fast", "cuda_graphs": True},
    "fast-dual": {"mode": "fast", "dual_cache": True, "cuda_graphs": False},
    "fast-dual+graphs": {"mode": "fast", "dual_cache": True, "cuda_graphs": True},
    # compiles the shared model's layers in place (`timed` undoes it afterwards)
    "fast-dual+graphs+compile": {"mode": "fast", "dual_cache": True, "cuda_graphs": True, "compile": True},
}
# Which modes run at which batch size by default: the slow eager fast modes only where they are
# the point (batch 1, the 3x target) so the whole plan fits one 10-minute device call.
PLAN = {
    1: ["reference", "reference+graphs", "fast", "fast+graphs", "fast-dual", "fast-dual+graphs"],
    8: ["reference", "reference+graphs", "fast-dual", "fast-dual+graphs"],
    32: ["reference", "fast-dual+graphs"],
}


def build_model() -> tuple[DreamModel, DreamConfig]:
    """Dream 7B shape in bf16 on the GPU, random weights (speed does not depend on their values)."""
    config = DreamConfig.from_json_file(DREAM_CONFIG)
    with torch.device("meta"):
        model = DreamModel(config)
    model.to_empty(device="cuda")
    model.to(torch.bfloat16)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02) if param.dim() > 1 else param.fill_(1.0)
    model.init_buffers("cuda")
    return model.eval(), config


def settings_for(mode: str, gen_length: int, reference_steps: int) -> SamplerSpec:
    """The sampler settings of one benchmark mode (alg entropy, block 32, threshold 0.9)."""
    steps = min(gen_length, reference_steps) if MODES[mode]["mode"] == "reference" else gen_length
    return SamplerSpec(gen_length=gen_length, steps=steps, alg="entropy", block_length=32, threshold=0.9,
                       **MODES[mode])


def timed(model: DreamModel, config: DreamConfig, settings: SamplerSpec, prompts: list[list[int]]) -> dict:
    """Warm up (graphs: record them on the same shapes), then decode once timed."""
    kwargs = {"mask_id": config.mask_token_id, "eos_id": 10**9, "pad_id": config.pad_token_id}  # no EOS cut-off
    forwards = make_forwards(model, settings)
    start = time.perf_counter()
    # Same shapes as the timed call (kernel choice and graphs are per shape); the reference's
    # forward does not depend on its step count, so it warms up with 8 steps.
    warm = settings.model_copy(update={"steps": min(settings.steps, 8)}) if settings.mode == "reference" else settings
    generate(model, prompts, warm, forwards=forwards, **kwargs)
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - start
    result = generate(model, prompts, settings, forwards=forwards, **kwargs)
    torch.cuda.synchronize()
    uncompile_decoder_layers(model)  # the next mode runs the layers as they were
    forward_ms = 1000 * result.seconds / result.num_forward_passes
    return {"seconds": result.seconds, "forward_passes": result.num_forward_passes, "forward_ms": forward_ms,
            "tokens_per_s": len(prompts) * 1000 / forward_ms, "first_call_s": first_call_s,
            "graphs": getattr(forwards, "captures", 0)}


def random_prompts(batch: int, length: int, seed: int) -> list[list[int]]:
    """`batch` random prompts of `length` ordinary token ids."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 151643, (batch, length), generator=generator).tolist()


def main() -> None:
    """Measure and print one JSON line per (batch, mode), the ratios, then the evaluation projection."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="+", type=int, default=list(PLAN))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), help="run these at every batch (default: PLAN)")
    parser.add_argument("--gen-length", type=int, default=512)
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--reference-steps", type=int, default=64)
    parser.add_argument("--eval-mode", choices=list(MODES), default="fast-dual+graphs")
    parser.add_argument("--eval-configs", nargs="*", default=["32x256"],
                        help="BATCHxPROMPT: batch size and a sorted batch's longest prompt, one projection each")
    parser.add_argument("--eval-items", type=int, default=1200, help="items x evaluated models")
    args = parser.parse_args()
    model, config = build_model()
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    for batch in args.batches:
        prompts = random_prompts(batch, args.prompt_length, seed=batch)
        rows = {}
        for mode in args.modes or PLAN.get(batch, list(MODES)):
            rows[mode] = timed(model, config, settings_for(mode, args.gen_length, args.reference_steps), prompts)
            print(json.dumps({"mode": mode, "batch": batch, "gen_length": args.gen_length,
                              "prompt_length": args.prompt_length, **rows[mode]}), flush=True)
        if "reference" in rows:
            ratios = {mode: row["tokens_per_s"] / rows["reference"]["tokens_per_s"] for mode, row in rows.items()}
            print(json.dumps({"batch": batch, "over_reference": ratios}), flush=True)
    for config_text in args.eval_configs:
        batch, prompt_length = (int(part) for part in config_text.split("x"))
        prompts = random_prompts(batch, prompt_length, seed=batch * prompt_length)
        row = timed(model, config, settings_for(args.eval_mode, args.gen_length, args.reference_steps), prompts)
        batches = math.ceil(args.eval_items / batch)
        print(json.dumps({"eval_projection": {
            "mode": args.eval_mode, "batch": batch, "prompt_length": prompt_length, "gen_length": args.gen_length,
            "batch_seconds": row["seconds"], "first_call_s": row["first_call_s"], "items": args.eval_items,
            "batches": batches, "minutes": batches * row["seconds"] / 60, "forward_ms": row["forward_ms"]}}),
            flush=True)


if __name__ == "__main__":
    main()
