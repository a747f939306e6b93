"""Training: FSDP2 setup, methods, the loop, DCP checkpoints and the HF export."""
