"""`dream-job eval`: decode every suite with one model and score the answers.

Input: the spec, a model label (`base`, `final`, or any name with a folder) and the run's data.
Output under `<run_dir>/eval/` (see `records.py`): `items-<label>-<suite>.jsonl` and the
`<label>` entries of `summary.json`. Re-running with the same sampler and prompt settings and
the same model reuses the items already written and decodes only the rest. On several GPUs the
batches are shared out among processes (`shards.py`, `processes.py`); a process with a shard
writes part files only, and the process that started them folds the parts in and summarizes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dream_job.diffusion.forwards import Forwards, make_forwards
from dream_job.diffusion.sampler import GenerationResult, decode_until_eos, generate
from dream_job.errors import SpecError
from dream_job.eval.answers import build_prompt, check_answer, extract_answer
from dream_job.eval.models import (
    EvalModel,
    ModelSource,
    describe_eval_model,
    load_described_model,
    load_eval_tokenizer,
)
from dream_job.eval.records import (
    append_items,
    items_name,
    read_items,
    suite_stats,
    update_summary,
    write_items,
)
from dream_job.eval.shards import Shard, merge_parts, part_path, shard_batches
from dream_job.eval.suites import EvalItem, load_suite
from dream_job.rundir import EVAL_DIR
from dream_job.spec import JobSpec
from dream_job.stopping import pause_point

logger = logging.getLogger(__name__)

GenerateFn = Callable[..., GenerationResult]
# Called as progress(description, num_done, num_total): once when a suite starts (num_done
# counts the reused items), then after every batch.
ProgressFn = Callable[[str, int, int], None]

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Dream's documented context: it was trained on 2,048 tokens of prompt + generation (data-and-eval.md §4).
DREAM_TRAINED_CONTEXT = 2048


@dataclass
class EvalPlan:
    """What evaluating one model involves: its suites' items and prompts, the items already done, the rest."""

    tokenizer: Any
    described: ModelSource
    key: str
    items: dict[str, list[EvalItem]]  # per suite, in suite order
    done: dict[str, dict[str, dict[str, Any]]]  # per suite: {item id: record} reusable from earlier runs
    pending: dict[str, list[tuple[EvalItem, list[int]]]]  # per suite: (item, prompt), shortest prompt first

    def most_batches(self, batch_size: int) -> int:
        """The most batches any suite has left: more processes than that would have nothing to decode."""
        return max((-(-len(pairs) // batch_size) for pairs in self.pending.values()), default=0)


def plan_evaluation(spec: JobSpec, *, model_label: str, model_dir: Path | None = None,
                    shard: Shard | None = None) -> EvalPlan:
    """Find what evaluating a model still needs, without loading its weights.

    Loads the tokenizer and the suites, describes the model (`eval/models.py`), checks that every
    prompt plus `eval.sampler.gen_length` fits its context, and reads the items already written.
    Without a shard (one process, or the parent of several) it first folds any part files left by
    processes of an earlier run into the items files (`shards.merge_parts`); a shard only reads.

    Raises:
        SpecError: The label is not a plain name, or a prompt plus `gen_length` exceeds the
            model's `max_position_embeddings`.
        DataError: A suite or the tokenizer cannot be read.
        CheckpointError: The model folder is missing or not a Dream checkpoint.
    """
    if not _LABEL.match(model_label):
        raise SpecError(f"model label `{model_label}` must be letters, digits, `.`, `_` or `-`")
    eval_dir = spec.run_dir() / EVAL_DIR
    tokenizer = load_eval_tokenizer(spec)
    suites = {suite: load_suite(suite, spec.eval, spec.run_dir()) for suite in spec.eval.suites}
    prompts = {
        suite: [
            build_prompt(tokenizer, item.question, system_prompt=spec.data.system_prompt,
                         prefill_think=spec.eval.prefill_think)
            for item in items
        ]
        for suite, items in suites.items()
    }
    described = describe_eval_model(spec, label=model_label, model_dir=model_dir, tokenizer=tokenizer)
    _check_context(prompts, spec.eval.sampler.gen_length, described.config.max_position_embeddings)
    key = settings_key(spec, described.fingerprint)
    done, pending = {}, {}
    for suite, items in suites.items():
        path = eval_dir / items_name(model_label, suite)
        if shard is None:
            merge_parts(path)
        done[suite] = read_items(path, key=key, golds={item.id: item.gold for item in items}, repair=shard is None)
        pairs = [(item, prompt) for item, prompt in zip(items, prompts[suite], strict=True)
                 if item.id not in done[suite]]
        # Shortest prompt first (stable: equal lengths keep suite order): a batch then pads little,
        # and consecutive batches share the sampler's CUDA graphs.
        pending[suite] = sorted(pairs, key=lambda pair: len(pair[1]))
    return EvalPlan(tokenizer, described, key, suites, done, pending)


def evaluate(
    spec: JobSpec,
    *,
    model_label: str,
    model_dir: Path | None = None,
    generate_fn: GenerateFn = generate,
    progress: ProgressFn | None = None,
    shard: Shard | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate one model on every suite of `eval.suites` and record the results.

    Plans (`plan_evaluation`), loads the weights only when items are left, and decodes them in
    batches of `eval.batch_size`, shortest prompt first. Writes, per suite, `<run_dir>/eval/
    items-<label>-<suite>.jsonl` (appended per batch, rewritten in suite order at the end) and
    the `summary.json` entry of (label, suite), atomically and merged with the other entries.
    With a shard it decodes only that process's batches (`shards.py`), appends them to its part
    files and writes no summary: the parent that started the processes does.

    Args:
        spec: The job spec (`eval`, `model`, `data.system_prompt`, `train.seed`/`device`).
        model_label: `base`, `final`, or a name for the model in `model_dir`; names the files.
        model_dir: An HF Dream folder to evaluate instead of what the label names.
        generate_fn: The decoder (`dream_job.diffusion.sampler.generate`'s signature).
        progress: Called as `progress(description, num_done, num_total)`; see `ProgressFn`.
        shard: This process's share when several decode together (`dream_job.eval.processes`).

    Returns:
        {suite: summary entry} for this label (n, correct, accuracy, tokens/s, settings, ...);
        {} for a shard.

    Raises:
        SpecError, DataError, CheckpointError: See `plan_evaluation`.
    """
    plan = plan_evaluation(spec, model_label=model_label, model_dir=model_dir, shard=shard)
    eval_dir = spec.run_dir() / EVAL_DIR
    batches = {suite: shard_batches(pairs, spec.eval.batch_size, shard) for suite, pairs in plan.pending.items()}
    loaded, forwards, generator = None, None, None
    if any(batches.values()):
        loaded = load_described_model(spec, plan.described)
        device = loaded.model.lm_head.weight.device
        generator = torch.Generator(device=device).manual_seed(spec.eval.seed)
        forwards = make_forwards(loaded.model, spec.eval.sampler)  # one per model: its CUDA graphs serve every batch
    results = {}
    for suite, items in plan.items.items():
        path = eval_dir / items_name(model_label, suite)
        done = plan.done[suite]
        if progress:
            progress(f"{model_label} {suite}", len(done), len(items))
        for batch in batches[suite]:
            assert loaded is not None and forwards is not None and generator is not None
            records = _decode_batch(spec, loaded, plan, batch, generate_fn=generate_fn, generator=generator,
                                    forwards=forwards)
            append_items(path if shard is None else part_path(path, shard.index), records)
            done.update((r["id"], r) for r in records)
            pause_point("eval:batch")
            if progress:
                progress(f"{model_label} {suite}", len(done), len(items))
        if shard is not None:
            logger.info("process %s: %s %s: decoded %d items in %d batches", shard, model_label, suite,
                        sum(len(batch) for batch in batches[suite]), len(batches[suite]))
            continue
        ordered = [done[item.id] for item in items]
        write_items(path, ordered)
        entry = {
            **suite_stats(ordered, spec.eval.sampler.gen_length),
            "items": items_name(model_label, suite),
            "model": plan.described.source,
            "sampler": spec.eval.sampler.model_dump(),
            "prefill_think": spec.eval.prefill_think,
            "limit": spec.eval.limit,
            "seed": spec.eval.seed,
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        update_summary(eval_dir, model_label, suite, entry)
        tok_s, per_forward = entry["tokens_per_second"], entry["tokens_per_forward"]
        logger.info("%s %s: %d/%d correct (%.1f%%), %s tok/s, %s tokens per forward", model_label, suite,
                    entry["correct"], entry["n"], 100 * entry["accuracy"], "-" if tok_s is None else f"{tok_s:.1f}",
                    "-" if per_forward is None else f"{per_forward:.2f}")
        results[suite] = entry
    return results


def settings_key(spec: JobSpec, model_fingerprint: str) -> str:
    """Return the hash that decides whether an item written earlier can be reused."""
    payload = {
        "sampler": spec.eval.sampler.model_dump(),
        "prefill_think": spec.eval.prefill_think,
        "system_prompt": spec.data.system_prompt,
        "model": model_fingerprint,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _check_context(prompts: dict[str, list[list[int]]], gen_length: int, max_positions: int) -> None:
    """Refuse a suite whose longest prompt plus `gen_length` does not fit the model's positions."""
    for suite, suite_prompts in prompts.items():
        longest = max(len(p) for p in suite_prompts)
        total = longest + gen_length
        if total > max_positions:
            room = max_positions - longest
            raise SpecError(
                f"`eval.sampler.gen_length` ({gen_length}) plus the longest `{suite}` prompt ({longest} tokens) is "
                f"{total} tokens, over the model's context of {max_positions} (`max_position_embeddings`)",
                hint=f"set `--set eval.sampler.gen_length={room}` or less" if room > 0
                else "the prompt alone does not fit; evaluate a model with a longer context",
            )
        if total > DREAM_TRAINED_CONTEXT and max_positions > DREAM_TRAINED_CONTEXT:
            logger.warning("`%s`: prompt + generation reach %d tokens; Dream was trained on %d", suite, total,
                           DREAM_TRAINED_CONTEXT)


def _decode_batch(
    spec: JobSpec,
    loaded: EvalModel,
    plan: EvalPlan,
    batch: list[tuple[EvalItem, list[int]]],
    *,
    generate_fn: GenerateFn,
    generator: torch.Generator,
    forwards: Forwards,
) -> list[dict[str, Any]]:
    """Decode one batch together and return a record per item (`records.ITEM_KEYS` and its batch's passes)."""
    tokenizer = plan.tokenizer
    result = generate_fn(
        loaded.model, [prompt for _, prompt in batch], spec.eval.sampler,
        mask_id=loaded.mask_id, eos_id=loaded.eos_id, pad_id=loaded.pad_id, generator=generator,
        forwards=forwards,
    )
    seconds = result.seconds / len(batch)  # the batch decodes together; share its time evenly
    records = []
    for (item, prompt), tokens in zip(batch, result.tokens, strict=True):
        generated = decode_until_eos(tokens, loaded.eos_id)
        output = tokenizer.decode(generated, skip_special_tokens=False)
        extracted = extract_answer(output)
        records.append({
            "id": item.id, "key": plan.key, "prompt": tokenizer.decode(prompt, skip_special_tokens=False),
            "output": output, "extracted": extracted, "gold": item.gold,
            "correct": check_answer(item.gold, extracted), "tokens": len(generated), "seconds": seconds,
            "forward_passes": result.num_forward_passes,  # of the whole batch, which decodes together
        })
    return records
