"""Judge accuracy with intervals, from per-item outcomes in [0, 1].

An outcome is 1 when the judge picked the right answer, 0 when it picked the wrong one, and a
fraction where the judge had to guess: a tie decided by a fair coin counts ½ (its expected
accuracy), and a judge that inspects a random step counts its expectation over the steps. Using
expectations removes the coin's noise from the figure.

- `accuracy`: the mean outcome with the Wilson score interval (`alignlab.eval.winrate`) of
  Σ outcomes successes in n trials. With fractional outcomes this treats the items as Bernoulli
  trials of the same mean, which can only overstate the variance (a value in [0, 1] with mean p
  has variance at most p(1 − p)), so the interval is conservative.
- `paired_gain`: protocol A − protocol B on the SAME items, with a percentile bootstrap over
  items, which keeps each item's two outcomes together (much tighter than two separate intervals
  when both protocols find the same items easy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from alignlab.eval.winrate import bootstrap_mean_interval, wilson_interval


def accuracy(outcomes: Sequence[float], confidence: float = 0.95) -> dict:
    """{"accuracy", "low", "high", "n"} for outcomes in [0, 1]; NaN figures for no items."""
    for o in outcomes:
        if not 0.0 <= o <= 1.0:
            raise ValueError(f"an outcome must be in [0, 1], got {o}")
    n = len(outcomes)
    successes = float(sum(outcomes))
    low, high = wilson_interval(min(successes, n), n, confidence)
    return {"accuracy": successes / n if n else math.nan, "low": low, "high": high, "n": n}


def paired_gain(a: Sequence[float], b: Sequence[float], resamples: int = 2000, confidence: float = 0.95,
                seed: int = 0) -> dict:
    """{"gain", "low", "high", "n"}: mean of a − b over paired items, with a bootstrap interval."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    low, high = bootstrap_mean_interval(diffs, resamples, confidence, seed)
    return {"gain": sum(diffs) / len(diffs) if diffs else math.nan, "low": low, "high": high, "n": len(diffs)}


__all__ = ["accuracy", "paired_gain"]
