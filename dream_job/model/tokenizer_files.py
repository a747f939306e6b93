"""The tokenizer files of an export: the tokenizer the job trained with, loadable by old and new transformers.

Input: the tokenizer folder prep saved (`<run>/data/tokenizer/`, written by the project's
transformers) and the base-model snapshot. Output: the tokenizer files of `<run>/export/`, which
`AutoTokenizer.from_pretrained(export, trust_remote_code=True)` loads both under Dream's pinned
transformers 4.46.2 and under the project's transformers, encoding as the tokenizer the job trained
with, with the same chat template.

Two layouts ship:
- Dream's published files (`DREAM_TOKENIZER_FILES`: `vocab.json`, `merges.txt`, the remote
  `DreamTokenizer`, the chat template inside `tokenizer_config.json`), byte for byte, when the
  job trained with the base model's own tokenizer and the base snapshot has them.
- Otherwise the fast tokenizer prep saved: `tokenizer.json` as saved, plus a
  `tokenizer_config.json` rewritten for both versions. transformers 5 saves a config that 4.46.2
  cannot load: it names the class `TokenizersBackend` (unknown to 4.46.2) or a slow class such as
  `Qwen2Tokenizer` without its `vocab.json` / `merges.txt`, may keep a remote `auto_map` to
  Dream's slow `DreamTokenizer` (which then fails on a missing vocab file), lists extra specials
  as `extra_special_tokens`, and keeps the chat template only in `chat_template.jinja`, which
  4.46.2 does not read. The rewritten config names `PreTrainedTokenizerFast` (both versions build
  it from `tokenizer.json` alone, so the encoding is the saved one), no `auto_map`, the special
  tokens, and the chat template inline as well as in `chat_template.jinja`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from dream_job.errors import DataError

TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
TOKENIZER_JSON_NAME = "tokenizer.json"
CHAT_TEMPLATE_NAME = "chat_template.jinja"
# Dream's published tokenizer: Qwen2's byte-level BPE as a remote slow `DreamTokenizer` (dream.md §3).
DREAM_TOKENIZER_FILES = (
    TOKENIZER_CONFIG_NAME, "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json",
    "tokenization_dream.py",
)
# The class both transformers 4.46.2 and 5 build from `tokenizer.json` alone, with no model-specific code.
FAST_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
# Config keys that keep their meaning in both versions (special tokens, lengths, decode settings).
_PORTABLE_KEYS = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
    "model_max_length", "padding_side", "truncation_side", "clean_up_tokenization_spaces", "model_input_names",
    "split_special_tokens",
)


def tokenizer_sources(tokenizer_dir: Path, base_dir: Path | None, *, base_tokenizer: bool) -> list[Path]:
    """Pick the tokenizer files to ship: those of the tokenizer the job trained with.

    `tokenizer_dir` is what prep saved of the tokenizer that encoded the training data. Only when
    that tokenizer is the base model's own (`base_tokenizer`) and the base snapshot holds all of
    `DREAM_TOKENIZER_FILES` are Dream's published files shipped instead (the same tokenizer, in
    the layout Dream's remote code expects).

    Raises:
        DataError: `tokenizer_dir` is not a folder with files in it.
    """
    if base_tokenizer and base_dir is not None and all((base_dir / name).is_file() for name in DREAM_TOKENIZER_FILES):
        return [base_dir / name for name in DREAM_TOKENIZER_FILES]
    if not tokenizer_dir.is_dir() or not any(p.is_file() for p in tokenizer_dir.iterdir()):
        raise DataError(
            f"no tokenizer to export: `{tokenizer_dir}` is not a tokenizer folder",
            hint="run `dream-job prep` first (it writes `<run>/data/tokenizer/`)",
        )
    return sorted(p for p in tokenizer_dir.iterdir() if p.is_file())


def write_tokenizer_files(sources: list[Path], folder: Path) -> None:
    """Write the tokenizer files `sources` into `folder`, readable by transformers 4.46.2 and 5.

    A file whose name `folder` already holds is skipped (a model folder given as the tokenizer
    must not replace the export's own `config.json`). Without `tokenizer.json` the files are
    copied as they are (Dream's published layout); with it, `tokenizer_config.json` is rewritten
    (module docstring) and the chat template is written both inline and as `chat_template.jinja`.
    Plain writes: the caller writes into a partial folder that it renames when complete.
    """
    names = {source.name: source for source in sources}
    fast = TOKENIZER_JSON_NAME in names
    for name, source in names.items():
        if (folder / name).exists() or (fast and name in (TOKENIZER_CONFIG_NAME, CHAT_TEMPLATE_NAME)):
            continue
        shutil.copyfile(source, folder / name)
    if not fast:
        return
    config_path = names.get(TOKENIZER_CONFIG_NAME)
    config = json.loads(config_path.read_text()) if config_path is not None else {}
    template_path = names.get(CHAT_TEMPLATE_NAME)
    template = template_path.read_text() if template_path is not None else config.get("chat_template")
    if not (folder / TOKENIZER_CONFIG_NAME).exists():
        (folder / TOKENIZER_CONFIG_NAME).write_text(json.dumps(portable_tokenizer_config(config, template), indent=2)
                                                    + "\n")
    if isinstance(template, str) and not (folder / CHAT_TEMPLATE_NAME).exists():
        (folder / CHAT_TEMPLATE_NAME).write_text(template)


def portable_tokenizer_config(config: dict[str, Any], chat_template: str | list[Any] | None) -> dict[str, Any]:
    """Return a `tokenizer_config.json` for a `tokenizer.json` that transformers 4.46.2 and 5 both load.

    Args:
        config: The saved `tokenizer_config.json` (either version's format).
        chat_template: The chat template (from `chat_template.jinja` or the config), or None.

    Returns:
        `FAST_TOKENIZER_CLASS`, the portable keys of `config`, the extra special tokens as
        `additional_special_tokens` and the chat template; no `auto_map`.
    """
    portable: dict[str, Any] = {"tokenizer_class": FAST_TOKENIZER_CLASS}
    portable.update({key: config[key] for key in _PORTABLE_KEYS if key in config})
    extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
    if isinstance(extra, dict):  # transformers 5 also allows named extra tokens: {name: token}
        extra = list(extra.values())
    if extra:
        portable["additional_special_tokens"] = list(extra)
    if chat_template is not None:
        portable["chat_template"] = chat_template
    return portable
