"""Learning-rate schedules: linear warmup, then linear or cosine decay to zero (or constant)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def lr_multiplier(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the base learning rate used for the update at `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {kind!r}")


def make_scheduler(optimizer: Optimizer, total: int, warmup: int, kind: str) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, total, warmup, kind))
