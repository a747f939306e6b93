"""Masked-diffusion maths of Dream: the SFT objective (masking, CART weights, chunked loss, cut-off)."""

from dream_job.diffusion.objective import (
    WeightScheme,
    cutoff_none,
    cutoff_random_with_input_pad,
    loss_weights,
    mask_tokens,
    masked_diffusion_loss,
    sample_t,
    select_predictor_positions,
)

__all__ = [
    "WeightScheme",
    "cutoff_none",
    "cutoff_random_with_input_pad",
    "loss_weights",
    "mask_tokens",
    "masked_diffusion_loss",
    "sample_t",
    "select_predictor_positions",
]
