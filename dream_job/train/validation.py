"""The validation loss: the training objective on the held-out rows, with no randomness left.

Training draws a noise level t ~ U(eps, 1) and a mask per row, so two evaluations of the same
weights would disagree. Here every held-out row is scored at each t of the fixed grid
`T_GRID` with masks drawn from a generator seeded by (seed, grid point, micro-batch), and with
no cut-off, so the number depends on the weights only: the same across steps, runs, resumes and
numbers of processes (chunks are fixed; ranks take every `world_size`-th one).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from dream_job.data.holdout import HoldoutRow
from dream_job.diffusion.lm import DreamForMaskedDiffusion
from dream_job.spec import TrainSpec
from dream_job.train.batches import collate

# Midpoints of four equal bins of (0, 1]: low, medium and high noise weigh the same.
T_GRID = (0.125, 0.375, 0.625, 0.875)


class Validator:
    """Score the model on the held-out rows (`loss()`): mean over grid points and micro-batches.

    Args:
        rows: Encoded held-out rows (`dream_job.data.holdout.read_holdout_tokens`).
        train: The job's training settings (micro-batch size, seed, loss weighting).
        pad_id, eos_id: The model's token ids.
        rank, world_size: This process and how many share the work.
        device: Where the batches go.
    """

    def __init__(self, rows: list[HoldoutRow], train: TrainSpec, *, pad_id: int, eos_id: int, rank: int,
                 world_size: int, device: torch.device) -> None:
        size = train.micro_batch_size
        self.chunks = [rows[i:i + size] for i in range(0, len(rows), size)]
        self.train, self.pad_id, self.eos_id = train, pad_id, eos_id
        self.rank, self.world_size, self.device = rank, world_size, device

    @property
    def enabled(self) -> bool:
        """Whether there is anything to score (held-out rows exist)."""
        return bool(self.chunks)

    @torch.no_grad()
    def loss(self, model: DreamForMaskedDiffusion) -> float:
        """Return the mean loss over every (t, micro-batch) pair; collective (all ranks call it).

        The model is put in eval mode (no LoRA dropout) and back in train mode; the global RNG is
        not touched, so training continues exactly as without validation.
        """
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            # Every rank runs the same number of forwards (FSDP2 gathers weights in each one): a rank
            # short of chunks scores chunk 0 again and does not count it.
            num_rounds = -(-len(self.chunks) // self.world_size)
            for k, t in enumerate(T_GRID):
                for index in range(self.rank, num_rounds * self.world_size, self.world_size):
                    loss = self._chunk_loss(model, index if index < len(self.chunks) else 0, k, t)
                    if index < len(self.chunks):
                        total, count = total + loss, count + 1
        finally:
            model.train(was_training)
        sums = torch.tensor([total, float(count)], dtype=torch.float64, device=self.device)
        if dist.is_initialized():
            dist.all_reduce(sums)
        return float(sums[0] / sums[1])

    def _chunk_loss(self, model: DreamForMaskedDiffusion, index: int, k: int, t: float) -> float:
        rows = [{"input_ids": r.input_ids, "prompt_length": r.prompt_length} for r in self.chunks[index]]
        # A negative step never occurs in training: the masks differ from every training draw.
        batch = collate(rows, cutoff="none", pad_id=self.pad_id, eos_id=self.eos_id, seed=self.train.seed,
                        step=-(k + 1), micro_index=index, device=self.device)
        t_B = torch.full((len(rows),), t, device=self.device)
        loss, _ = model(
            batch.input_ids_BL, loss_mask_BL=batch.loss_mask_BL, attention_mask_BL=batch.attention_mask_BL,
            position_ids_BL=batch.position_ids_BL, generator=batch.generator, time_eps=self.train.time_eps,
            weighting=self.train.loss_weighting, cart_p=self.train.cart_p, t_B=t_B,
        )
        return float(loss)
