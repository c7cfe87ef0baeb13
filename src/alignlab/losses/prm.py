"""Process reward model (PRM) loss: is each step of a solution correct?

A PRM reads a solution and, at the token that ends each step (see `alignlab.data.stepwise`),
gives a logit for "this step is correct". It is trained with binary cross-entropy against the
step labels (Lightman et al. 2023, "Let's Verify Step by Step"; Wang et al. 2024, Math-Shepherd).
With ``last_only`` only each solution's last scored step is trained, which turns the PRM into an
outcome reward model on the same data (the ORM baseline of Lightman et al.).

A whole solution's score is an aggregate of its step probabilities: the product (the
probability that every step is correct, as Lightman et al. use) or the minimum (the weakest step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from alignlab.ops.advantages import last_token_mask

AGGREGATIONS = ("min", "prod")


def prm_loss(
    step_logits: Tensor,
    step_mask: Tensor,
    step_targets: Tensor,
    last_only: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Binary cross-entropy with logits on the scored positions of `[B, T]` tensors.

    The loss is the mean over the trained positions: every position where `step_mask` is set,
    or with `last_only` each row's last such position. With N trained positions its gradient
    with respect to a trained logit x (target y) is (σ(x) − y)/N, and 0 everywhere else. With
    no scored position at all the loss is a zero that still belongs to the graph.

    metrics (detached; a step is judged correct when σ(logit) > 0.5, a target when ≥ 0.5):
      - step_accuracy: fraction of trained positions where the judgement agrees with the target;
      - positive_rate: fraction of trained positions judged correct;
      - first_error_detection: among rows with at least one wrong step (over all scored
        positions, whatever `last_only`), the fraction where the first step the PRM judges wrong
        is the first step that is wrong; NaN when no row has a wrong step.
    """
    if not (step_logits.shape == step_mask.shape == step_targets.shape):
        raise ValueError(
            f"step_logits, step_mask and step_targets must have one shape (got {tuple(step_logits.shape)}, "
            f"{tuple(step_mask.shape)}, {tuple(step_targets.shape)})"
        )
    scored = step_mask.bool()
    trained = last_token_mask(scored) if last_only else scored
    targets = step_targets.to(step_logits.dtype)
    per_position = F.binary_cross_entropy_with_logits(step_logits, targets, reduction="none")
    # where(), not multiplication: a huge logit at an unscored position must not leak NaN/inf.
    per_position = torch.where(trained, per_position, torch.zeros_like(per_position))
    loss = per_position.sum() / trained.sum().clamp(min=1)
    return loss, _metrics(step_logits.detach(), scored, trained, step_targets.detach(), loss.detach())


def _metrics(logits: Tensor, scored: Tensor, trained: Tensor, targets: Tensor, loss: Tensor) -> dict[str, Tensor]:
    dtype = logits.dtype if logits.is_floating_point() else torch.float32
    judged_correct = logits > 0  # σ(x) > 0.5 exactly when x > 0
    is_correct = targets >= 0.5
    n_trained = trained.sum().clamp(min=1).to(dtype)
    agree = (judged_correct == is_correct) & trained
    return {
        "loss": loss,
        "step_accuracy": agree.sum().to(dtype) / n_trained,
        "positive_rate": (judged_correct & trained).sum().to(dtype) / n_trained,
        "first_error_detection": _first_error_detection(judged_correct, is_correct, scored, dtype),
    }


def _first_error_detection(judged_correct: Tensor, is_correct: Tensor, scored: Tensor, dtype: torch.dtype) -> Tensor:
    wrong = scored & ~is_correct
    judged_wrong = scored & ~judged_correct
    has_error = wrong.any(dim=-1)
    # argmax of a 0/1 row gives its first 1 (torch returns the first maximal index).
    first_wrong = wrong.int().argmax(dim=-1)
    first_judged_wrong = judged_wrong.int().argmax(dim=-1)
    detected = has_error & judged_wrong.any(dim=-1) & (first_wrong == first_judged_wrong)
    # 0/0 is NaN: undefined when no row has a wrong step (no host sync needed to decide it).
    return detected.sum().to(dtype) / has_error.sum().to(dtype)


def aggregate_step_scores(step_probs: Sequence[float] | Tensor, how: str = "prod") -> float:
    """One score for a whole solution from its steps' probabilities of being correct.

    "prod": the probability that every step is correct, treating steps as independent
    (Lightman et al. 2023); "min": the weakest step. Raises ValueError for no steps, a
    probability outside [0, 1], or an unknown `how`.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
    probs = torch.as_tensor(step_probs, dtype=torch.float64).detach().flatten()
    if probs.numel() == 0:
        raise ValueError("cannot aggregate a solution with no steps")
    if not bool(((probs >= 0) & (probs <= 1)).all()):
        raise ValueError(f"step probabilities must lie in [0, 1] (got {probs.tolist()})")
    return float(probs.prod() if how == "prod" else probs.min())


__all__ = ["AGGREGATIONS", "aggregate_step_scores", "prm_loss"]
