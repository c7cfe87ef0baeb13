"""Gradient (activation) checkpointing: trade one extra forward pass for activation memory."""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger(__name__)


def use_gradient_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them.

    Uses the model's own transformers switch (PEFT models forward it to the base model). The
    non-reentrant variant is chosen because it needs no input that requires grad, so it works with
    LoRA adapters on a frozen trunk too. A model without the switch is an error, not a silent no-op.
    """
    if not enabled:
        return
    # transformers 5 renamed the switch; older releases only have the first name
    enable = getattr(model, "activation_checkpointing_enable", None) or getattr(model, "gradient_checkpointing_enable", None)
    if enable is None or not getattr(model, "supports_gradient_checkpointing", True):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing; set gradient_checkpointing: false")
    enable({"use_reentrant": False})
    log.info("gradient checkpointing on: activations are recomputed in the backward pass")
