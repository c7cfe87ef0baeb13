"""Masked statistics, KL estimators and small reductions over per-token tensors.

Everything here is a pure tensor function: no `.item()`, no Python branching on tensor values, so
none of it forces a host-device sync inside a training step.

Masks are 0/1 tensors (bool, int or float); any non-zero entry counts as "kept". Entries outside
the mask are selected away with `torch.where`, not multiplied by 0, so a NaN or inf sitting in a
padded position cannot leak into a sum.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")
KL_KINDS = ("k1", "k2", "k3")


def _kept(x: Tensor, mask: Tensor) -> Tensor:
    """The mask as a bool tensor broadcast to x's shape."""
    keep = mask if mask.dtype == torch.bool else mask != 0
    return keep.expand_as(x)


def _count(keep: Tensor, dim, dtype: torch.dtype) -> Tensor:
    counts = keep.sum() if dim is None else keep.sum(dim)
    return counts.to(dtype)


def masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Sum of x over the entries where mask is non-zero (over everything when dim is None)."""
    kept = torch.where(_kept(x, mask), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of x over the kept entries. A slice with no kept entry gives 0, not NaN.

    (Returning 0 keeps an all-padding row from turning a whole loss into NaN; checking for the
    empty case on the host would cost a sync.)
    """
    count = _count(_kept(x, mask), dim, x.dtype)
    return masked_sum(x, mask, dim) / count.clamp_min(1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of x over all kept entries (Bessel-corrected when `unbiased`).

    With fewer entries than the correction needs (0, or 1 when unbiased) the result is 0 rather
    than NaN/inf, so whitening such a tensor yields zeros instead of poisoning the step.
    """
    keep = _kept(x, mask)
    count = _count(keep, None, x.dtype)
    mean = masked_sum(x, keep) / count.clamp_min(1)
    squared_dev = masked_sum((x - mean) ** 2, keep)
    dof = count - 1 if unbiased else count
    return squared_dev / dof.clamp_min(1)


def masked_whiten(
    x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Standardise x with the mean and (unbiased) variance of its kept entries.

    With `shift_mean=False` the mean is added back, so only the scale changes (PPO
    implementations whiten rewards this way to keep their sign; see Huang et al. 2024, "The N+
    Implementation Details of RLHF with PPO"). Entries outside the mask are set to 0.
    `reduce` sums a tensor over processes (data parallel): the statistics then span every
    process's entries, exactly as if one process held them all.
    """
    keep = _kept(x, mask)
    if reduce is None:
        mean, var = masked_mean(x, keep), masked_var(x, keep)
    else:
        count = reduce(_count(keep, None, x.dtype))
        mean = reduce(masked_sum(x, keep)) / count.clamp_min(1)
        var = reduce(masked_sum((x - mean) ** 2, keep)) / (count - 1).clamp_min(1)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(keep, whitened, torch.zeros((), dtype=whitened.dtype, device=x.device))


# --- KL between the sampling policy and a reference, from log-probs of sampled tokens ----------
# Schulman (2020), "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html): with
# samples from the policy p and log r = log q(x) - log p(x) (q the reference), each estimator's
# expectation relates to KL(p || q) as follows.


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log p - log q: unbiased for KL(p||q), high variance, can be negative per sample."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = ½(log p - log q)²: biased but low variance, never negative."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = (r - 1) - log r with r = q/p: unbiased for KL(p||q) and never negative.

    Written as expm1(log r) - log r, which stays accurate when r is close to 1 (the usual case
    early in training) where exp(log r) - 1 would cancel.
    """
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k1") -> Tensor:
    """Per-token KL estimate of the named kind: "k1", "k2" or "k3"."""
    if kind == "k1":
        return kl_k1(logp, ref_logp)
    if kind == "k2":
        return kl_k2(logp, ref_logp)
    if kind == "k3":
        return kl_k3(logp, ref_logp)
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {', '.join(KL_KINDS)}")


# --- helpers the losses share -----------------------------------------------------------------


def reduce_loss(values: Tensor, reduction: str) -> Tensor:
    """Reduce per-example losses: "mean", "sum" or "none" (returned unchanged)."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")


def check_reduction(reduction: str) -> None:
    """Raise ValueError early (before any compute) for an unknown reduction name."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")


def pairwise_accuracy(score_diff: Tensor, labels: Tensor | None = None) -> Tensor:
    """Fraction of pairs ranked the way the label says, as a detached tensor.

    `score_diff` is score(chosen) - score(rejected). Without labels a pair counts as right when
    the difference is strictly positive (an exact tie counts as wrong). With soft labels p (the
    probability that chosen beats rejected) a pair is right when the sign of the difference
    agrees with p > 0.5; a pair with p == 0.5 prefers neither side and counts as 0.5 whatever
    the model says (counting it keeps the metric defined when every label is a tie).
    """
    diff = score_diff.detach()
    dtype = diff.dtype if diff.is_floating_point() else torch.float32
    if labels is None:
        return (diff > 0).to(dtype).mean()
    labels = labels.detach()
    agrees = torch.where(labels > 0.5, diff > 0, diff < 0).to(dtype)
    half = torch.full((), 0.5, dtype=dtype, device=diff.device)
    return torch.where(labels == 0.5, half, agrees).mean()
