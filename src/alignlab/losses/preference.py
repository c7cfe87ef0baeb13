"""The offline preference objectives by name, and weighted sums of them.

One entry point for the preference stage: `preference_objective(terms, logps, settings)` picks
each named objective, feeds it the right reduction of the sequence log-probs (sums for the
DPO family, per-token means for SimPO/ORPO and optionally IPO) and adds the terms with their
weights, e.g. `[("sigmoid", 1.0), ("nll", 1.0)]` is RPO (Pang et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from alignlab.losses.combine import combine_losses
from alignlab.losses.dpo import dpo_loss
from alignlab.losses.dpo_variants import hinge_loss, ipo_loss, robust_dpo_loss
from alignlab.losses.orpo import orpo_loss
from alignlab.losses.simpo import simpo_loss

OBJECTIVES = ("sigmoid", "robust", "hinge", "ipo", "simpo", "orpo", "nll")
REFERENCE_FREE = frozenset({"simpo", "orpo", "nll"})
DEFAULT_BETA = {"simpo": 2.0}  # every other objective defaults to β = 0.1


@dataclass(frozen=True)
class PreferenceSettings:
    beta: float | None = None
    label_smoothing: float = 0.0
    tau: float = 0.1
    gamma: float = 0.5
    orpo_lambda: float = 0.1
    ipo_length_normalize: bool = False

    def beta_for(self, name: str) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(name, 0.1)


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


def needs_reference(names: list[str]) -> bool:
    return any(n not in REFERENCE_FREE for n in names)


def preference_objective(
    terms: list[tuple[str, float]], lp: PairLogps, s: PreferenceSettings, labels: Tensor | None = None,
    reduction: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the named objectives; one term returns its own metrics unprefixed."""
    results = [(name, weight, _one(name, lp, s, labels, reduction)) for name, weight in terms]
    if len(results) == 1 and results[0][1] == 1.0:
        return results[0][2]
    return combine_losses(results)


def _one(name: str, lp: PairLogps, s: PreferenceSettings, labels, reduction):
    beta = s.beta_for(name)
    avg_c, avg_r = lp.mean(lp.chosen, lp.chosen_tokens), lp.mean(lp.rejected, lp.rejected_tokens)
    if name == "simpo":
        return simpo_loss(avg_c, avg_r, beta=beta, gamma=s.gamma, reduction=reduction)
    if name == "orpo":
        return orpo_loss(avg_c, avg_r, -avg_c, lambda_=s.orpo_lambda, reduction=reduction)
    if name == "nll":
        nll = -avg_c
        value = nll.sum() if reduction == "sum" else nll.mean() if reduction == "mean" else nll
        return value, {"nll": nll.detach().mean()}
    if lp.ref_chosen is None or lp.ref_rejected is None:
        raise ValueError(f"objective {name!r} needs reference log-probs")
    args = (lp.chosen, lp.rejected, lp.ref_chosen, lp.ref_rejected)
    if name == "sigmoid":
        return dpo_loss(*args, beta=beta, label_smoothing=s.label_smoothing, labels=labels, reduction=reduction)
    if name == "robust":
        return robust_dpo_loss(*args, beta=beta, label_smoothing=s.label_smoothing, reduction=reduction)
    if name == "hinge":
        return hinge_loss(*args, beta=beta, reduction=reduction)
    if name == "ipo":
        if s.ipo_length_normalize:  # TRL's choice; the paper sums over tokens
            args = (avg_c, avg_r, lp.mean(lp.ref_chosen, lp.chosen_tokens), lp.mean(lp.ref_rejected, lp.rejected_tokens))
        return ipo_loss(*args, tau=s.tau, reduction=reduction)
    raise ValueError(f"unknown preference objective {name!r}; known: {', '.join(OBJECTIVES)}")
