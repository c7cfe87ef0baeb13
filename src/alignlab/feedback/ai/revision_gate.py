"""Which SL-CAI revisions are real revisions, before any becomes training data.

A small feedback model often fails at the revision step in ways that look like success: it copies
its critique, repeats the request, hands back the initial answer nearly unchanged, or loops on one
phrase. Each such "revision" trained on teaches the policy exactly that. `gate_reason` names the
first failure of a revision (None for one that passes), from the texts alone:

- `empty`: nothing left after stripping;
- `copies_critique`, `copies_request`, `copies_instruction`: mostly the critique, the human's request
  or the revision request itself (word-sequence similarity at or above `copy_similarity`);
- `unchanged`: the initial answer with at most small edits (similarity at or above `near_copy`);
- `repetitive`: degenerate repetition (fewer than `min_distinct` of its word 3-grams distinct, or
  one line said three times or more).

Similarity is difflib's ratio over lower-cased word sequences: 1 for the same words in the same
order, falling with every insertion, deletion or change.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from difflib import SequenceMatcher

REASONS = ("empty", "copies_critique", "copies_request", "copies_instruction", "unchanged", "repetitive")


@dataclass(frozen=True)
class GateSettings:
    copy_similarity: float = 0.8
    near_copy: float = 0.9
    min_distinct: float = 0.5
    min_words_for_repetition: int = 12  # shorter texts have too few 3-grams to judge


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def similarity(a: str, b: str) -> float:
    """difflib's ratio of the two texts' word sequences (1.0: the same words in the same order)."""
    x, y = words(a), words(b)
    if not x and not y:
        return 1.0
    return SequenceMatcher(None, x, y, autojunk=False).ratio()


def is_repetitive(text: str, settings: GateSettings = GateSettings()) -> bool:
    lines = [line.strip().lower() for line in text.splitlines() if line.strip()]
    if lines and Counter(lines).most_common(1)[0][1] >= 3:
        return True
    tokens = words(text)
    if len(tokens) < settings.min_words_for_repetition:
        return False
    grams = list(zip(tokens, tokens[1:], tokens[2:]))
    return len(set(grams)) / len(grams) < settings.min_distinct


def gate_reason(revision: str, *, initial: str, critique: str, request: str, instruction: str,
                settings: GateSettings = GateSettings()) -> str | None:
    """The first reason (in `REASONS` order) this revision is not one, or None when it passes.
    `request`: the human's last message; `instruction`: the revision request the model was given."""
    if not revision.strip():
        return "empty"
    for reason, other in (("copies_critique", critique), ("copies_request", request), ("copies_instruction", instruction)):
        if other.strip() and similarity(revision, other) >= settings.copy_similarity:
            return reason
    if similarity(revision, initial) >= settings.near_copy:
        return "unchanged"
    if is_repetitive(revision, settings):
        return "repetitive"
    return None
