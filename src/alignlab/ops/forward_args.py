"""What a model's forward takes: optional arguments, and the KV cache under its current name.

Code that skips work by model arguments (`logits_to_keep`, a prompt's cache reused for many rows)
asks here, once per model class, rather than inspecting a signature on every forward.
transformers 5.24 renamed a causal LM's `past_key_values` argument and output field to `cache`
(the old names still work there with a deprecation warning, and are due to go).
"""

from __future__ import annotations

import functools
import inspect


def unwrapped(model):
    """The transformers model under a PEFT wrapper (the model itself when there is none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_prompt_learning(model) -> bool:
    """Whether PEFT prompt learning wraps `model`: its virtual tokens sit in front of every input
    (and in the KV cache), so a prompt's cache cannot be computed by a plain forward and reused."""
    peft_config = getattr(model, "peft_config", None)
    return bool(peft_config) and any(c.is_prompt_learning for c in peft_config.values())


def takes(model, name: str) -> bool:
    """Whether the (PEFT-unwrapped) model's forward has a parameter `name`."""
    return name in _parameters(type(unwrapped(model)))


def cache_keyword(model) -> str:
    """The keyword under which `model`'s forward (and `generate`) takes a KV cache."""
    return "cache" if takes(model, "cache") else "past_key_values"


def returned_cache(output):
    """The KV cache a forward with `use_cache=True` returned (None when it returned none)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


@functools.cache
def _parameters(model_class: type) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(model_class.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()
