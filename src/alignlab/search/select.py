"""Best-of-N selection: the highest-scoring of the first N samples of each prompt."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pick_best(scores_per_prompt: Sequence[Sequence[float]], n: int) -> list[int | None]:
    """Per prompt, the index of the highest score among its first `n` scores.

    A non-finite score (NaN for a failed or unusable sample, ±inf) never wins; ties go to the
    earlier sample; a prompt whose first `n` scores are all non-finite gets None.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    picked: list[int | None] = []
    for p, scores in enumerate(scores_per_prompt):
        if len(scores) < n:
            raise ValueError(f"prompt {p} has {len(scores)} scores, fewer than n={n}")
        valid = [(float(s), i) for i, s in enumerate(scores[:n]) if math.isfinite(float(s))]
        # max over (score, -index) keeps the earliest of equal scores
        picked.append(max(valid, key=lambda si: (si[0], -si[1]))[1] if valid else None)
    return picked


__all__ = ["pick_best"]
