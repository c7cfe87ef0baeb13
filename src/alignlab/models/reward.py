"""Reward models: a transformers sequence classifier with a single output.

Keeping the reward model an ordinary `AutoModelForSequenceClassification` with `num_labels=1`
means a saved one loads back, head included, with plain transformers, and scores the same there:
the score is read where transformers reads it (see `reward_scores`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from alignlab.models.fused import fuse_activations
from alignlab.models.load import checkpoint_source, resolve_device, resolve_dtype, weight_loading_kwargs

log = logging.getLogger(__name__)

HEAD_INIT_SEED = 0


def _is_sequence_classifier(config) -> bool:
    return any(arch.endswith("ForSequenceClassification") for arch in (config.architectures or []))


@torch.no_grad()
def _init_head(model: PreTrainedModel, names: list[str], seed: int) -> None:
    """Re-initialise the newly created head weights from a private generator.

    transformers fills missing weights from the global RNG, so the head would depend on whatever
    ran before. A local generator makes it reproducible without touching global random state.
    Weights are drawn from N(0, 1/(hidden_size + 1)) (a common value-head choice: initial scores of
    order one), biases start at zero; drawn on the CPU in float32 so every device and dtype agrees.
    """
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    for name in sorted(names):
        param = params[name]
        if name.endswith("bias"):
            value = torch.zeros(param.shape)
        else:
            std = 1.0 / math.sqrt(param.shape[-1] + 1)
            value = torch.randn(param.shape, generator=generator) * std
        param.copy_(value.to(param.dtype))


def load_reward_model(
    name_or_path: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: str = "float32",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    head_seed: int = HEAD_INIT_SEED,
) -> PreTrainedModel:
    """Load a reward model from a causal-LM checkpoint (new head) or a reward-model checkpoint.

    From a causal LM the backbone is kept and a fresh one-output `score` head is added,
    initialised deterministically from `head_seed`. From a saved reward model the trained head is
    kept. `model.config.pad_token_id` is set from the tokenizer, because transformers finds the
    token to score as the last one that is not the pad token.
    """
    source = checkpoint_source(name_or_path)
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    if _is_sequence_classifier(config) and config.num_labels != 1:
        raise ValueError(
            f"{str(name_or_path)!r} is a classifier with {config.num_labels} labels; a reward model has exactly 1"
        )
    try:
        # transformers draws the new head from the global RNG; fork it so loading leaves the
        # caller's random state as it was (the head is re-drawn from `head_seed` below).
        with torch.random.fork_rng(devices=[]):
            model, info = AutoModelForSequenceClassification.from_pretrained(
                source,
                num_labels=1,
                dtype=resolve_dtype(dtype),
                output_loading_info=True,
                **weight_loading_kwargs(source, trust_remote_code),
            )
    except OSError as err:
        raise OSError(f"could not load a reward model from {str(name_or_path)!r}: {err}") from err

    missing = sorted(info["missing_keys"])
    backbone_prefix = model.base_model_prefix + "."
    head_missing = [k for k in missing if not k.startswith(backbone_prefix)]
    backbone_missing = [k for k in missing if k.startswith(backbone_prefix)]
    if backbone_missing:
        log.warning("%s lacks backbone weights, left randomly initialised: %s", name_or_path, backbone_missing)
    if head_missing:
        _init_head(model, head_missing, head_seed)
    fuse_activations(model)

    if tokenizer is not None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; load it with alignlab.models.load_tokenizer")
        model.config.pad_token_id = tokenizer.pad_token_id
        if tokenizer.pad_token_id == tokenizer.eos_token_id:
            log.warning(
                "pad token == EOS token: responses ending in EOS are scored at the token before it; "
                "a distinct pad token is better for reward models"
            )
    elif model.config.pad_token_id is None:
        raise ValueError(
            f"{str(name_or_path)!r} has no pad_token_id in its config; pass the tokenizer so the "
            "reward model can find the last real token of padded rows"
        )
    if device is not None:
        model.to(resolve_device(device))
    return model


def reward_scores(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """One scalar reward per row, shape [B] (float32, differentiable).

    The score is the model's own pooled output: transformers reads it at the rightmost token that
    is not `config.pad_token_id`, for right- and left-padded rows alike. Using the model's pooling
    (instead of re-deriving a position from the attention mask) guarantees that a saved reward
    model scores the same in plain transformers. Rows must therefore be padded with the pad token.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    if logits.dim() != 2 or logits.shape[-1] != 1:
        raise ValueError(f"a reward model must output one score per row; got logits of shape {tuple(logits.shape)}")
    return logits[:, 0].float()
