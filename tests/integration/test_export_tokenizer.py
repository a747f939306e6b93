"""An export's tokenizer loads under Dream's pinned transformers 4.46.2 and the project's own, and encodes as trained.

For each way a job gets its tokenizer, the real `dream-job prep` (a subprocess, offline) saves it
as the job trains with it, `export_hf` ships it, and `AutoTokenizer.from_pretrained(export,
trust_remote_code=True)` loads it under transformers 4.46.2 (its own venv,
`tests/tools/dream_transformers_env.py`) and under the project's transformers. Both must encode a
set of texts and render the chat template exactly as the tokenizer prep loaded (the oracle,
loaded in this process by the project's `load_tokenizer`).

Not covered here: `model.tokenizer` unset with Dream's hub snapshot as the base ships Dream's
published files byte for byte (`tests/unit/test_export.py`); loading those needs Dream's remote
`tokenization_dream.py`, which is not in this repo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from dream_job.data.tokenizer import load_tokenizer
from dream_job.model import DreamModel
from dream_job.model.tokenizer_files import CHAT_TEMPLATE_NAME, FAST_TOKENIZER_CLASS, TOKENIZER_CONFIG_NAME
from dream_job.train.export import REMOTE_CODE_FILES, export_hf

from tests.conftest import REPO, TINY_DREAM, tiny_config
from tests.tools.dream_transformers_env import TRANSFORMERS_VERSION, dream_transformers_python, probe_tokenizer

__all__ = ["dream_transformers_python"]  # the fixture, used by name

pytestmark = pytest.mark.slow

SMOKE_BASE = REPO / "jobs" / "assets" / "smoke-base"
HUB_ID = "dream-job-test/dream-tokenizer"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"
TEXTS = [
    "Add 2 and 9.",
    "What is 493 + 817?\n3+7+0=10\n9+1+1=11\nAnswer: 1310",
    "héllo wörld, ünïcödé — 中文 🙂 café",
    "<|im_start|>user\nhi<|im_end|>\n<|mask|><|mask|> tail<|endoftext|>",
    "  two  spaces\tand a tab\n\n\nend ",
    "",
]
STAND_IN_CONFIGURATION = """from transformers import PretrainedConfig


class DreamConfig(PretrainedConfig):
    model_type = "Dream"
"""
MESSAGES = [{"role": "system", "content": "Think step by step."}, {"role": "user", "content": "What is 7 + 8?"}]


def hub_cache(root: Path, source: Path) -> Path:
    """Put `source`'s files into a Hugging Face cache as repo `HUB_ID` (read with `HF_HUB_OFFLINE=1`)."""
    repo = root / f"models--{HUB_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / HUB_COMMIT
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    return snapshot


def prep(run_dir: Path, overrides: list[str], env: dict[str, str]) -> Path:
    """Run `dream-job prep` on the smoke job; return the tokenizer folder it saved."""
    command = [sys.executable, "-m", "dream_job", "prep", "jobs/smoke.yaml", "--set", f"artifacts.run_dir={run_dir}"]
    for override in overrides:
        command += ["--set", override]
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return run_dir / "data" / "tokenizer"


def encodings(tokenizer: Any) -> dict[str, Any]:
    """What `tokenizer_probe.py` reports, computed in this process."""
    chat = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    return {
        "special": {name: getattr(tokenizer, f"{name}_token") for name in ("bos", "eos", "pad", "mask", "unk")},
        "ids": [tokenizer(text)["input_ids"] for text in TEXTS],
        "ids_plain": [tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS],
        "chat": chat,
        "chat_ids": tokenizer(chat, add_special_tokens=False)["input_ids"],
    }


@pytest.mark.parametrize("case", ["smoke job", "model.tokenizer: Dream's folder", "model.tokenizer: a hub id",
                                  "model.tokenizer: the tiny tokenizer folder"])
def test_export_tokenizer_loads_under_both_transformers_and_encodes_as_trained(
    tmp_path: Path, case: str, dream_transformers_python: Path, qwen_dream_tokenizer_dir: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    # A stand-in base snapshot with Dream's remote code (`tokenization_dream.py` among it): a
    # remote `auto_map` left in the shipped config would send 4.46.2 there. transformers 5's
    # `AutoTokenizer` also reads the model config, through `configuration_dream.DreamConfig`.
    base = tmp_path / "base"
    base.mkdir()
    for name in REMOTE_CODE_FILES:
        (base / name).write_text(f"# stand-in {name}\n")
    (base / "configuration_dream.py").write_text(STAND_IN_CONFIGURATION)
    if case == "smoke job":  # `model.tokenizer` unset: the base's own, saved by transformers 5
        overrides, source, base = [], SMOKE_BASE, SMOKE_BASE
    elif case == "model.tokenizer: Dream's folder":  # Dream's hub layout: remote slow class, no tokenizer.json
        overrides, source = [f"model.tokenizer={qwen_dream_tokenizer_dir}"], qwen_dream_tokenizer_dir
    elif case == "model.tokenizer: a hub id":
        env["HF_HUB_CACHE"] = str(tmp_path / "hub")
        source = hub_cache(tmp_path / "hub", qwen_dream_tokenizer_dir)
        overrides = [f"model.tokenizer={HUB_ID}"]
    else:
        overrides, source = [f"model.tokenizer={TINY_DREAM}"], TINY_DREAM
    tokenizer_dir = prep(tmp_path / "run", overrides, env)
    config = tiny_config()
    torch.manual_seed(0)
    model = DreamModel(config)
    model.init_weights()
    out = export_hf(model, config, out_dir=tmp_path / "export", tokenizer_dir=tokenizer_dir, base_dir=base,
                    base_tokenizer=not overrides)

    expected = encodings(load_tokenizer(str(source)))  # the tokenizer prep trained the job with
    assert expected["chat"].endswith("<|im_start|>assistant\n") and expected["special"]["mask"] == "<|mask|>"
    shipped_config = json.loads((out / TOKENIZER_CONFIG_NAME).read_text())
    assert shipped_config["tokenizer_class"] == FAST_TOKENIZER_CLASS and "auto_map" not in shipped_config
    # 4.46.2 reads the template from the config, transformers 5 from the .jinja file: the same text.
    assert shipped_config["chat_template"] == (out / CHAT_TEMPLATE_NAME).read_text()

    old = probe_tokenizer(dream_transformers_python, out, TEXTS, MESSAGES)
    assert (old["version"], old["class"]) == (TRANSFORMERS_VERSION, FAST_TOKENIZER_CLASS)
    assert {key: old[key] for key in expected} == expected
    assert encodings(AutoTokenizer.from_pretrained(out, trust_remote_code=True)) == expected
