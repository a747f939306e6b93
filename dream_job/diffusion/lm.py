"""Dream with the masked-diffusion SFT loss as its forward pass.

`DreamForMaskedDiffusion` is a `DreamModel` (same parameter names, same checkpoints) whose
`forward` takes a clean batch, noises it and returns the loss. Computing the loss inside
`forward` matters under FSDP2: the lm_head weight is only unsharded inside the root module's
forward, and the loss applies it to the masked positions only (no [B, L, V] logits).

Shape legend: B batch, L length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dream_job.diffusion.objective import WeightScheme, loss_weights, mask_tokens, masked_diffusion_loss, sample_t
from dream_job.model.dream import DreamModel


class DreamForMaskedDiffusion(DreamModel):
    """A `DreamModel` whose forward is one masked-diffusion training step's loss (dream.md §6-§9)."""

    # Rows of logits per loss chunk. Each row costs ~12 B per vocab entry at the backward peak
    # (1.7 GiB for 1,024 rows of Dream's 152k vocabulary); 4,096 rows measured 7 GiB on the H100,
    # the largest single term of LoRA's peak, for no measurable speed gain.
    loss_chunk_size: int = 1024

    def forward(  # type: ignore[override]
        self,
        input_ids_BL: Tensor,
        *,
        loss_mask_BL: Tensor,
        attention_mask_BL: Tensor | None,
        position_ids_BL: Tensor | None,
        generator: torch.Generator,
        time_eps: float,
        weighting: WeightScheme,
        cart_p: float,
        t_B: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Noise the clean batch, run the model and return (loss, number of masked tokens).

        Args:
            input_ids_BL: Clean token ids (the labels).
            loss_mask_BL: True where a token may be masked (response, EOS, right pads).
            attention_mask_BL: False on left pads; None when the batch has none (the fast SDPA path).
            position_ids_BL: RoPE positions, or None for 0..L-1.
            generator: Source of the noise (t and the mask draws), on the batch's device.
            time_eps: t ~ U(time_eps, 1).
            weighting: Per-token loss weight scheme.
            cart_p: CART kernel parameter.
            t_B: Fixed noise levels (the validation loss's t grid); None draws t ~ U(time_eps, 1).

        Returns:
            loss: sum(w * CE over masked) / number masked, fp32.
            num_masked: Number of masked tokens, as a tensor.
        """
        if t_B is None:
            t_B = sample_t(input_ids_BL.shape[0], eps=time_eps, generator=generator, device=input_ids_BL.device)
        noisy_BL, masked_BL = mask_tokens(
            input_ids_BL, loss_mask_BL, t_B, mask_token_id=self.config.mask_token_id, generator=generator
        )
        w_BL = loss_weights(masked_BL, t_B, scheme=weighting, cart_p=cart_p)
        hidden_BLD = self.hidden_states(noisy_BL, attention_mask_BL=attention_mask_BL, position_ids_BL=position_ids_BL)
        loss, num_masked = masked_diffusion_loss(
            hidden_BLD, self.lm_head.weight, input_ids_BL, masked_BL, w_BL, chunk_size=self.loss_chunk_size
        )
        return loss, torch.tensor(num_masked, device=input_ids_BL.device)

