"""A share of trials with its 95% Wilson interval, in the one shape every probe reports it."""

from __future__ import annotations

from alignlab.eval.winrate import wilson_interval


def proportion(successes: int, n: int, confidence: float = 0.95) -> dict:
    """{rate, low, high, n}: successes / n and its Wilson interval (all NaN for n = 0: a share of
    nothing is unknown, not zero)."""
    low, high = wilson_interval(successes, n, confidence)
    return {"rate": successes / n if n else float("nan"), "low": low, "high": high, "n": n}


def of_flags(flags: list[bool], confidence: float = 0.95) -> dict:
    """`proportion` of the True entries."""
    return proportion(sum(map(bool, flags)), len(flags), confidence)
