"""The registry of preference objectives, and weighted sums of them.

Each entry names a pure loss function (in its own file) with what it needs: a reference or not,
its default β, whether it takes soft labels, the settings it reads. The configs' literal types
are derived from this table, so a new objective is its file, one line here and its test.
`preference_objective(terms, logps, settings)` computes a weighted sum, e.g.
`[("sigmoid", 1.0), ("nll", 1.0)]` is RPO (Pang et al. 2024).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from alignlab.losses.apo import apo_down_objective, apo_zero_objective
from alignlab.losses.combine import combine_losses
from alignlab.losses.dpo import dpo_objective
from alignlab.losses.dpo_variants import hinge_objective, ipo_objective, robust_dpo_objective
from alignlab.losses.objective import Objective, PairLogps, PreferenceSettings
from alignlab.losses.orpo import orpo_objective
from alignlab.losses.sft import nll_objective
from alignlab.losses.simpo import simpo_objective

__all__ = ["OBJECTIVES", "ObjectiveName", "PairLogps", "PreferenceSettings", "ReferenceObjectiveName",
           "needs_reference", "preference_objective"]

OBJECTIVES: dict[str, Objective] = {
    "sigmoid": Objective(dpo_objective, True, "DPO; cDPO with label_smoothing", soft_labels=True,
                         reads=("label_smoothing",)),
    "robust": Objective(robust_dpo_objective, True, "robust DPO (unbiased under label noise)", reads=("label_smoothing",)),
    "hinge": Objective(hinge_objective, True, "SLiC's hinge on the reference-normalised margin"),
    "ipo": Objective(ipo_objective, True, "IPO's squared loss (τ plays β's role)", reads=("tau", "ipo_length_normalize")),
    "apo_zero": Objective(apo_zero_objective, True, "APO-zero: chosen up, rejected down (chosen better than the model)"),
    "apo_down": Objective(apo_down_objective, True, "APO-down: both down, rejected more (the model better than chosen)"),
    "simpo": Objective(simpo_objective, False, "SimPO: length-normalised, reference-free, margin γ", default_beta=2.0,
                       reads=("gamma",)),
    "orpo": Objective(orpo_objective, False, "ORPO: NLL plus an odds-ratio term", reads=("orpo_lambda",)),
    "nll": Objective(nll_objective, False, "the chosen response's per-token NLL (add to DPO for RPO)"),
}

ObjectiveName = Literal[tuple(OBJECTIVES)]
ReferenceObjectiveName = Literal[tuple(name for name, o in OBJECTIVES.items() if o.needs_reference)]
"""the pairwise objectives against a reference: what the online pair stages train with"""


def needs_reference(names: list[str]) -> bool:
    return any(OBJECTIVES[n].needs_reference for n in names)


def preference_objective(
    terms: list[tuple[str, float]], lp: PairLogps, s: PreferenceSettings, labels: Tensor | None = None,
    reduction: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the named objectives; one term returns its own metrics unprefixed."""
    results = [(name, weight, _one(name, lp, s, labels, reduction)) for name, weight in terms]
    if len(results) == 1 and results[0][1] == 1.0:
        return results[0][2]
    return combine_losses(results)


def _one(name: str, lp: PairLogps, s: PreferenceSettings, labels: Tensor | None, reduction: str):
    objective = OBJECTIVES.get(name)
    if objective is None:
        raise ValueError(f"unknown preference objective {name!r}; known: {', '.join(OBJECTIVES)}")
    beta = s.beta if s.beta is not None else objective.default_beta
    return objective.compute(lp, s, beta, labels, reduction)
