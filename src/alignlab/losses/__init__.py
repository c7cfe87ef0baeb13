"""Objectives as pure functions: tensors in, `(loss, metrics)` out (metrics are detached tensors)."""

from alignlab.losses.bradley_terry import bradley_terry_loss, preference_nll
from alignlab.losses.dpo import dpo_loss
from alignlab.losses.sft import sft_loss

__all__ = ["bradley_terry_loss", "dpo_loss", "preference_nll", "sft_loss"]

# The rest of the offline preference family.
from alignlab.losses.combine import combine_losses
from alignlab.losses.dpo_variants import hinge_loss, ipo_loss, robust_dpo_loss
from alignlab.losses.kto import kto_loss, kto_reference_point, kto_weight_ratio_ok
from alignlab.losses.orpo import orpo_loss
from alignlab.losses.simpo import simpo_loss

__all__ += [
    "combine_losses",
    "hinge_loss",
    "ipo_loss",
    "kto_loss",
    "kto_reference_point",
    "kto_weight_ratio_ok",
    "orpo_loss",
    "robust_dpo_loss",
    "simpo_loss",
]
