"""Win rate of model A against model B, with two 95% intervals that answer different questions.

Inputs are the judge's verdicts grouped by prompt: for every judged pair, p_a = P(A's response is
better) in [0, 1] and a hard outcome (1 win, 0.5 tie, 0 loss).

- **win rate** = mean over prompts of the mean p_a of that prompt's pairs (every prompt weighs the
  same, however many of its samples were judged). Its interval is a percentile **bootstrap over
  prompts**: prompts are resampled with replacement, so the interval reflects that a new set of
  prompts would give another figure, and the samples of one prompt (which are not independent)
  move together. Seeded, so the same inputs give the same interval.
- **hard win rate** = (wins + ties / 2) / judged pairs, with the **Wilson score interval**
  (Wilson 1927): the interval of p for which the observed rate passes a two-sided z test,

      centre = (p̂ + z²/2n) / (1 + z²/n),   half width = z / (1 + z²/n) · √(p̂(1 − p̂)/n + z²/4n²),

  which stays inside [0, 1] and behaves at small n and near 0 or 1, where p̂ ± z·se does not. It
  treats the pairs as independent trials (exact for one sample per prompt).

Pure Python and numpy; nothing here knows about models or judges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

BOOTSTRAP_CHUNK = 256  # resamples drawn at once: bounds memory at chunk × prompts indices


def z_value(confidence: float) -> float:
    """The two-sided standard normal quantile: 1.959964 for confidence 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion `successes / n` (successes may be fractional: ties as
    halves). (nan, nan) when n is 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    z = z_value(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At p̂ = 0 (or 1) the bound is exactly 0 (or 1); say so rather than leave rounding residue.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def bootstrap_mean_interval(
    values: Sequence[float], resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per resampling unit, here
    per prompt). (nan, nan) for no values; (v, v) for one."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, resamples - start)
        picks = rng.integers(0, data.size, size=(size, data.size))
        means.append(data[picks].mean(axis=1))
    all_means = np.concatenate(means)
    tail = (1 - confidence) / 2
    low, high = np.quantile(all_means, [tail, 1 - tail])
    return float(low), float(high)


@dataclass
class WinRate:
    """The figures of one comparison (see the module docstring for definitions)."""

    win_rate: float
    ci_low: float
    ci_high: float
    hard_win_rate: float
    wilson_low: float
    wilson_high: float
    wins: int
    losses: int
    ties: int
    n: int  # judged pairs
    n_prompts: int  # prompts with at least one judged pair

    def as_dict(self) -> dict:
        return asdict(self)


def win_rate(
    p_a_by_prompt: Sequence[Sequence[float]],
    outcomes: Sequence[float],
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> WinRate:
    """Win rate of A from p_a values grouped by prompt (prompts without values are skipped) and
    the hard outcomes of the same pairs (1 win, 0.5 tie, 0 loss; any order)."""
    for group in p_a_by_prompt:
        for p in group:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"p_a must be a probability in [0, 1], got {p}")
    wins = sum(1 for o in outcomes if o == 1.0)
    losses = sum(1 for o in outcomes if o == 0.0)
    ties = sum(1 for o in outcomes if o == 0.5)
    if wins + losses + ties != len(outcomes):
        raise ValueError("each hard outcome must be 1 (win), 0.5 (tie) or 0 (loss)")
    per_prompt = [sum(group) / len(group) for group in p_a_by_prompt if len(group)]
    mean = sum(per_prompt) / len(per_prompt) if per_prompt else float("nan")
    low, high = bootstrap_mean_interval(per_prompt, resamples, confidence, seed)
    n = len(outcomes)
    successes = wins + 0.5 * ties
    w_low, w_high = wilson_interval(successes, n, confidence)
    return WinRate(
        win_rate=mean, ci_low=low, ci_high=high,
        hard_win_rate=successes / n if n else float("nan"), wilson_low=w_low, wilson_high=w_high,
        wins=wins, losses=losses, ties=ties, n=n, n_prompts=len(per_prompt),
    )
