"""What a named preference objective is: a function of a batch of pairs' sequence log-probs,
with what it needs. The registry of them is `alignlab.losses.preference.OBJECTIVES`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor


@dataclass(frozen=True)
class PreferenceSettings:
    """The objectives' hyperparameters; each objective reads β and the fields it names in `reads`."""

    beta: float | None = None
    label_smoothing: float = 0.0
    tau: float = 0.1
    gamma: float = 0.5
    orpo_lambda: float = 0.1
    ipo_length_normalize: bool = False


@dataclass
class PairLogps:
    """Per-pair sequence log-probs [B]: summed over response tokens, with the token counts."""

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None

    def mean(self, value: Tensor, tokens: Tensor) -> Tensor:
        return value / tokens.clamp(min=1)

    @property
    def chosen_mean(self) -> Tensor:
        return self.mean(self.chosen, self.chosen_tokens)

    @property
    def rejected_mean(self) -> Tensor:
        return self.mean(self.rejected, self.rejected_tokens)

    def with_reference(self, name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(policy chosen, policy rejected, reference chosen, reference rejected) sums."""
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ValueError(f"objective {name!r} needs reference log-probs")
        return self.chosen, self.rejected, self.ref_chosen, self.ref_rejected


Compute = Callable[[PairLogps, PreferenceSettings, float, Tensor | None, str], tuple[Tensor, dict[str, Tensor]]]
"""(log-probs, settings, β, soft labels or None, reduction) -> (loss, metrics)"""


@dataclass(frozen=True)
class Objective:
    compute: Compute
    needs_reference: bool
    summary: str
    default_beta: float = 0.1
    soft_labels: bool = False
    """takes a per-pair probability that chosen is preferred (AI feedback) instead of a hard 1"""
    reads: tuple[str, ...] = ()
    """the `PreferenceSettings` fields besides β it reads"""
