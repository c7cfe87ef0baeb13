"""The two classifiers of a guard, as ordinary transformers models on a causal-LM backbone.

- Input classifier: an `AutoModelForSequenceClassification` with one output (the reward-model
  loader, `load_reward_model`): the probability that a prompt asks for restricted content, read at
  the prompt's last token.
- Output classifier: an `AutoModelForTokenClassification` with one output (the PRM / critic loader,
  `load_critic`): at every position, the probability that the response so far is restricted
  content. The backbone is causal, so the score at a token depends only on the tokens before it:
  one forward over prompt + response gives exactly the scores a stream computes token by token
  (`alignlab.guard.streaming`), which is what makes the classifier cheap to train and to evaluate.

`keep_layers` cuts the backbone to its first N blocks: a guard runs beside the policy on every
token, and a shallow classifier costs a fraction of a full forward. Saved, both load back with
plain transformers (the cut is in their config).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from alignlab.feedback.rewards.sources import right_pad
from alignlab.models.load import disable_dropout
from alignlab.models.reward import load_reward_model
from alignlab.models.value import load_critic
from alignlab.ops.forward_args import unwrapped


def keep_layers(model: PreTrainedModel, n: int) -> PreTrainedModel:
    """Keep the backbone's first `n` transformer blocks (in place); the config says so, so the saved
    model loads back cut. Works for any model whose blocks are one ModuleList of
    `config.num_hidden_layers` entries (Llama, Qwen, Mistral, GPT-2, ...)."""
    config = model.config
    total = config.num_hidden_layers
    if not 1 <= n <= total:
        raise ValueError(f"layers must be between 1 and the model's {total} blocks, got {n}")
    if n == total:
        return model
    base = unwrapped(model).base_model
    lists = [(name, m) for name, m in base.named_children() if isinstance(m, nn.ModuleList) and len(m) == total]
    if len(lists) != 1:
        raise ValueError(f"cannot find the transformer blocks of {type(base).__name__} to keep {n} of them")
    name, blocks = lists[0]
    setattr(base, name, nn.ModuleList(list(blocks)[:n]))
    config.num_hidden_layers = n
    if isinstance(getattr(config, "layer_types", None), list):  # per-block attention kinds (sliding, full)
        config.layer_types = config.layer_types[:n]
    return model


def load_input_classifier(path: str | Path, tokenizer, dtype: str = "float32", device=None,
                          layers: int | None = None) -> PreTrainedModel:
    """A prompt classifier from a causal LM (new head, optionally cut to `layers` blocks) or a saved one."""
    # the reward-model loader warns when pad == EOS (it would score a response before its EOS); an
    # input classifier reads each prompt's last token from the attention mask, so it does not apply
    quiet = logging.getLogger("alignlab.models.reward")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        model = load_reward_model(path, tokenizer=tokenizer, dtype=dtype)
    finally:
        quiet.setLevel(level)
    if layers is not None:
        keep_layers(model, layers)
    disable_dropout(model)
    return model.to(device) if device is not None else model


def load_output_classifier(path: str | Path, tokenizer, dtype: str = "float32", device=None,
                           layers: int | None = None) -> PreTrainedModel:
    """A per-token classifier from a causal LM (zero-initialised head) or a saved one."""
    model = load_critic(path, dtype=dtype, pad_token_id=tokenizer.pad_token_id)
    if layers is not None:
        keep_layers(model, layers)
    disable_dropout(model)
    return model.to(device) if device is not None else model


def last_token_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A sequence classifier's logit for each right-padded row, [B] float32, read at the row's last
    real token from the attention mask (so a prompt may end with the pad token, e.g. EOS = pad)."""
    hidden = unwrapped(model).base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    last = mask.sum(-1) - 1
    pooled = hidden[torch.arange(ids.shape[0], device=ids.device), last.to(ids.device)]
    return _head(model)(pooled)[:, 0].float()


def _head(model: nn.Module) -> nn.Module:
    """The sequence classifier's output layer (`score` in transformers' generic classifiers)."""
    inner = unwrapped(model)
    for name in ("score", "classifier"):
        if hasattr(inner, name):
            return getattr(inner, name)
    raise ValueError(f"cannot find the classification head of {type(inner).__name__}")


@torch.no_grad()
def prompt_scores(model: nn.Module, rows: list[list[int]], pad_id: int, batch_size: int = 32) -> list[float]:
    """P(restricted) of each prompt (token ids), from the input classifier."""
    device = next(model.parameters()).device
    model.eval()
    out: list[float] = []
    for start in range(0, len(rows), batch_size):
        ids, mask = right_pad(rows[start : start + batch_size], pad_id)
        out += torch.sigmoid(last_token_logits(model, ids.to(device), mask.to(device))).tolist()
    return out


@torch.no_grad()
def response_token_scores(model: nn.Module, prompts: list[list[int]], responses: list[list[int]], pad_id: int,
                          batch_size: int = 16) -> list[list[float]]:
    """P(restricted) after each response token (one list per response, as long as it), from the
    output classifier in one forward per batch: equal to what the stream computes token by token."""
    device = next(model.parameters()).device
    model.eval()
    out: list[list[float]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(zip(prompts[start : start + batch_size], responses[start : start + batch_size]))
        ids, mask = right_pad([p + r for p, r in chunk], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[..., 0].float()
        probs = torch.sigmoid(logits).cpu()
        out += [probs[i, len(p) : len(p) + len(r)].tolist() for i, (p, r) in enumerate(chunk)]
    return out


def apply_classifier_lora(model: PreTrainedModel, settings, target: str) -> nn.Module:
    """LoRA adapters on the backbone and the classification head trained in full. (`models.lora.apply_lora`
    would also wrap every other top-level module, and a token classifier's dropout is one.)"""
    from peft import LoraConfig, TaskType, get_peft_model

    heads = [name for name in ("score", "classifier") if isinstance(getattr(model, name, None), nn.Linear)]
    if not heads:
        raise ValueError(f"cannot find the classification head of {type(model).__name__}")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules if isinstance(settings.target_modules, str)
                        else list(settings.target_modules),
                        task_type=TaskType.SEQ_CLS if target == "input" else TaskType.TOKEN_CLS, modules_to_save=heads)
    return get_peft_model(model, config)
