"""Supervised fine-tuning: negative log-likelihood of the response tokens.

The maximum-likelihood objective of language modelling, applied to demonstrations only on the
tokens the loss mask selects (the response), as in the SFT stage of Ouyang et al. 2022,
"Training language models to follow instructions with human feedback" (InstructGPT), §3.5.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignlab.losses.objective import PairLogps, PreferenceSettings
from alignlab.ops.stats import reduce_loss
from alignlab.ops.stats import masked_sum


def sft_loss(
    token_logps: Tensor, mask: Tensor, normalizer: float | Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Summed NLL of the masked tokens divided by `normalizer`.

    token_logps, mask: `[B, T]` (as returned by `alignlab.ops.token_logps`).

    normalizer: by default the number of masked tokens in this batch, i.e. the per-token mean.
    It exists for gradient accumulation: when one optimizer step accumulates several
    micro-batches, pass the token count of the whole accumulated batch to every micro-batch.
    Then the micro-batch losses add up to the per-token mean of the whole batch, and every token
    weighs the same however the tokens fall into micro-batches (dividing each micro-batch by its
    own count would over-weight tokens in short micro-batches). A Python number must be > 0; a
    tensor is not checked (that would need a host sync).

    metrics (detached): nll = per-token mean NLL of this batch, tokens = its masked-token count.
    """
    if isinstance(normalizer, (int, float)) and not normalizer > 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    total_nll = -masked_sum(token_logps, mask)
    keep = mask if mask.dtype == torch.bool else mask != 0
    tokens = keep.sum().to(total_nll.dtype)
    denominator = tokens.clamp_min(1) if normalizer is None else normalizer
    loss = total_nll / denominator
    metrics = {
        "nll": total_nll.detach() / tokens.clamp_min(1),
        "tokens": tokens.detach(),
    }
    return loss, metrics


def nll_objective(lp: PairLogps, s: PreferenceSettings, beta: float, labels, reduction: str):
    """The chosen response's per-token NLL as a preference-stage term (with DPO: RPO)."""
    nll = -lp.chosen_mean
    return reduce_loss(nll, reduction), {"nll": nll.detach().mean()}
