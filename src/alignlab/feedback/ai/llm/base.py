"""The one interface every LLM backend (a local transformers model, an OpenAI-compatible server)
offers to the feedback machinery: constitutional critique/revision, AI preference labels, judges.

Three calls, each batched, each answering per item: a failed item is an `LLMError` in its slot, so
one bad answer never loses the batch (callers report it and go on).

- `complete(prompts, settings)`: raw text continuation of each prompt.
- `chat(conversations, settings)`: the assistant's reply to each conversation (a list of
  {"role", "content"} messages), rendered with the model's chat template.
- `next_token_logprobs(prompts, candidates)`: for each prompt, the log-probability of each
  candidate string as the very next text (e.g. candidates ["A", "B"] after "... The answer is: (").
  Used for soft AI labels; a backend that cannot give a candidate's log-prob returns an LLMError
  for that item.

Results are deterministic for a given backend, item, settings and seed (a sampled answer depends
on its own prompt and seed, not on the other items of the batch), which is what lets
`alignlab.feedback.ai.llm.cache.CallCache` keep finished calls per item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence, Union, runtime_checkable

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate. `stop` strings end the text at the first one found (not included);
    `seed` drives sampling when `temperature > 0` and is ignored by greedy decoding."""

    max_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        # A list or a single string for `stop` is accepted and stored as a tuple, so settings stay
        # hashable and their JSON form (a cache key) is the same whichever was passed.
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if any(not isinstance(s, str) or not s for s in stop):
            raise ValueError(f"stop strings must be non-empty strings, got {stop!r}")


@dataclass
class LLMError:
    """Why one item failed (after the backend's retries); carried in the item's slot.

    `details` holds machine-readable facts where there are some, e.g. {"status": 503} for an HTTP
    answer, {"cause": "timeout" | "connection" | "malformed" | "missing_logprob" | "input"}.
    """

    message: str
    attempts: int = 1
    details: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


TextResult = Union[str, LLMError]
LogprobResult = Union[dict[str, float], LLMError]


def is_error(result: object) -> bool:
    """True for an item that failed (an `LLMError` in its slot)."""
    return isinstance(result, LLMError)


@runtime_checkable
class LLMBackend(Protocol):
    name: str

    def complete(self, prompts: Sequence[str], settings: GenerationSettings) -> list[TextResult]: ...

    def chat(self, conversations: Sequence[list[Message]], settings: GenerationSettings) -> list[TextResult]: ...

    def next_token_logprobs(self, prompts: Sequence[str], candidates: Sequence[str]) -> list[LogprobResult]: ...


def check_candidates(candidates: Sequence[str]) -> list[str]:
    """The candidates as a list; each must be a non-empty string (an empty one has no next token)."""
    if isinstance(candidates, str):
        raise TypeError("candidates must be a list of strings, not one string")
    checked = list(candidates)
    if not checked:
        raise ValueError("next_token_logprobs needs at least one candidate")
    for candidate in checked:
        if not isinstance(candidate, str) or not candidate:
            raise ValueError(f"each candidate must be a non-empty string, got {candidate!r}")
    return checked
