"""Majority vote over final answers (self-consistency, Wang et al. 2022)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index of a sample whose answer is the most frequent one; None when no sample has an answer.

    Samples without an answer (None) do not vote. A tie between answers goes to the answer whose
    first sample comes earliest, and the index returned is that first sample, so a vote over the
    first N samples of a fixed list is deterministic.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    first = {}
    for index, answer in enumerate(answers):
        if answer is not None:
            first.setdefault(answer, index)
    winner = max(counts, key=lambda a: (counts[a], -first[a]))
    return first[winner]


__all__ = ["majority_vote"]
