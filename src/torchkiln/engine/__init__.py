"""The training engine: plain PyTorch loop, optimizers, schedulers, checkpoints, logging."""
