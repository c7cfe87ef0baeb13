"""Objectives as pure functions: tensors in, `(loss, metrics)` out (metrics are detached tensors)."""

from alignlab.losses.bradley_terry import bradley_terry_loss, preference_nll
from alignlab.losses.dpo import dpo_loss
from alignlab.losses.sft import sft_loss

__all__ = ["bradley_terry_loss", "dpo_loss", "preference_nll", "sft_loss"]
