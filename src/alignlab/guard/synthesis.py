"""Writing labelled classifier data with a generator LLM: the requests, and what is kept of the answers.

Pure functions over text; the `classifier_data` stage runs them through an `LLMBackend`.

- `prompt_request`: the constitution's prompt request for one category and draw k, showing up to
  three of the category's examples, rotated by k so repeated draws see different ones.
- `clean_prompt`: the generated user message, or the reason it is dropped: the first non-empty
  line, with quotes, numbering and labels ("Message:", "Question:") stripped; dropped when empty,
  shorter than 10 characters, longer than 400, not text (fewer than three words, or under 80% letters
  and spaces: a weak generator's byte soup), a refusal to write one, or a near-copy of a shown
  example (word-sequence similarity >= 0.8).
- `normalise`: the text dedup and leak checks compare (case, spacing and punctuation folded).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from alignlab.eval.refusal import is_refusal
from alignlab.feedback.ai.revision_gate import similarity
from alignlab.guard.constitution import Category, ClassifierConstitution

SHOWN_EXAMPLES = 3
MIN_CHARS, MAX_CHARS = 10, 400
NEAR_COPY = 0.8
MIN_LETTERS = 0.8
_WORD = re.compile(r"[^\W\d_]{2,}")  # two or more letters, in any script
_LABEL = re.compile(r"^(?:\d+[.)]\s*|[-*•]\s*|(?:new\s+)?(?:user\s+)?(?:message|question|request|prompt|user|query)"
                    r"\s*(?:\d+)?\s*:\s*)+", re.IGNORECASE)
_QUOTES = "\"'“”‘’`"


def shown_examples(category: Category, k: int) -> list[str]:
    examples = category.examples
    start = k % len(examples)
    rotated = examples[start:] + examples[:start]
    return rotated[:SHOWN_EXAMPLES]


def prompt_request(constitution: ClassifierConstitution, category: Category, k: int) -> str:
    shown = "\n".join(f"- {e}" for e in shown_examples(category, k))
    return constitution.requests.prompt.format(category=category.name.replace("_", " "),
                                               description=category.description, examples=shown)


def response_request(constitution: ClassifierConstitution, kind: str, category: Category | None, prompt: str) -> str:
    template = constitution.requests.restricted_response if kind == "restricted" else constitution.requests.allowed_response
    name = category.name.replace("_", " ") if category else "red-team prompt"
    return template.format(prompt=prompt, category=name, description=category.description if category else "")


def clean_prompt(text: str, shown: Sequence[str] = ()) -> tuple[str | None, str | None]:
    """(the prompt, None) or (None, why it is dropped)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None, "empty"
    prompt = _LABEL.sub("", lines[0]).strip().strip(_QUOTES).strip()
    prompt = _LABEL.sub("", prompt).strip().strip(_QUOTES).strip()  # a label inside the quotes
    if len(prompt) < MIN_CHARS:
        return None, "too_short"
    if len(prompt) > MAX_CHARS:
        return None, "too_long"
    if len(_WORD.findall(prompt)) < 3 or sum(ch.isalpha() or ch == " " for ch in prompt) < MIN_LETTERS * len(prompt):
        return None, "not_text"
    if is_refusal(prompt):
        return None, "refused"
    if any(similarity(prompt, example) >= NEAR_COPY for example in shown):
        return None, "copies_example"
    return prompt, None


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, spacing collapsed: "How do I X?" == "how do i x"."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices: a seeded `fraction` held out (at least one when fraction > 0 and n > 1)."""
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    count = min(n - 1, max(1, round(fraction * n)))
    held = set(random.Random(seed).sample(range(n), count))
    return [i for i in range(n) if i not in held], sorted(held)
