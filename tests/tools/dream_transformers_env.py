"""Dream's pinned transformers 4.46.2 in its own venv, offline, for the slow tokenizer test.

Dream's official remote code and its users run `transformers==4.46.2` (with `tokenizers>=0.20,<0.21`);
the project pins a newer one, so 4.46.2 lives in a cached venv (`~/.cache/dream-job-test/
transformers-4.46.2-venv`, shared by parallel sessions under a lock) and `tokenizer_probe.py`
runs there as a subprocess with `HF_HUB_OFFLINE=1`. No torch: loading and running a tokenizer
does not need it. The fixture `dream_transformers_python` is imported by the test modules that use it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.tools.sky_env import CACHE, TOOLS, cached_venv

TRANSFORMERS_VERSION = "4.46.2"
REQUIREMENTS = (f"transformers=={TRANSFORMERS_VERSION}", "tokenizers>=0.20,<0.21", "jinja2>=3.1")
VENV = CACHE / f"transformers-{TRANSFORMERS_VERSION}-venv"
RESULT_MARK = "TOKENIZER_PROBE_RESULT "


@pytest.fixture(scope="module")
def dream_transformers_python() -> Path:
    """Return the python of a venv with Dream's pinned transformers, made once and cached."""
    return cached_venv(VENV, "transformers", TRANSFORMERS_VERSION, list(REQUIREMENTS))


def probe_tokenizer(python: Path, folder: Path, texts: list[str], messages: list[dict[str, str]]) -> dict[str, Any]:
    """Load `folder` with `AutoTokenizer(trust_remote_code=True)` under `python`; return what it encodes.

    Returns:
        `version`, `class`, `special` (bos/eos/pad/mask/unk), `ids` and `ids_plain` (with and
        without special tokens) per text, and `chat` (the chat template rendered) and `chat_ids`.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(folder.parent / "probe-hf-home"),
               TRANSFORMERS_VERBOSITY="error")
    completed = subprocess.run([str(python), str(TOOLS / "tokenizer_probe.py"), str(folder)],
                               input=json.dumps({"texts": texts, "messages": messages}), env=env,
                               capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARK))
    return json.loads(line[len(RESULT_MARK):])
