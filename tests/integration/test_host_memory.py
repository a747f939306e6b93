"""Host memory at CPU scale: the load, checkpoint save, export and LoRA merge hold one tensor, not the model.

A small Dream (16 layers, 69M parameters, 277 MB in fp32, largest tensor 16.8 MB) is measured in a
fresh process whose allocations all come from `mmap` (`MALLOC_MMAP_THRESHOLD_`), so that its RSS
follows what is alive. Before each operation the process resets its peak RSS (`/proc/self/clear_refs`
5) and afterwards reads `VmHWM`: the growth over the RSS before (after, for the load, which ends
holding the model) is what the operation held on top of the model. A control materialises the
whole state dict the way the old loader did, so the measurement is shown to see a full copy.

The LoRA job (prep -> train with 2 checkpoints -> merged export) also runs inside a cgroup memory
limit (the real kernel limit, cgroup v1 or v2, as root), and the same run under a limit far below
its need is OOM-killed, so the limit is shown to bite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cgroup_limit import MemoryLimit
from tests.conftest import REPO, TINY_DREAM

pytestmark = pytest.mark.slow

CONFIG = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 8,
          "num_key_value_heads": 2, "vocab_size": 8192}

WRITE_BASE = """
import json, sys, torch
from dream_job.model.dream import DreamConfig, DreamModel
from dream_job.model.weights import save_hf_folder
config = DreamConfig.from_dict({**json.loads(open(sys.argv[1]).read()), **json.loads(sys.argv[2])})
torch.manual_seed(0)
model = DreamModel(config)
model.init_weights()
save_hf_folder(model, config, sys.argv[3], dtype=torch.float32, max_shard_bytes=64 * 2**20)
"""

MEASURE = """
import json, sys, torch
from pathlib import Path
from peft import LoraConfig, inject_adapter_in_model
from dream_job.model.dream import DreamConfig, DreamModel
from dream_job.model.init import fill_parameters
from dream_job.model.weights import stream_weights
from dream_job.train.checkpoint import CheckpointManager
from dream_job.train.state import ModelOptimizerState
from dream_job.train.export import export_hf

def status(key):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024

def measure(fn, after=False):
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status("VmRSS")
    fn()
    return status("VmHWM") - (status("VmRSS") if after else before)

base, work, tokenizer = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
config = DreamConfig.from_pretrained_dir(base)
with torch.device("meta"):
    model = DreamModel(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
model.to_empty(device="cpu")
model.init_buffers("cpu")
out = {"model_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
       "largest_tensor_bytes": max(p.numel() * p.element_size() for p in model.parameters())}
out["load"] = measure(lambda: fill_parameters(model, stream_weights(base, shapes)), after=True)
out["checkpoint_save"] = measure(lambda: CheckpointManager(work / "checkpoints", keep=1).save(
    1, {"model": ModelOptimizerState(model)}))
out["export"] = measure(lambda: export_hf(model, config, out_dir=work / "export", tokenizer_dir=tokenizer,
                                          base_dir=None))
lora = inject_adapter_in_model(LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "gate_proj"],
                                          init_lora_weights=False), model)
out["lora_export"] = measure(lambda: export_hf(lora, config, out_dir=work / "lora-export", tokenizer_dir=tokenizer,
                                               base_dir=None, is_lora=True))
out["control_whole_state_dict"] = measure(lambda: out.__setitem__("held", len(dict(stream_weights(base, shapes)))))
print(json.dumps(out))
"""


def python(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {}),
                                 "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                                               if p)})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_load_save_export_and_merge_hold_one_tensor_not_the_model(tmp_path: Path) -> None:
    python("-c", WRITE_BASE, str(TINY_DREAM / "config.json"), json.dumps(CONFIG), str(tmp_path / "base"))
    # Every allocation over 64 KiB is its own mapping, returned to the kernel when freed.
    measured = json.loads(python("-c", MEASURE, str(tmp_path / "base"), str(tmp_path), str(TINY_DREAM),
                                 env={"MALLOC_MMAP_THRESHOLD_": "65536"}).splitlines()[-1])
    model, largest = measured["model_bytes"], measured["largest_tensor_bytes"]
    # Per layer: q 512x512 + 512, k and v 512x128 + 128 each, o 512x512, MLP 3 x 512 x 2048, two norms
    # = 3,802,880; x 16 + embedding and lm_head (2 x 8192 x 512) + final norm 512 = 69,235,200 params.
    assert model == 69_235_200 * 4 and largest == 8192 * 512 * 4  # 277 MB; the embedding, 16.8 MB
    # The control sees the whole state dict: the measurement can tell a copy of the model.
    assert measured["control_whole_state_dict"] > 0.95 * model
    for operation in ("load", "checkpoint_save", "export", "lora_export"):
        # One tensor (and the LoRA merge's fp32 temporaries of one weight) on top of ~10 MB of
        # bookkeeping; the old loader held 277 MB more, the old export one bf16 shard of 139 MB.
        assert measured[operation] < 3 * largest, (operation, measured)
    assert measured["checkpoint_save"] < 0.2 * model


def lora_job_args(run_dir: Path) -> list[str]:
    sets = [f"artifacts.run_dir={run_dir}", "train.method=lora", "train.lora.rank=4", "train.lora.alpha=8",
            "train.max_steps=2", "train.save_every_steps=1", "train.keep_checkpoints=1", "train.log_every_steps=1",
            "train.global_batch_size=4", "train.micro_batch_size=4", "data.num_proc=1"]
    return [arg for s in sets for arg in ("--set", s)]


def run_limited(limit: MemoryLimit, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", "dream_job", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900, preexec_fn=limit.preexec)


@pytest.mark.skipif(MemoryLimit.available() is not None, reason=f"no memory cgroup: {MemoryLimit.available()}")
def test_lora_job_prep_train_export_inside_a_cgroup_memory_limit(tmp_path: Path) -> None:
    smoke = str(REPO / "jobs" / "smoke.yaml")
    limit = MemoryLimit(f"dream-job-test-{os.getpid()}", 1536 * 2**20)  # 1.5 GiB: the run peaks near 1 GiB
    try:
        run_dir = tmp_path / "lora"
        for command in ("prep", "train"):
            done = run_limited(limit, command, smoke, *lora_job_args(run_dir))
            assert done.returncode == 0, done.stdout + done.stderr
        assert limit.oom_kills() == 0
        assert 0 < limit.peak_bytes() <= 1536 * 2**20
        assert (run_dir / "checkpoints" / "step-000002" / "COMPLETE").is_file()
        assert done.stderr.count("saved checkpoint") == 2
        export = run_dir / "export"
        assert json.loads((export / "dream_job_export.json").read_text())["lora"] is True
        assert (export / "adapter" / "adapter_model.safetensors").is_file()
    finally:
        limit.remove()
    # The same training under 200 MiB (less than torch takes to import) is killed by the kernel.
    tight = MemoryLimit(f"dream-job-test-tight-{os.getpid()}", 200 * 2**20)
    try:
        shutil.copytree(run_dir / "data", tmp_path / "tight" / "data")
        killed = run_limited(tight, "train", smoke, *lora_job_args(tmp_path / "tight"))
        assert killed.returncode == -9 and tight.oom_kills() >= 1
    finally:
        tight.remove()
