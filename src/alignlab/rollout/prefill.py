"""Prefill each distinct prompt once when a sampling batch repeats prompts.

GRPO and RLOO sample k completions of every prompt, so `generate`'s first forward would run each
prompt k times. Here the distinct prompts of a batch (all but their last token) run through the
model once; every row gets a copy of its prompt's KV cache, and `generate` carries on from it,
running only the last prompt token and the new ones. Each row keeps the positions and the mask it
has in `generate`'s own prefill, so the logits agree up to float rounding (about 1e-6: attention
over a cache adds in another order than over the whole prompt). Seeded samples are therefore drawn
from the same distribution but are not always the identical tokens: a draw that lands within
that distance of a token boundary can flip.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignlab.ops.forward_args import is_prompt_learning, returned_cache, takes

# Only worth a second model call when at least this share of the prompt rows are repeats.
MIN_REPEATS = 0.1


def prefill_distinct(model, prompts: list[list[int]], ids: Tensor, mask: Tensor, min_repeats: float = MIN_REPEATS):
    """A KV cache of `ids[:, :-1]` for every row (left-padded, as `left_pad` builds them), computed
    once per distinct prompt; None when too few prompts repeat, the prompts are a single token
    wide, or the model keeps no cache that can be copied row by row (then `generate` prefills)."""
    if ids.shape[1] < 2 or is_prompt_learning(model):
        return None
    distinct: dict[tuple[int, ...], int] = {}
    owner = [distinct.setdefault(tuple(prompt), len(distinct)) for prompt in prompts]
    if len(distinct) > (1 - min_repeats) * len(prompts):
        return None
    first = torch.tensor([owner.index(u) for u in range(len(distinct))], device=ids.device)
    head_ids, head_mask = ids[first, :-1], mask[first, :-1]
    # generate numbers a left-padded row's positions from its first real token (pads get 0)
    positions = (head_mask.long().cumsum(-1) - 1).clamp_min(0)
    keep = {"logits_to_keep": 1} if takes(model, "logits_to_keep") else {}  # the prefill needs no logits
    out = model(input_ids=head_ids, attention_mask=head_mask, position_ids=positions, use_cache=True, **keep)
    cache = returned_cache(out)
    if cache is None or not hasattr(cache, "reorder_cache"):
        return None
    cache.reorder_cache(torch.tensor(owner, device=ids.device))
    return cache
