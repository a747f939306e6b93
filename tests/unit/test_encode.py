"""Row layout and encoding: exact tokens for each truncation policy, on the tiny and the real Qwen vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dream_job.data.encode import ANSWER_TOO_LONG, KEPT, OVER_MAX_LENGTH, PROMPT_TOO_LONG, encode_row
from dream_job.data.layout import read_row, response_text
from dream_job.data.tokenizer import CHATML_TEMPLATE, load_tokenizer
from tests.conftest import FIXTURES, TINY_DREAM, s1k_row

QUESTION = "Tom has 23 apples and buys 45 more. How many apples does he have now?"
TRACE = "\n".join(f"Step {i}: count the apples again, {i} times over, to be sure." for i in range(12))
ATTEMPT = "Tom has 23 + 45 = 68 apples.\n\nThe answer is $\\boxed{68}$."
MARKER = "\n[cut]\n"


@pytest.fixture(scope="module")
def tiny():
    return load_tokenizer(str(TINY_DREAM))


def encode(tokenizer, max_length: int, truncation: str, system_prompt: str | None = None):
    return encode_row(tokenizer, QUESTION, TRACE, ATTEMPT, system_prompt=system_prompt, max_length=max_length,
                      truncation=truncation, marker=MARKER)


def prompt_text(system: str = "You are a helpful assistant.") -> str:
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"


FULL_RESPONSE = f"<|im_start|>think\n{TRACE}\n<|im_start|>answer\nAnswer: {ATTEMPT}<|endoftext|>"


def test_layout_follows_s1_with_the_answer_rule() -> None:
    assert response_text("t", "x") == "<|im_start|>think\nt\n<|im_start|>answer\nAnswer: x"
    assert response_text("t", "Answer: 5") == "<|im_start|>think\nt\n<|im_start|>answer\nAnswer: 5"


@pytest.mark.parametrize("truncation", ["right", "drop", "keep_answer"])
def test_short_row_is_kept_whole_under_every_policy(tiny, truncation: str) -> None:
    row = encode(tiny, 4096, truncation)
    assert row.status == KEPT and not row.truncated
    assert tiny.decode(row.input_ids) == prompt_text() + FULL_RESPONSE
    assert row.input_ids[: row.prompt_length] == tiny.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert len(row.input_ids) == row.total_tokens == row.prompt_tokens + row.trace_tokens + row.answer_tokens
    assert row.input_ids[-1] == tiny.eos_token_id


def test_right_keeps_exactly_the_first_max_length_tokens(tiny) -> None:
    full = encode(tiny, 4096, "right")
    cut = encode(tiny, full.prompt_length + 10, "right")
    assert cut.truncated and cut.status == KEPT
    assert cut.input_ids == full.input_ids[: full.prompt_length + 10]
    assert tiny.eos_token_id not in cut.input_ids[cut.prompt_length :]


def test_drop_marks_over_length_rows(tiny) -> None:
    full = encode(tiny, 4096, "drop")
    assert encode(tiny, len(full.input_ids), "drop").status == KEPT
    assert encode(tiny, len(full.input_ids) - 1, "drop").status == OVER_MAX_LENGTH


def test_keep_answer_fits_exactly_and_the_answer_survives(tiny) -> None:
    full = encode(tiny, 4096, "keep_answer")
    max_length = full.prompt_tokens + full.answer_tokens + 40
    row = encode(tiny, max_length, "keep_answer")
    assert row.status == KEPT and row.truncated
    assert len(row.input_ids) == max_length
    text = tiny.decode(row.input_ids)
    assert text.startswith(prompt_text() + "<|im_start|>think\nStep 0: count")
    assert text.endswith(f"{MARKER}\n<|im_start|>answer\nAnswer: {ATTEMPT}<|endoftext|>")
    # The kept trace is a prefix of the original trace's tokens.
    kept_trace = text[len(prompt_text() + "<|im_start|>think\n") : text.index(MARKER)]
    assert TRACE.startswith(kept_trace) and len(kept_trace) < len(TRACE)
    # Lengths before truncation are reported, not the cut ones.
    assert (row.prompt_tokens, row.trace_tokens, row.answer_tokens) == (
        full.prompt_tokens, full.trace_tokens, full.answer_tokens)


def test_keep_answer_drops_a_row_whose_answer_cannot_fit(tiny) -> None:
    full = encode(tiny, 4096, "keep_answer")
    assert encode(tiny, full.prompt_tokens + full.answer_tokens, "keep_answer").status == ANSWER_TOO_LONG


@pytest.mark.parametrize("truncation", ["right", "drop", "keep_answer"])
def test_prompt_longer_than_max_length_is_reported(tiny, truncation: str) -> None:
    full = encode(tiny, 4096, truncation)
    assert encode(tiny, full.prompt_tokens, truncation).status == PROMPT_TOO_LONG


def test_system_prompt_replaces_the_default(tiny) -> None:
    row = encode(tiny, 4096, "right", system_prompt="Think step by step.")
    assert tiny.decode(row.input_ids[: row.prompt_length]) == prompt_text("Think step by step.")


def test_read_row_accepts_one_element_lists_and_names_bad_columns() -> None:
    text, reason = read_row(s1k_row(trace=["  the trace  "], attempt=["5"]), "deepseek")
    assert reason == "" and text is not None and text.trace == "the trace" and text.attempt == "5"
    assert read_row(s1k_row(trace=["a", "b"]), "deepseek") == (
        None, "`deepseek_thinking_trajectory` is a list of 2 items, expected 1")
    assert read_row(s1k_row(attempt=None), "deepseek") == (None, "`deepseek_attempt` is missing")
    assert read_row(s1k_row(question="   "), "gemini") == (None, "`question` is empty")
    assert read_row(s1k_row(gemini_attempt=7), "gemini") == (None, "`gemini_attempt` is not text")


# --- the real Qwen2.5 vocabulary with Dream's special ids -------------------------------------------

def test_dream_tokenizer_folder_loads_with_dreams_special_ids(qwen_dream_tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(str(qwen_dream_tokenizer_dir))
    assert tokenizer.convert_tokens_to_ids(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>"]
    ) == [151643, 151644, 151645, 151665, 151666]
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id) == (151643, 151643, 151666)
    # Markers are the special id followed by ordinary text tokens (data-and-eval.md §2).
    assert tokenizer("<|im_start|>think\n", add_special_tokens=False)["input_ids"][0] == 151644


def test_real_tokenizer_encodes_rows_exactly(qwen_dream_tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(str(qwen_dream_tokenizer_dir))
    row = encode(tokenizer, 8192, "keep_answer")
    assert tokenizer.decode(row.input_ids) == prompt_text() + FULL_RESPONSE
    assert row.input_ids[: row.prompt_length] == tokenizer(prompt_text(), add_special_tokens=False)["input_ids"]
    # Response segments split at markers and newlines: only the trace/answer boundary may differ from
    # tokenizing the response in one go (Qwen merges ".\n"), and by at most one token.
    joint = tokenizer(FULL_RESPONSE.removesuffix("<|endoftext|>"), add_special_tokens=False)["input_ids"]
    assert 0 <= (row.trace_tokens + row.answer_tokens - 1) - len(joint) <= 1
    cut = encode(tokenizer, row.prompt_tokens + row.answer_tokens + 30, "keep_answer")
    assert len(cut.input_ids) == row.prompt_tokens + row.answer_tokens + 30
    assert tokenizer.decode(cut.input_ids).endswith(f"\n<|im_start|>answer\nAnswer: {ATTEMPT}<|endoftext|>")


def test_tiny_template_renders_like_dreams_published_template(qwen_dream_tokenizer_dir: Path) -> None:
    dream_template = json.loads((FIXTURES / "dream-hub" / "tokenizer_config.json").read_text())["chat_template"]
    tokenizer = load_tokenizer(str(qwen_dream_tokenizer_dir))
    assert tokenizer.chat_template == dream_template
    for messages in (
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "?"}],
    ):
        for generation_prompt in (True, False):
            ours = tokenizer.apply_chat_template(messages, chat_template=CHATML_TEMPLATE, tokenize=False,
                                                 add_generation_prompt=generation_prompt)
            theirs = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
            assert ours == theirs
