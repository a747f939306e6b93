"""Peak host RSS of the LoRA export at Dream-7B shape (issue 14, deliverable 6), on the CPU.

The export (`dream_job.train.export.export_hf`) streams: rank 0 gathers one tensor at a time,
folds its LoRA delta in and appends it to the shard file being written (until 2026-12-07 it
filled whole <= 5 GiB shards). This script measures how much host memory that takes at the real 7B shape (Dream's published `config.json`,
random weights), with the job's adapters (`jobs/dream-s1k-lora-4090.yaml`: rank 16, alpha 32, all
seven linears), as on a one-GPU box where the model lives on the GPU:

1. Writes a random bf16 base as sharded safetensors, one decoder layer per file, streaming (one
   layer in memory at a time; 15.2 GB on disk).
2. Builds the training model (`DreamForMaskedDiffusion` + peft LoRA, fp32 adapters) on meta and
   makes its base weights memory-mapped views of those files: they are file pages, not anonymous
   memory, standing in for weights that sit in GPU memory on the real machine. The export copies
   every tensor it keeps (`train/export_weights.py: to_host`), so its host allocations are
   anonymous either way.
3. Exports, while a separate process samples `/proc/<pid>/status` every 2 ms. The export's host
   RAM is the growth of `RssAnon` over its value just before the export (torch, the model object,
   the fp32 adapters of the training model); `VmHWM` (reset just before) also counts the mapped
   base pages the export read, which on the GPU box are in GPU memory.
4. Checks one merged tensor bit for bit (bf16(W + scaling * B @ A) recomputed here), prints one
   JSON line (also written to `--result`), compares with `budget.memory.export_host_bytes`, and
   deletes the temporary files unless `--keep`.

    .venv/bin/python bench/export_rss.py --work /tmp/dream-export-rss \\
        --result bench/results/export_rss-cpu-2026-12-05.json
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from budget.memory import GIB, export_host_bytes  # noqa: E402
from budget.shape import ModelShape  # noqa: E402
from dream_job.diffusion.lm import DreamForMaskedDiffusion  # noqa: E402
from dream_job.model.dream import DreamConfig  # noqa: E402
from dream_job.train.export import export_hf  # noqa: E402

CONFIG_DIR = REPO.parent / "shared" / "reference" / "dream-hub-files"
TOKENIZER_DIR = REPO / "jobs" / "assets" / "tiny-dream"  # the export only copies these files
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Runs in a separate process (no GIL shared with the export): the largest RssAnon, VmRSS seen.
SAMPLER = """
import sys, time
pid, period = sys.argv[1], float(sys.argv[2])
peak = {"RssAnon": 0, "VmRSS": 0}
while True:
    try:
        lines = open(f"/proc/{pid}/status").read().splitlines()
    except OSError:
        break
    for line in lines:
        key, _, value = line.partition(":")
        if key in peak:
            peak[key] = max(peak[key], int(value.split()[0]) * 1024)
    if sys.stdin in __import__("select").select([sys.stdin], [], [], period)[0]:
        break
print(peak["RssAnon"], peak["VmRSS"], flush=True)
"""


def status_bytes(key: str) -> int:
    """One `/proc/self/status` field (kB there) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def write_random_base(config: DreamConfig, folder: Path, seed: int) -> None:
    """Write a random bf16 base as `layer-*.safetensors` + index, holding one group of tensors at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in DreamForMaskedDiffusion(config).state_dict().items()}
    groups: dict[str, list[str]] = {}
    for key in shapes:
        parts = key.split(".")
        group = f"layer-{int(parts[2]):02d}" if parts[:2] == ["model", "layers"] else parts[-2].replace("_", "-")
        groups.setdefault(group, []).append(key)
    weight_map = {}
    for group, keys in groups.items():
        tensors = {}
        for key in keys:
            tensor = torch.empty(shapes[key], dtype=torch.bfloat16)
            if key.endswith("norm.weight"):
                tensor.fill_(1.0)
            else:
                tensor.normal_(0.0, config.initializer_range, generator=generator)
            tensors[key] = tensor
        save_file(tensors, folder / f"{group}.safetensors", metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, f"{group}.safetensors"))
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}, indent=1))


def map_base(folder: Path) -> tuple[dict[str, torch.Tensor], list[mmap.mmap]]:
    """Memory-map every tensor of `folder` (file pages, copy-on-write: never written here)."""
    tensors, maps = {}, []
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as f:
            header_len = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(header_len))
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        maps.append(mapped)
        for key, info in header.items():
            if key == "__metadata__":
                continue
            assert info["dtype"] == "BF16", info
            start, end = info["data_offsets"]
            flat = torch.frombuffer(mapped, dtype=torch.bfloat16, count=(end - start) // 2, offset=8 + header_len + start)
            tensors[key] = flat.view(info["shape"])
    return tensors, maps


def build_lora_model(config: DreamConfig, base: dict[str, torch.Tensor], rank: int, alpha: int,
                     seed: int) -> torch.nn.Module:
    """The trainer's LoRA model (`train/build.py: shard_model`), base weights mapped, random non-zero adapters."""
    from peft import LoraConfig, inject_adapter_in_model

    with torch.device("meta"):
        model = DreamForMaskedDiffusion(config).to(torch.bfloat16)
        model = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.05, target_modules=TARGETS),
                                        model)
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, param in model.state_dict().items():
        if "lora_" in key:
            state[key] = torch.randn(param.shape, generator=generator) * 0.01  # fp32, as trained
        else:
            state[key] = base[key.replace(".base_layer.", ".")]
    model.load_state_dict(state, strict=True, assign=True)
    model.init_buffers("cpu")
    return model.eval()


def check_one_merge(model: torch.nn.Module, out: Path, rank: int, alpha: int) -> None:
    """Layer 0's gate_proj in the export equals bf16(W + alpha/rank * B @ A), bit for bit."""
    from safetensors import safe_open

    key = "model.layers.0.mlp.gate_proj.weight"
    layer = model.get_submodule("model.layers.0.mlp.gate_proj")
    expected = (layer.base_layer.weight.float() + (alpha / rank) * (layer.lora_B["default"].weight
                                                                    @ layer.lora_A["default"].weight))
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(out / weight_map[key], framework="pt") as f:
        assert torch.equal(f.get_tensor(key), expected.to(torch.bfloat16)), "merged weight differs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/dream-export-rss"), help="temporary folder")
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="folder with Dream's config.json")
    parser.add_argument("--layers", type=int, default=None, help="fewer decoder layers (quick trial)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the base and the export")
    parser.add_argument("--result", type=Path, default=None, help="also write the JSON line here")
    args = parser.parse_args()

    config = DreamConfig.from_pretrained_dir(args.config_dir)
    if args.layers is not None:
        config = DreamConfig(**{**config.__dict__, "num_hidden_layers": args.layers})
    shutil.rmtree(args.work, ignore_errors=True)
    try:
        started = time.perf_counter()
        write_random_base(config, args.work / "base", args.seed)
        write_s = time.perf_counter() - started
        base, maps = map_base(args.work / "base")
        model = build_lora_model(config, base, args.rank, args.alpha, args.seed)
        num_trainable = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)

        anon_before = status_bytes("RssAnon")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        sampler = subprocess.Popen([sys.executable, "-c", SAMPLER, str(os.getpid()), "0.002"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        time.sleep(0.2)
        started = time.perf_counter()
        out = export_hf(model, config, out_dir=args.work / "export", tokenizer_dir=TOKENIZER_DIR, base_dir=None,
                        is_lora=True)
        export_s = time.perf_counter() - started
        peak_anon, peak_rss = (int(v) for v in sampler.communicate("stop\n")[0].split())
        hwm = status_bytes("VmHWM")
        check_one_merge(model, out, args.rank, args.alpha)

        shape = ModelShape(hidden=config.hidden_size, intermediate=config.intermediate_size,
                           num_layers=config.num_hidden_layers, num_heads=config.num_attention_heads,
                           num_kv_heads=config.num_key_value_heads, vocab=config.vocab_size)
        predicted = export_host_bytes(shape, method="lora", trainable=num_trainable, lora_targets=TARGETS)
        shards = sorted(p.name for p in out.glob("model-*.safetensors"))
        result: dict[str, Any] = {
            "bench": "export_rss", "num_parameters": config.num_parameters(), "num_layers": config.num_hidden_layers,
            "lora_rank": args.rank, "lora_trainable": num_trainable, "num_shards": len(shards),
            "export_gib_on_disk": round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / GIB, 2),
            "rss_anon_before_gib": round(anon_before / GIB, 2), "rss_anon_peak_gib": round(peak_anon / GIB, 2),
            "export_host_gib": round((peak_anon - anon_before) / GIB, 2),
            "model_export_host_gib": round(predicted / GIB, 2),
            "vm_rss_peak_gib_incl_mapped_base": round(max(peak_rss, hwm) / GIB, 2),
            "write_base_s": round(write_s, 1), "export_s": round(export_s, 1),
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        }
        line = json.dumps(result)
        print(line)
        if args.result is not None:
            args.result.write_text(line + "\n")
        del model, base
        for mapped in maps:
            mapped.close()
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
