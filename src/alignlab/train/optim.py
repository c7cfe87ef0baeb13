"""The optimizer every stage uses: AdamW without decay on biases and norm gains."""

from __future__ import annotations

from typing import Iterable

import torch
from torch.distributed.tensor import DTensor


def make_optimizer(params: Iterable[torch.nn.Parameter], s) -> torch.optim.AdamW:
    """AdamW over the trainable `params`; `s` carries lr, weight_decay, adam_betas and adam_eps."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]  # no decay on biases and norm gains
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if any(isinstance(p, DTensor) for p in params):
        # FSDP shards beside whole modules (a value head): the fused kernel takes one kind per group
        groups = [{**g, "params": [p for p in g["params"] if isinstance(p, DTensor) == sharded]}
                  for g in groups for sharded in (True, False)]
        groups = [g for g in groups if g["params"]]
    try:  # the fused kernel (CPU and CUDA since torch 2.4) is several times faster than the loop
        return torch.optim.AdamW(groups, lr=s.lr, betas=s.adam_betas, eps=s.adam_eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=s.lr, betas=s.adam_betas, eps=s.adam_eps)
