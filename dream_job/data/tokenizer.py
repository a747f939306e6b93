"""Load the base model's tokenizer, and build the tiny Dream-like tokenizer for smoke runs.

Real runs load Dream's tokenizer through transformers. Dream's hub folder names its remote
class `DreamTokenizer`, which is Qwen2's byte-level BPE (`vocab.json` + `merges.txt`) plus
Dream's added tokens; we load that folder with transformers' own `Qwen2Tokenizer` instead of
running remote code, and every other folder through `AutoTokenizer`.

The tiny tokenizer (tests, smoke job) is a byte-level BPE trained with the `tokenizers`
library on a small corpus, with Dream's special tokens and ChatML chat template, saved as an
ordinary HF tokenizer folder so it loads through the same path.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dream_job.data.source import check_hub_repo, is_local  # is_local: re-exported, read from here too
from dream_job.errors import DataError

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
BOS_TOKEN = "<|beginoftext|>"
MASK_TOKEN = "<|mask|>"
DREAM_SPECIAL_TOKENS = (EOS_TOKEN, IM_START, IM_END, BOS_TOKEN, MASK_TOKEN)

# Dream's chat template without the tool-calling branch: identical output for plain
# system/user/assistant conversations (checked against Dream's published template in tests).
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen2's pre-tokenizer split (digits one by one), so the tiny tokenizer cuts text like Dream's.
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def load_tokenizer(name: str, revision: str | None = None, *, key: str = "model.tokenizer") -> Any:
    """Load a tokenizer folder or hub repo and check it has what Dream training needs.

    Args:
        name: Hub id or local folder.
        revision: Hub revision.
        key: The spec key `name` came from, for error messages.

    Returns:
        A transformers tokenizer with EOS, mask token and a chat template.

    Raises:
        DataError: The folder is missing, cannot be loaded or lacks EOS/mask/chat template.
    """
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    if is_local(name) and not Path(name).expanduser().is_dir():
        raise DataError(
            f"`{key}` points to `{name}`, which is not a folder",
            hint=f"pass a tokenizer folder or a hub id, e.g. `--set {key}=Dream-org/Dream-v0-Base-7B`",
        )
    if not is_local(name):
        check_hub_repo(name, revision, repo_type="model", key=key)
    try:
        config = get_tokenizer_config(name, revision=revision)
        tokenizer = _tokenizer_class(config.get("tokenizer_class")) or AutoTokenizer
        tokenizer = tokenizer.from_pretrained(name, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot load the tokenizer `{name}` given by `{key}`",
            caused_by=[str(exc).splitlines()[0]],
            hint="check the id or path; gated or private repos need `HF_TOKEN` in the environment",
        ) from None
    missing = [
        what
        for what, ok in (
            ("an EOS token", tokenizer.eos_token is not None),
            (f"the mask token `{MASK_TOKEN}`", tokenizer.convert_tokens_to_ids(MASK_TOKEN) not in (None, tokenizer.unk_token_id)),
            ("a chat template", bool(tokenizer.chat_template)),
        )
        if not ok
    ]
    if missing:
        raise DataError(
            f"the tokenizer `{name}` given by `{key}` has no {', '.join(missing)}",
            hint="use Dream's tokenizer (`Dream-org/Dream-v0-Base-7B`) or a folder with Dream's special tokens",
        )
    return tokenizer


def _tokenizer_class(name: str | None) -> Any:
    """Resolve `tokenizer_class` from tokenizer_config.json without loading the model config."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    if name is None:
        return None
    # Dream's remote `DreamTokenizer` is Qwen2's byte-level BPE with Dream's added tokens.
    return tokenizer_class_from_name("Qwen2Tokenizer" if name == "DreamTokenizer" else name)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Return a sha256 over everything that changes how this tokenizer encodes text."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    digest.update((tokenizer.chat_template or "").encode())
    digest.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    return digest.hexdigest()


def build_tiny_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> Any:
    """Train a byte-level BPE with Dream's special tokens and chat template on `corpus`.

    Args:
        corpus: Training texts.
        vocab_size: Size of the BPE vocabulary including the 256 byte symbols and specials.

    Returns:
        A `transformers` fast tokenizer; `save_pretrained(folder)` writes an ordinary HF folder.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(DREAM_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        mask_token=MASK_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=131072,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
