"""The normalised examples that records parse into, and the text-or-messages shape of their fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from alignlab.data.errors import Source

ROLES = ("system", "user", "assistant", "tool")
Messages = list[dict]
PromptLike = Union[str, Messages]


@dataclass
class SFTExample:
    """A prompt and the completion to learn (loss on the completion only)."""

    prompt: PromptLike
    completion: PromptLike
    source: Source


@dataclass
class PreferenceExample:
    """A prompt with a preferred (`chosen`) and a dispreferred (`rejected`) response."""

    prompt: PromptLike
    chosen: PromptLike
    rejected: PromptLike
    source: Source
    label: float = 1.0  # probability that chosen ≻ rejected (soft labels in [0, 1])
    margin: float | None = None  # how much better chosen is, for margin losses


@dataclass
class PromptExample:
    """A prompt to generate from; `meta` holds the record's other fields (e.g. a task's answer)."""

    prompt: PromptLike
    source: Source
    meta: dict = field(default_factory=dict)
