"""Sampler benchmark at Dream-7B's shape: reference vs fast (block-wise cached) decoding, side by side.

Dream's published config with random bf16 weights on one GPU; random 128-token prompts; the
project's `generate` in both modes on the same model and prompts. Prints generated tokens/s per
(mode, generation length, batch) and the fast/reference ratio. With random weights no token
clears the fast sampler's confidence threshold, so the fast mode reveals one token per step
and the ratio measures the KV cache alone (a trained model also decodes several tokens per
step; see bench/learning.py for that effect).

    PYTHONPATH=. python bench/sampler.py --lengths 256 512 --batches 1 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from dream_job.diffusion.sampler import generate  # noqa: E402
from dream_job.model.dream import DreamConfig, DreamModel  # noqa: E402
from dream_job.spec import SamplerSpec  # noqa: E402

DREAM_CONFIG = REPO / "tests" / "fixtures" / "dream-hub" / "config.json"


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


def run(model: DreamModel, config: DreamConfig, settings: SamplerSpec, prompts: list[list[int]]) -> dict:
    """Decode once to warm up, then once timed; return tokens/s and forward passes."""
    kwargs = {"mask_id": config.mask_token_id, "eos_id": 10**9, "pad_id": config.pad_token_id}  # no EOS cut-off
    generate(model, prompts, settings.model_copy(update={"gen_length": 32, "steps": 32}), **kwargs)
    torch.cuda.synchronize()
    result = generate(model, prompts, settings, **kwargs)
    torch.cuda.synchronize()
    tokens = settings.gen_length * len(prompts)
    return {"tokens_per_s": tokens / result.seconds, "seconds": result.seconds,
            "forward_passes": result.num_forward_passes}


def main() -> None:
    """Measure and print one JSON line per setting, then the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--prompt-length", type=int, default=128)
    args = parser.parse_args()
    model, config = build_model()
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    generator = torch.Generator().manual_seed(0)
    for batch in args.batches:
        prompts = torch.randint(0, 151643, (batch, args.prompt_length), generator=generator).tolist()
        for length in args.lengths:
            rows = {}
            for mode in ("reference", "fast"):
                settings = SamplerSpec(mode=mode, gen_length=length, steps=length, alg="entropy", block_length=32,
                                       threshold=0.9)
                rows[mode] = run(model, config, settings, prompts)
                print(json.dumps({"mode": mode, "gen_length": length, "batch": batch, **rows[mode]}), flush=True)
            ratio = rows["fast"]["tokens_per_s"] / rows["reference"]["tokens_per_s"]
            print(json.dumps({"gen_length": length, "batch": batch, "fast_over_reference": ratio}), flush=True)


if __name__ == "__main__":
    main()
