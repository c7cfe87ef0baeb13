"""LoRA adapters (peft) for policies and reward models, and merging them for export."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import Tensor, nn
from transformers import PreTrainedModel

TASK_TYPES = {"causal_lm": TaskType.CAUSAL_LM, "reward": TaskType.SEQ_CLS}


@dataclass
class LoraSettings:
    """LoRA hyper-parameters. `target_modules="all-linear"` adapts every linear layer except the
    output head (peft's shorthand); a list names module suffixes such as ["q_proj", "v_proj"]."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"


def head_module_names(model: PreTrainedModel) -> list[str]:
    """Top-level modules outside the backbone: the score head of a sequence classifier."""
    return [name for name, _ in model.named_children() if name != model.base_model_prefix]


def apply_lora(model: PreTrainedModel, settings: LoraSettings, task: str = "causal_lm") -> PeftModel:
    """Wrap `model` with fresh LoRA adapters; only the adapters (and a reward model's head) train.

    `task` is "causal_lm" or "reward". For a reward model the score head is fully trainable
    (peft `modules_to_save`): a new head has to be learnt, and a low-rank update of a one-row
    matrix would make little sense. Note that peft injects the adapter layers into `model` itself.
    """
    if task not in TASK_TYPES:
        raise ValueError(f"unknown LoRA task {task!r}; choose one of {', '.join(TASK_TYPES)}")
    if is_lora(model):
        raise ValueError("the model already has LoRA adapters")
    if settings.r <= 0:
        raise ValueError(f"LoRA rank r must be positive, got {settings.r}")
    target = settings.target_modules
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target if isinstance(target, str) else list(target),
        task_type=TASK_TYPES[task],
        modules_to_save=head_module_names(model) if task == "reward" else None,
    )
    return get_peft_model(model, config)


def is_lora(model: nn.Module) -> bool:
    """True for a peft-wrapped model."""
    return isinstance(model, PeftModel)


def merged_for_saving(model: nn.Module) -> PreTrainedModel:
    """A plain transformers model with the LoRA weights folded in; `model` is left as it was.

    The merge happens on a deep copy, so training can go on with the adapters unmerged (merging
    in place and unmerging afterwards would not give back the exact weights in low precision).
    The cost is a transient second copy of the model on the model's device. A model without
    adapters is returned as is.
    """
    if not is_lora(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


def merged_state(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A peft model's state dict (`state`, keys as `model.state_dict()`'s) as the plain model's, LoRA
    folded in: W + scaling·B·A on each adapted layer, a reward head's trained copy in place of the
    original. Pure arithmetic on the tensors, for weights gathered from shards, where the model's own
    merge (`merged_for_saving`) cannot run; `model` only says which layers carry adapters and how."""
    from peft.tuners.lora import LoraLayer

    merged = dict(state)
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            a, b = merged.pop(f"{name}.lora_A.{adapter}.weight"), merged.pop(f"{name}.lora_B.{adapter}.weight")
            key = f"{name}.base_layer.weight"
            delta = (b.float() @ a.float()) * module.scaling[adapter]
            if module.fan_in_fan_out:  # GPT-2's Conv1D keeps its weight as [in, out]
                delta = delta.T
            merged[key] = (merged[key].float() + delta).to(merged[key].dtype)
    if any("lora_" in k for k in merged):
        raise ValueError(f"LoRA weights of an unsupported kind (DoRA, embedding adapters): "
                         f"{sorted(k for k in merged if 'lora_' in k)[:3]}")
    prefix = "base_model.model."
    plain = {}
    for key, value in merged.items():
        if ".original_module." in key:
            continue  # the reward head as it was: its trained copy (modules_to_save) replaces it
        plain[key.removeprefix(prefix).replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")] = value
    return plain
