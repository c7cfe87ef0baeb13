"""Log-probabilities of the tokens a model actually saw or produced: one forward pass (or two for
rows that share a prompt, `alignlab.ops.shared_prefix`), scored by `selective_log_softmax`."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributed.fsdp import FSDPModule

from alignlab.ops.forward_args import is_prompt_learning, takes, unwrapped
from alignlab.ops.selective import selective_log_softmax
from alignlab.ops.shared_prefix import plan_shared_prefix, shared_prefix_logps
from alignlab.ops.stats import masked_sum

def token_logps(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    loss_mask: Tensor | None = None,
    temperature: float = 1.0,
    *,
    position_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token log-probs of `input_ids[:, 1:]` under `model`, from one forward pass.

    Returns `(logps, mask)`, both `[B, T-1]`: logps[:, t] = log p(input_ids[:, t+1] | input_ids[:, :t+1])
    and mask = loss_mask[:, 1:] (or attention_mask[:, 1:] when no loss mask is given), returned
    as the same tensor type it came in. logps is exactly 0 wherever the mask is 0.

    `temperature` divides the logits (chunk by chunk, so no full-size copy) and must match the
    sampler's temperature when these log-probs are compared with the ones a sampler reported.
    `position_ids` is passed through when given (packed rows, left padding); otherwise the model
    numbers positions itself, which is right for right-padded batches.

    Rows that share a prompt (everything before their first scored token), as GRPO's k samples or
    DPO's chosen and rejected do, run it through the model once when that saves enough
    (`alignlab.ops.shared_prefix`); the result is the same up to float rounding.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if position_ids is None and loss_mask is not None and _can_share_prefixes(model):
        plan = plan_shared_prefix(input_ids, attention_mask, loss_mask)
        if plan is not None:
            mask = loss_mask[:, 1:]
            return _zero_where_unscored(shared_prefix_logps(model, plan, input_ids.shape[1], temperature), mask), mask
    extra = {} if position_ids is None else {"position_ids": position_ids}
    # Positions before the first scored token (the prompts, in a right-padded batch) need no
    # logits: the LM head projects only the rest, as `logits_to_keep` lets transformers do.
    skip = _unscored_prefix(loss_mask) if _takes_logits_to_keep(model) else 0
    if skip:
        extra["logits_to_keep"] = input_ids.shape[1] - skip
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).logits
    if not skip:
        return logps_from_logits(logits, input_ids, attention_mask, loss_mask, temperature)
    logps, _ = logps_from_logits(logits, input_ids[:, skip:], attention_mask[:, skip:], loss_mask[:, skip:],
                                 temperature)
    return torch.nn.functional.pad(logps, (skip, 0)), loss_mask[:, 1:]


def _unscored_prefix(loss_mask: Tensor | None) -> int:
    """How many leading positions predict no scored token: logits position t predicts token t+1,
    so that is the index of the first column where loss_mask[:, 1:] is set anywhere."""
    if loss_mask is None:
        return 0
    scored = (loss_mask[:, 1:] != 0).any(0).nonzero()
    return int(scored[0]) if len(scored) else 0


def _takes_logits_to_keep(model) -> bool:
    """Whether the (PEFT-unwrapped) model's forward accepts `logits_to_keep`, as transformers'
    causal LMs do; a custom model without it gets full logits."""
    return takes(model, "logits_to_keep")


def _can_share_prefixes(model) -> bool:
    """Whether the prompt-once route applies: a transformers causal LM (bare or under LoRA) with
    eager or SDPA attention over full (not sliding-window) layers, which returns its KV cache
    here. Not under gradient checkpointing (transformers turns the cache off in training then),
    nor FSDP, nor prompt-learning PEFT (its virtual tokens live in the cache). Other kernels (flash
    attention's unpadded batches) and sliding windows (a cache that drops old positions) are not
    verified with a masked gap between prompt and tail, so they take the one-pass route."""
    if not _takes_logits_to_keep(model):
        return False
    if is_prompt_learning(model):
        return False
    if isinstance(model, FSDPModule):  # two forwards of a sharded block before one backward free its gathered weights
        return False
    inner = unwrapped(model)
    # transformers 5 renamed the flag (the old name warns); older versions have only the old one
    name = "is_activation_checkpointing" if hasattr(type(inner), "is_activation_checkpointing") else "is_gradient_checkpointing"
    if getattr(inner, name, False):
        return False
    config = inner.config
    if getattr(config, "_attn_implementation", None) not in ("eager", "sdpa"):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return all(kind == "full_attention" for kind in layer_types)
    return not (getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True))


def logps_from_logits(
    logits: Tensor, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor | None = None,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """`token_logps` for logits already computed (e.g. by a forward that also returned hidden states)."""
    # The prediction at position t is for token t+1. Scoring the full, contiguous logits against
    # the ids shifted left (the last position picks a dummy id and is dropped) avoids the slow
    # row-by-row path a strided `logits[:, :-1]` view would take, and copies nothing.
    targets = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)
    logps = selective_log_softmax(logits, targets, temperature)[:, :-1]
    mask = (attention_mask if loss_mask is None else loss_mask)[:, 1:]
    return _zero_where_unscored(logps, mask), mask


def _zero_where_unscored(logps: Tensor, mask: Tensor) -> Tensor:
    """logps with exactly 0 wherever mask is 0 (a where, not a product: no NaN or -inf leaks through)."""
    keep = mask if mask.dtype == torch.bool else mask != 0
    return torch.where(keep, logps, torch.zeros((), dtype=logps.dtype, device=logps.device))


def sequence_logps(token_logps: Tensor, mask: Tensor, reduction: str = "sum") -> Tensor:
    """Reduce per-token log-probs `[B, T]` to one number per sequence `[B]`.

    "sum" gives log π(y|x) (what DPO and PPO use); "mean" divides by the number of masked tokens
    (the length-normalised log-prob of SimPO and ORPO). A row with no masked token gives 0.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"unknown reduction {reduction!r}; choose 'sum' or 'mean'")
    total = masked_sum(token_logps, mask, dim=-1)
    if reduction == "sum":
        return total
    keep = mask if mask.dtype == torch.bool else mask != 0
    lengths = keep.sum(-1).to(total.dtype)
    return total / lengths.clamp_min(1)
