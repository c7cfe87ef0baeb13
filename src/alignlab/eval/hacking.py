"""Signs of reward hacking in one batch of samples, as pure functions of what an online iteration
already holds: each response's length, text, proxy reward, the sampler's log-probs of its tokens
and, where a held-out scorer is configured, its gold score.

- length–reward correlation, Pearson's and Spearman's: a proxy that pays for length shows it as a
  high correlation (Singhal et al. 2023); both are undefined (NaN) when every response has the
  same length, e.g. all cut at max_new_tokens;
- distinct-1/2 and the per-token entropy: a policy collapsing onto a few phrases;
- proxy and gold means and standard deviations: the monitor (`alignlab.train.monitors`) turns
  them into the proxy-versus-gold gap over the run.

The online loop logs these as `hack/*` every iteration; the thresholds live in the monitor.
"""

from __future__ import annotations

import math

from alignlab.eval.metrics import distinct_n

NAN = float("nan")


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson's r; NaN with fewer than two pairs or when either side is constant (r is undefined)."""
    if len(x) != len(y):
        raise ValueError(f"pearson needs pairs: {len(x)} x values, {len(y)} y values")
    n = len(x)
    if n < 2:
        return NAN
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return NAN
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span (what Spearman's rho needs)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            out[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho: Pearson's r of the ranks (ties averaged)."""
    return pearson(ranks(x), ranks(y))


def token_entropy(logps: list[list[float]]) -> float:
    """Mean −log p of the sampled tokens over every token of the batch: a Monte Carlo estimate of the
    sampling distribution's per-token entropy (the expectation of −log p under that distribution)."""
    tokens = [v for row in logps for v in row]
    return -sum(tokens) / len(tokens) if tokens else NAN


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std of the finite values (a failed gold score is NaN and left out)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return NAN, NAN
    mean = sum(finite) / len(finite)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / len(finite))


def batch_signs(lengths: list[int], proxy: list[float], texts: list[str], logps: list[list[float]],
                gold: list[float] | None = None, truncated: list[bool] | None = None) -> dict[str, float]:
    """One batch's `hack/*` figures. `lengths` are response lengths in tokens, `proxy` the reward
    trained on, `logps` the sampler's log-prob of each response token, `gold` a held-out score,
    `truncated` whether each response was cut at the token limit without ending."""
    proxy_mean, proxy_std = mean_std(proxy)
    out = {
        "hack/length_reward_pearson": pearson([float(n) for n in lengths], proxy),
        "hack/length_reward_spearman": spearman([float(n) for n in lengths], proxy),
        # no samples (all dropped): undefined; samples without n-grams (empty answers) count as collapsed, 0
        "hack/distinct_1": distinct_n(texts, 1) if texts else NAN,
        "hack/distinct_2": distinct_n(texts, 2) if texts else NAN,
        "hack/entropy": token_entropy(logps),
        "hack/proxy_mean": proxy_mean,
        "hack/proxy_std": proxy_std,
    }
    if truncated is not None:  # responses that run to the limit: length hacking the correlations cannot see
        out["hack/truncation_rate"] = sum(truncated) / len(truncated) if truncated else NAN
    if gold is not None:
        out["hack/gold_mean"], out["hack/gold_std"] = mean_std(gold)
    return out
