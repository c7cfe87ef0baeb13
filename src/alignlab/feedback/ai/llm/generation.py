"""`Generation`, one generated answer, and how a row of drawn tokens is cut into one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alignlab.feedback.ai.llm.base import GenerationSettings


@dataclass
class Generation:
    """One generated answer with the token-level facts an OpenAI-style server reports.

    `token_ids` are the generated tokens that make up `text` (EOS and tokens wholly after a stop
    string left out; the last kept token may run past a stop string it contains). `top_logprobs`
    has, per kept token, the `top_logprobs` most likely (id, log-prob) pairs at that step.
    """

    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str = "length"  # "stop": EOS or a stop string; "length": max_tokens reached
    prompt_tokens: int = 0
    completion_tokens: int = 0  # tokens generated, EOS and any after a stop string included


def finish_row(tokenizer: Any, eos_ids: list[int], prompt_ids: list[int], drawn: list[int], logps: list[float],
               top: list[list[tuple[int, float]]], settings: GenerationSettings) -> Generation:
    """Cut one row's tokens at EOS and its text at the first stop string."""
    eos_at = next((k for k, token in enumerate(drawn) if token in eos_ids), None)
    generated = len(drawn) if eos_at is None else eos_at + 1
    kept = drawn[: generated if eos_at is None else eos_at]
    text = tokenizer.decode(kept, skip_special_tokens=True)
    finish = "length" if eos_at is None else "stop"
    cuts = [text.find(s) for s in settings.stop if s in text]
    if cuts:
        text, finish = text[: min(cuts)], "stop"

        def decoded(n: int) -> str:
            return tokenizer.decode(kept[:n], skip_special_tokens=True)

        n = 0  # the tokens that start before the cut stay
        while n < len(kept) and len(decoded(n)) < len(text):
            n += 1
        end = n  # generation went on until a stop string was complete (later tokens are padding)
        while end < len(kept) and not any(s in decoded(end) for s in settings.stop):
            end += 1
        kept, generated = kept[:n], end
    elif eos_at is None and generated < settings.max_tokens:
        finish = "stop"  # generation ended early without EOS: a stop string across the cut
    return Generation(
        text=text, token_ids=kept, token_logprobs=logps[: len(kept)], top_logprobs=top[: len(kept)],
        finish_reason=finish, prompt_tokens=len(prompt_ids), completion_tokens=generated,
    )
