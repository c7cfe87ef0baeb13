"""Value functions for PPO: a separate critic model, or a scalar head on the policy's own trunk.

Both give one value per position, aligned with `alignlab.ops.token_logps`: `values[:, t]` is the
value of the state that predicts token t+1 (the hidden state at position t), so a value, a
log-prob and an advantage at the same index belong to the same action.

- Separate critic: `AutoModelForTokenClassification` with one label, initialised from any causal
  LM or reward-model directory (the usual choice is the reward model, as TRL and OpenRLHF do). A
  new head starts at zero, so the first values are 0 rather than noise. Saved, it loads back with
  plain transformers as a token classifier.
- Shared trunk (`ValueHead`): one linear layer on the policy's last hidden state. No second model
  in memory; with LoRA the reference is the adapter switched off, so one copy of the weights
  serves policy, value and reference.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForTokenClassification, PreTrainedModel

from alignlab.models.fused import fuse_activations
from alignlab.models.load import (
    checkpoint_source,
    disable_dropout,
    resolve_device,
    resolve_dtype,
    weight_loading_kwargs,
)


def _is_token_classifier(config) -> bool:
    return any(name.endswith("ForTokenClassification") for name in (config.architectures or []))


def load_critic(
    name_or_path: str | Path, dtype: str = "float32", device=None, pad_token_id: int | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A token-level value model (one output per position), dropout off, ready to train."""
    source = checkpoint_source(name_or_path)
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    fresh_head = not _is_token_classifier(config)
    config.num_labels = 1
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    model = AutoModelForTokenClassification.from_pretrained(
        source, config=config, dtype=resolve_dtype(dtype),
        **weight_loading_kwargs(source, trust_remote_code),
    )
    if fresh_head:
        with torch.no_grad():
            for module in _head_modules(model):
                for param in module.parameters():
                    param.zero_()
    disable_dropout(model)
    fuse_activations(model)
    if device is not None:
        model.to(resolve_device(device))
    return model


def _head_modules(model: PreTrainedModel) -> list[nn.Module]:
    """The output layer(s) of a token classifier: whatever maps hidden states to the one label."""
    heads = [m for name, m in model.named_children() if name in ("classifier", "score")]
    if not heads:
        raise ValueError(f"cannot find the value head of {type(model).__name__}")
    return heads


def critic_values(critic: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Values `[B, T-1]` from a separate critic, aligned with `token_logps`."""
    logits = critic(input_ids=input_ids, attention_mask=attention_mask).logits
    return logits[:, :-1, 0].float()


class ValueHead(nn.Module):
    """A scalar head on a policy's last hidden state (the shared-trunk critic); starts at zero."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, last_hidden: Tensor) -> Tensor:
        """Values `[B, T-1]` from hidden states `[B, T, H]`, aligned with `token_logps`."""
        return self.linear(last_hidden[:, :-1].to(self.linear.weight.dtype)).squeeze(-1).float()


def hidden_size(model: nn.Module) -> int:
    config = model.config
    for key in ("hidden_size", "n_embd", "d_model"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise ValueError(f"cannot tell the hidden size of {type(model).__name__}")
