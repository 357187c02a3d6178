"""The learning-rate schedule: a linear warmup, then constant or a half cosine down to ``min_lr``."""

from __future__ import annotations

import math

import torch

from harness.train.config import TrainConfig


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's lr; a tensor lr (a CUDA graph reads it from memory) is filled in place."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def learning_rate(config: TrainConfig, step: int) -> float:
    """The lr of (0-based) ``step``: a linear warmup from 0 over ``warmup_steps``, then ``lr`` (constant)
    or a half cosine from ``lr`` down to ``min_lr``, which it reaches at the last step (nanoGPT's shape)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / (config.warmup_steps + 1)
    if config.lr_schedule == "constant":
        return config.lr
    span = config.steps - 1 - config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / span) if span > 0 else 1.0
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)
