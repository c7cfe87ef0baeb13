"""A weighted sum of several objectives, with each one's metrics kept under its own name.

Many recipes add objectives: RPO (Pang et al. 2024, "Iterative Reasoning Preference
Optimization") trains DPO plus α times the NLL of the chosen response (α = 1 in the paper),
e.g.

    combine_losses([
        ("dpo", 1.0, dpo_loss(pi_w, pi_l, ref_w, ref_l, beta=0.1)),
        ("nll", 1.0, sft_loss(chosen_token_logps, chosen_mask)),
    ])

and the same shape covers DPO + SFT mixes, a reward model's auxiliary terms, and so on.
"""

from __future__ import annotations

import math

from torch import Tensor


def combine_losses(
    terms: list[tuple[str, float, tuple[Tensor, dict[str, Tensor]]]],
) -> tuple[Tensor, dict[str, Tensor]]:
    """Σ weight·loss over `terms`, each `(name, weight, (loss, metrics))` as a loss returns it.

    Weights must be finite and >= 0 (a 0 weight keeps a term's metrics in the log without
    training on it); names must be distinct, non-empty and free of "/". Every term's loss must
    have the same shape — use one reduction for all of them — so that nothing broadcasts
    silently.

    metrics: every term's metrics as "name/key" (detached), plus "loss", the combined
    loss detached (its mean when the terms were reduced with "none").
    """
    if not terms:
        raise ValueError("combine_losses needs at least one term")
    seen: set[str] = set()
    shape = terms[0][2][0].shape
    total: Tensor | None = None
    metrics: dict[str, Tensor] = {}
    for name, weight, (loss, term_metrics) in terms:
        if not name or "/" in name:
            raise ValueError(f"term names must be non-empty and contain no '/', got {name!r}")
        if name in seen:
            raise ValueError(f"term name {name!r} is used twice")
        seen.add(name)
        if not weight >= 0 or math.isinf(weight):
            raise ValueError(f"weight of term {name!r} must be a finite number >= 0, got {weight}")
        if loss.shape != shape:
            raise ValueError(
                f"term {name!r} has loss shape {tuple(loss.shape)}, but {terms[0][0]!r} has "
                f"{tuple(shape)}; reduce every term the same way"
            )
        weighted = weight * loss
        total = weighted if total is None else total + weighted
        metrics.update({f"{name}/{key}": value.detach() for key, value in term_metrics.items()})
    assert total is not None
    metrics["loss"] = total.detach().mean()
    return total, metrics


__all__ = ["combine_losses"]
