"""Deterministic, length-grouped, resumable batches of the prepared training rows.

The order of one epoch is a pure function of (seed, epoch): rows are shuffled, cut into
windows of `GROUP_BATCHES` global batches, sorted by length inside each window (so a batch
holds rows of similar length and little padding), cut into global batches, and the batches
are shuffled. Global batch `step` of the run is therefore known without any saved state, and
a resumed run (on any number of processes) sees exactly the batches it would have seen.

Inside a global batch the rows are split into micro-batches of `micro_batch_size`; micro
batch `m` goes to rank `m % world_size` as its accumulation step `m // world_size`, and its
noise is seeded by (seed, step, m), so the computation of a step does not depend on how
many processes run it.

Shape legend: B batch, L length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from dream_job.diffusion.objective import cutoff_none, cutoff_random_with_input_pad

GROUP_BATCHES = 16  # global batches sorted together; larger = less padding, less randomness


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch ready for the model, plus what the loss and metrics need."""

    input_ids_BL: torch.Tensor
    loss_mask_BL: torch.Tensor
    attention_mask_BL: torch.Tensor | None  # None when no row has left padding (fast SDPA path)
    position_ids_BL: torch.Tensor | None
    num_tokens: int  # real (non-pad) tokens, for tokens/s
    generator: torch.Generator


class BatchPlan:
    """Which rows make up each global batch and micro-batch of the run.

    Args:
        lengths: Token count of every training row.
        global_batch_size: Rows per optimizer step.
        micro_batch_size: Rows per forward/backward.
        world_size: Number of processes.
        seed: Seed of the order.
    """

    def __init__(self, lengths: list[int], *, global_batch_size: int, micro_batch_size: int, world_size: int,
                 seed: int) -> None:
        per_round = micro_batch_size * world_size
        if global_batch_size % per_round:
            raise ValueError(
                f"`train.global_batch_size` ({global_batch_size}) must be a multiple of "
                f"`train.micro_batch_size` x processes ({micro_batch_size} x {world_size})"
            )
        if len(lengths) < global_batch_size:
            raise ValueError(
                f"only {len(lengths)} training rows, fewer than `train.global_batch_size` ({global_batch_size})"
            )
        self.lengths = lengths
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.world_size = world_size
        self.seed = seed
        self.accumulation_steps = global_batch_size // per_round
        self.steps_per_epoch = len(lengths) // global_batch_size
        self._epoch_cache: dict[int, list[list[int]]] = {}

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Return the global batches (row indices, shortest first inside each) of `epoch`."""
        if epoch not in self._epoch_cache:
            rng = random.Random(f"{self.seed}/epoch/{epoch}")
            order = list(range(len(self.lengths)))
            rng.shuffle(order)
            order = order[: self.steps_per_epoch * self.global_batch_size]  # drop the incomplete batch
            window = self.global_batch_size * GROUP_BATCHES
            batches = []
            for start in range(0, len(order), window):
                group = sorted(order[start : start + window], key=lambda i: (self.lengths[i], i))
                batches += [group[i : i + self.global_batch_size] for i in range(0, len(group), self.global_batch_size)]
            rng.shuffle(batches)
            self._epoch_cache = {epoch: batches}
        return self._epoch_cache[epoch]

    def micro_batches(self, step: int, rank: int) -> list[tuple[int, list[int]]]:
        """Return this rank's `(micro index m, row indices)` for optimizer step `step` (0-based)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        rows = self.epoch_batches(epoch)[position]
        micros = [rows[i : i + self.micro_batch_size] for i in range(0, len(rows), self.micro_batch_size)]
        return [(m, micro) for m, micro in enumerate(micros) if m % self.world_size == rank]


def collate(
    rows: list[dict[str, Any]],
    *,
    cutoff: str,
    pad_id: int,
    eos_id: int,
    seed: int,
    step: int,
    micro_index: int,
    device: torch.device,
) -> MicroBatch:
    """Pad rows into tensors, apply the per-batch cut-off and attach the micro-batch's noise generator.

    Args:
        rows: Prepared rows with `input_ids` and `prompt_length`.
        cutoff: `random_with_input_pad` (Dream's) or `none`.
        pad_id, eos_id: Token ids (the same id for Dream).
        seed, step, micro_index: Seed the generator used for the cut-off and the noise.
        device: Where the tensors go.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(hash_seed(seed, step, micro_index))
    width = max(len(r["input_ids"]) for r in rows) + 1
    ids_BL = torch.full((len(rows), width), pad_id, dtype=torch.long)
    prompt_B = torch.tensor([r["prompt_length"] for r in rows])
    # The response length excludes the EOS that prep appended (right-truncated rows have none).
    response_B = torch.tensor(
        [len(r["input_ids"]) - r["prompt_length"] - int(r["input_ids"][-1] == eos_id) for r in rows]
    )
    for b, row in enumerate(rows):
        ids_BL[b, : len(row["input_ids"])] = torch.tensor(row["input_ids"])
    ids_BL, prompt_B, response_B = ids_BL.to(device), prompt_B.to(device), response_B.to(device)
    cut = cutoff_random_with_input_pad if cutoff == "random_with_input_pad" else cutoff_none
    batch = cut(ids_BL, prompt_B, response_B, pad_id=pad_id, generator=generator)
    attention_BL = batch["attention_mask_BL"]
    has_left_pads = not bool(attention_BL.all())
    return MicroBatch(
        input_ids_BL=batch["input_ids_BL"],
        loss_mask_BL=batch["loss_mask_BL"],
        attention_mask_BL=attention_BL if has_left_pads else None,
        position_ids_BL=batch["position_ids_BL"] if has_left_pads else None,
        num_tokens=int(attention_BL.sum()),
        generator=generator,
    )


def hash_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (stable across runs and machines)."""
    import hashlib

    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
