"""Majority vote over final answers (self-consistency, Wang et al. 2022), plain or weighted by a
scorer (each sample votes with its score, as in Li et al. 2023 and Snell et al. 2024)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index of a sample whose answer is the most frequent one; None when no sample has an answer.

    Samples without an answer (None) do not vote. A tie between answers goes to the answer whose
    first sample comes earliest, and the index returned is that first sample, so a vote over the
    first N samples of a fixed list is deterministic.
    """
    return weighted_vote(answers, [1.0] * len(answers))


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float]) -> int | None:
    """Like `majority_vote`, each sample voting with its weight; a non-finite weight counts 0."""
    if len(weights) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    totals: dict[str, float] = defaultdict(float)
    first: dict[str, int] = {}
    for index, (answer, weight) in enumerate(zip(answers, weights)):
        if answer is not None:
            totals[answer] += float(weight) if math.isfinite(float(weight)) else 0.0
            first.setdefault(answer, index)
    if not totals:
        return None
    winner = max(totals, key=lambda a: (totals[a], -first[a]))
    return first[winner]


__all__ = ["majority_vote", "weighted_vote"]
