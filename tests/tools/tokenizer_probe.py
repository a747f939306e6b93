"""Load a tokenizer folder the way a user does and print what it encodes (runs in any transformers venv).

Usage: `python tokenizer_probe.py FOLDER < {"texts": [...], "messages": [...]}`; prints one line
`TOKENIZER_PROBE_RESULT {json}` (see `dream_transformers_env.probe_tokenizer`). Imports nothing
from the project: it runs under Dream's pinned transformers 4.46.2 too.
"""

from __future__ import annotations

import json
import sys

import transformers
from transformers import AutoTokenizer


def main() -> None:
    folder = sys.argv[1]
    request = json.loads(sys.stdin.read())
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    chat = tokenizer.apply_chat_template(request["messages"], tokenize=False, add_generation_prompt=True)
    result = {
        "version": transformers.__version__,
        "class": type(tokenizer).__name__,
        "special": {name: getattr(tokenizer, f"{name}_token") for name in ("bos", "eos", "pad", "mask", "unk")},
        "ids": [tokenizer(text)["input_ids"] for text in request["texts"]],
        "ids_plain": [tokenizer(text, add_special_tokens=False)["input_ids"] for text in request["texts"]],
        "chat": chat,
        "chat_ids": tokenizer(chat, add_special_tokens=False)["input_ids"],
    }
    print("TOKENIZER_PROBE_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
