"""Small statistics over samples: mean with standard error, distinct-n; JSON-safe numbers."""

from __future__ import annotations

import math


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / √n); NaN where undefined."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def finite_or_none(value: float) -> float | None:
    """A failed (NaN or infinite) score as JSON null rather than a non-standard NaN token."""
    return value if math.isfinite(value) else None


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct word n-grams over all n-grams in `texts` (Li et al. 2016); 0 when there are none."""
    grams = [tuple(words[i : i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
