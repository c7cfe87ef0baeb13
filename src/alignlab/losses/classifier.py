"""Objectives of constitutional classifiers (alignlab.guard): pure functions of logits and labels.

- `sequence_bce`: the input classifier, one logit per prompt, binary cross-entropy against
  "harmful" (1) or "harmless" (0).
- `streaming_bce`: the streaming output classifier, one logit per response token. Its training data
  has one label per response, broadcast to every response token, so each prefix is asked to
  predict the label of the whole response. At serving time the guard halts when *any* token's score
  crosses the threshold, i.e. it acts on the running maximum; a harmful response whose first
  tokens ("Sure, here is") are innocuous need only be caught somewhere. The loss mixes the two
  views, as Sharma et al. (2025) do: (1 - w) · BCE of each token's own logit plus w · BCE of the
  running maximum of the logits so far (a harmless response must stay low at every token; a harmful
  one must rise by its end at the latest). Each row's terms are averaged over its response tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sequence_bce(logits: Tensor, harmful: Tensor, weight: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Summed BCE over rows of `logits` [B] against `harmful` [B] (0/1), each row times its `weight`
    (default 1); metrics are unweighted row means."""
    logits, target = logits.float(), harmful.float().to(logits.device)
    per_row = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = (per_row * weight.float().to(logits.device)).sum() if weight is not None else per_row.sum()
    predicted = (logits >= 0).float()
    return loss, {"accuracy": (predicted == target).float().mean().detach(),
                  "positive_rate": predicted.mean().detach()}


def running_max(logits: Tensor, mask: Tensor) -> Tensor:
    """The maximum of `logits` [B, T] over the masked positions up to each position (-inf before
    the first one): what a guard that halts at the first crossing acts on."""
    keep = mask.bool().to(logits.device)
    return torch.cummax(logits.float().masked_fill(~keep, float("-inf")), dim=-1).values


def streaming_bce(token_logits: Tensor, mask: Tensor, harmful: Tensor, cummax_weight: float = 0.5,
                  weight: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Summed over rows (each times its `weight`, default 1): the row's mean over its response
    tokens (`mask` [B, T]) of (1 - w) · BCE(logit_t, y) + w · BCE(max_{s<=t} logit_s, y), with y the
    row's label broadcast.

    Metrics: `accuracy` of the row's decision (its maximum logit >= 0, what the guard does at
    threshold 0.5), `token_accuracy` of each token's own logit, `positive_rate` of rows flagged."""
    if not 0 <= cummax_weight <= 1:
        raise ValueError(f"cummax_weight must be in [0, 1], got {cummax_weight}")
    logits = token_logits.float()
    keep = mask.bool().to(logits.device)
    if not keep.any(dim=-1).all():
        raise ValueError("every row needs at least one response token in `mask`")
    target = harmful.float().to(logits.device)[:, None].expand_as(logits)
    tokens = keep.sum(-1).float()
    direct = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    peak = running_max(logits, keep)
    # before a row's first response token the running max is -inf; those positions are masked out,
    # but BCE of -inf is inf for a harmful row, and inf * 0 is nan: give them a finite stand-in
    cumulative = F.binary_cross_entropy_with_logits(peak.masked_fill(~keep, 0.0), target, reduction="none")
    per_token = (1 - cummax_weight) * direct + cummax_weight * cumulative
    per_row = (per_token * keep).sum(-1) / tokens
    flagged = (peak[:, -1] >= 0).float()  # the running max at the end: the row's highest logit
    label = harmful.float().to(logits.device)
    token_right = (((logits >= 0).float() == target) & keep).sum() / keep.sum()
    loss = (per_row * weight.float().to(logits.device)).sum() if weight is not None else per_row.sum()
    return loss, {"accuracy": (flagged == label).float().mean().detach(),
                            "token_accuracy": token_right.detach(), "positive_rate": flagged.mean().detach()}
