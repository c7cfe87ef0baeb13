"""Models: loading, reward models, LoRA, reference policies and saving in Hugging Face format."""

from alignlab.models.load import (
    check_length_limit,
    disable_dropout,
    load_causal_lm,
    load_tokenizer,
    resolve_device,
    resolve_max_length,
)
from alignlab.models.lora import LoraSettings, apply_lora, is_lora, merged_for_saving
from alignlab.models.reference import (
    AdapterDisabled,
    FrozenCopy,
    LogpsCache,
    Reference,
    fingerprint,
    model_fingerprint,
)
from alignlab.models.reward import load_reward_model, reward_scores
from alignlab.models.save import save_pretrained_atomic

__all__ = [
    "AdapterDisabled",
    "FrozenCopy",
    "LogpsCache",
    "LoraSettings",
    "Reference",
    "apply_lora",
    "check_length_limit",
    "disable_dropout",
    "fingerprint",
    "is_lora",
    "load_causal_lm",
    "load_reward_model",
    "load_tokenizer",
    "merged_for_saving",
    "model_fingerprint",
    "resolve_device",
    "resolve_max_length",
    "reward_scores",
    "save_pretrained_atomic",
]
