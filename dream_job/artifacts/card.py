"""The model card (`README.md`) written into an export before it goes to the Hugging Face Hub.

Inputs come from the run directory: the spec as YAML, `data/data_report.json`,
`eval/summary.json` and `logs/loss.png` (each optional). Secrets never reach the card: keys that
name secrets are masked in the spec, and any value of a secret-looking environment variable
(`HF_TOKEN`, `AWS_SECRET_ACCESS_KEY`, ...) is replaced wherever it would appear.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dream_job.rundir import (
    DATA_DIR, DATA_REPORT_NAME, EVAL_DIR, EVAL_SUMMARY_NAME, LOGS_DIR, LOSS_PLOT_NAME, write_text_atomically,
)

BASE_MODEL = "Dream-org/Dream-v0-Base-7B"
DATASET = "simplescaling/s1K-1.1"
TAGS = ("dream", "diffusion-language-model", "masked-diffusion", "reasoning", "dream-job")
REDACTED = "<redacted>"
_SECRET_KEY_RE = re.compile(r"token|secret|password|passwd|credential|api[_-]?key|access[_-]?key", re.I)
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_REPORT_ROWS = (("rows_read", "rows read"), ("rows_kept", "rows kept for training"),
                ("rows_holdout", "rows held out"), ("rows_truncated", "rows truncated"),
                ("rows_dropped", "rows dropped"), ("max_length", "max length (tokens)"),
                ("fraction_over_max_length", "fraction over max length"))


@dataclass(frozen=True)
class ModelCardInputs:
    """What the card shows, gathered from a run (see `model_card_inputs`)."""

    spec_yaml: str
    data_report: dict[str, Any] | None = None
    eval_summary: dict[str, Any] | None = None
    loss_png: Path | None = None


def model_card_inputs(run_dir: Path, spec_yaml: str) -> ModelCardInputs:
    """Collect the card's inputs from `run_dir` (`data/data_report.json`, `eval/summary.json`, `logs/loss.png`)."""
    def read(path: Path) -> dict[str, Any] | None:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    loss_png = run_dir / LOGS_DIR / LOSS_PLOT_NAME
    return ModelCardInputs(spec_yaml, read(run_dir / DATA_DIR / DATA_REPORT_NAME),
                           read(run_dir / EVAL_DIR / EVAL_SUMMARY_NAME), loss_png if loss_png.is_file() else None)


def write_model_card(folder: Path, *, spec_yaml: str, data_report: dict[str, Any] | None,
                     eval_summary: dict[str, Any] | None, loss_png: Path | None, repo_id: str) -> Path:
    """Write `folder/README.md` (and copy the loss plot to `folder/loss.png`) for the Hub.

    The card has YAML front matter (`base_model`, `library_name: transformers`, `tags`,
    `datasets`), then how to load the model, the training config, the data report, the eval
    table and the loss plot. Both files are written atomically and overwrite earlier ones.

    Args:
        folder: The export folder.
        spec_yaml: The job spec as YAML; secret-named keys are masked.
        data_report: `data/data_report.json` of the run, or None.
        eval_summary: `eval/summary.json` of the run, or None.
        loss_png: The loss plot to copy in, or None.
        repo_id: `user/repo`, used in the load snippets.

    Returns:
        The path of `README.md`.
    """
    spec = yaml.safe_load(spec_yaml) if spec_yaml.strip() else {}
    spec = _mask_secret_keys(spec if isinstance(spec, dict) else {})
    base = _hub_id(spec.get("model", {}).get("base"), BASE_MODEL)
    dataset = _hub_id(spec.get("data", {}).get("dataset"), DATASET)
    front = {"base_model": base, "library_name": "transformers", "pipeline_tag": "text-generation",
             "tags": list(TAGS), "datasets": [dataset]}
    if loss_png is not None and loss_png.is_file():
        shutil.copyfile(loss_png, folder / "loss.png")
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n",
        f"# {repo_id.split('/')[-1]}\n\n{base} fine-tuned on {dataset} with masked-diffusion SFT by "
        "dream-job. Every file is listed with its sha256 in `MANIFEST.sha256`.\n",
        _load_section(repo_id),
        "## Training configuration\n\nThe job spec this model was trained with:\n\n```yaml\n"
        + (yaml.safe_dump(spec, sort_keys=False) if spec else "# not recorded\n") + "```\n",
        _data_section(data_report),
        _eval_section(eval_summary),
        "## Training loss\n\n" + ("![training loss](loss.png)\n" if (folder / "loss.png").is_file()
                                  else "No loss plot was recorded.\n"),
    ]
    path = folder / "README.md"
    write_text_atomically(path, redact_secrets("\n".join(parts)))
    return path


def redact_secrets(text: str) -> str:
    """Replace the value of every secret-looking environment variable (8+ characters) in `text`."""
    for name, value in os.environ.items():
        if len(value) >= 8 and _SECRET_KEY_RE.search(name) and value in text:
            text = text.replace(value, REDACTED)
    return text


def _mask_secret_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET_KEY_RE.search(str(k)) and v is not None else _mask_secret_keys(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_secret_keys(v) for v in value]
    return value


def _hub_id(value: Any, default: str) -> str:
    """Return `value` when it is a hub id (`org/name`, not a local path), else `default`."""
    if isinstance(value, str) and _HUB_ID_RE.fullmatch(value) and not Path(value).exists():
        return value
    return default


def _load_section(repo_id: str) -> str:
    return f"""## How to use

Dream's remote code (`modeling_dream.py`, `generation_utils.py`) targets `transformers==4.46.2`;
4.50+ and 5.x break parts of it (see the Dream repository's issues).

```python
import torch
from transformers import AutoModel, AutoTokenizer

repo = "{repo_id}"
model = AutoModel.from_pretrained(repo, torch_dtype=torch.bfloat16, trust_remote_code=True).to("cuda").eval()
tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)

messages = [{{"role": "user", "content": "How many positive divisors does 360 have?"}}]
inputs = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True, add_generation_prompt=True)
output = model.diffusion_generate(
    inputs.input_ids.to("cuda"),
    attention_mask=inputs.attention_mask.to("cuda"),
    max_new_tokens=512,
    steps=512,
    temperature=0.2,
    top_p=0.95,
    alg="entropy",
    alg_temp=0.0,
    output_history=False,
    return_dict_in_generate=True,
)
answer = tokenizer.decode(output.sequences[0][len(inputs.input_ids[0]):].tolist())
print(answer.split(tokenizer.eos_token)[0])
```

Download and verify every file against `MANIFEST.sha256` with dream-job:

```bash
dream-job pull hf://{repo_id} ./dir
```
"""


def _data_section(report: dict[str, Any] | None) -> str:
    if not report:
        return "## Data\n\nNo data report was recorded.\n"
    rows = [f"| {label} | {_fmt(report[key])} |" for key, label in _REPORT_ROWS if key in report]
    train_sum = report.get("train_tokens", {}).get("sum")
    if train_sum is not None:
        rows.append(f"| training tokens per epoch | {_fmt(train_sum)} |")
    text = "## Data\n\n| | value |\n|---|---|\n" + "\n".join(rows) + "\n"
    tokens = report.get("tokens") or {}
    if tokens:
        stats = ("min", "mean", "p50", "p90", "p99", "max")
        text += "\nTokens per row (before truncation):\n\n| part | " + " | ".join(stats) + " |\n|---|"
        text += "---|" * len(stats) + "\n"
        text += "".join(f"| {part} | " + " | ".join(_fmt(values.get(s, "")) for s in stats) + " |\n"
                        for part, values in tokens.items() if isinstance(values, dict))
    return text


def _eval_section(summary: dict[str, Any] | None) -> str:
    """Return the evaluation section: the report's accuracy table, its note on intervals, the models."""
    if not summary:
        return "## Evaluation\n\nNo evaluation was recorded (`eval/summary.json` was absent).\n"
    from dream_job.eval.report import INTERVALS_NOTE, accuracy_table, model_sources  # the report's numbers

    lines = ["## Evaluation", "", "From `eval/summary.json` (the run's `eval/report.md` has the same table, "
             "example outputs and the decoding settings):", "", *accuracy_table(summary, speed=False), "",
             INTERVALS_NOTE, ""]
    sources = {label: found for label, found in model_sources(summary).items() if found}
    if sources:
        lines += [f"- `{label}`: {'; '.join(f'`{src}`' for src in found)}" for label, found in sources.items()]
        lines.append("")
    samplers = [e["sampler"] for entries in summary.values() for e in entries.values() if isinstance(e.get("sampler"), dict)]
    if samplers and all(s == samplers[0] for s in samplers):
        lines.append("Decoding: " + ", ".join(f"`{k}={v}`" for k, v in samplers[0].items()) + ".\n")
    elif samplers:
        lines.append("Models or suites were decoded with different settings; `eval/report.md` lists them.\n")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|")
