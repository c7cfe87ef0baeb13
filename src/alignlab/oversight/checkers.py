"""The judge's weak checker: it verifies the arithmetic of ONE line, "x op y = z", and nothing more.

- `ExactLineChecker`: computes x op y exactly (a calculator that holds one line at a time);
- `LLMLineChecker`: asks any `LLMBackend` to compute x op y (greedy, one short reply) and compares
  the first integer of its reply with z; a small model makes mistakes, which is what a weak judge is.
  An item the backend fails on (an `LLMError`) is not confirmed, so the step counts as failing.

`judge_steps` combines a checker with the reading checks of `alignlab.oversight.steps`: a step
passes when it reads correctly and its line's arithmetic is confirmed. Claims are deduplicated and
sent in one batch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from alignlab.feedback.ai.llm.base import GenerationSettings, LLMBackend, is_error
from alignlab.oversight.steps import LineClaim, Solution, read_step
from alignlab.tasks.arithmetic import apply

# The arithmetic policy's own format, the line where such lines usually stand: second, after a first
# step that yields x. Chosen on training problems: a small arithmetic policy confirmed 80% of their
# true lines this way, 20% as a bare one-operation problem "Q: x op y" (never seen in training).
DEFAULT_CHECK_TEMPLATE = "Q: 1 * {x} {op} {y}\n1 * {x} = {x}\n{x} {op} {y} ="
_INTEGER = re.compile(r"-?\d+")


class LineChecker(Protocol):
    name: str

    def verify(self, claims: Sequence[LineClaim]) -> list[bool]: ...


class ExactLineChecker:
    """x op y computed exactly."""

    name = "rule"
    errors = 0

    def verify(self, claims: Sequence[LineClaim]) -> list[bool]:
        return [apply(c.x, c.op, c.y) == c.z for c in claims]


class LLMLineChecker:
    """x op y computed by an LLM: `template` (placeholders {x}, {op}, {y}) is completed greedily and the
    first integer of the reply's first line is taken as the result."""

    def __init__(self, backend: LLMBackend, template: str = DEFAULT_CHECK_TEMPLATE, max_tokens: int = 8):
        for slot in ("{x}", "{op}", "{y}"):
            if slot not in template:
                raise ValueError(f"checker template lacks the placeholder {slot}: {template!r}")
        self.backend, self.template = backend, template
        self.settings = GenerationSettings(max_tokens=max_tokens, temperature=0.0, stop=("\n",))
        self.name = f"llm:{getattr(backend, 'name', type(backend).__name__)}"
        self.errors = 0  # items the backend failed on, over this checker's life

    def results(self, claims: Sequence[LineClaim]) -> list[int | None]:
        """The LLM's value of x op y for each claim (None: no integer in its reply, or an error)."""
        replies = self.backend.complete([self.template.format(x=c.x, op=c.op, y=c.y) for c in claims], self.settings)
        values: list[int | None] = []
        for reply in replies:
            if is_error(reply):
                self.errors += 1
                values.append(None)
                continue
            match = _INTEGER.search(str(reply).split("\n", 1)[0])
            values.append(int(match.group()) if match else None)
        return values

    def verify(self, claims: Sequence[LineClaim]) -> list[bool]:
        return [value is not None and value == c.z for value, c in zip(self.results(claims), claims)]


def judge_steps(checker: LineChecker, requests: Sequence[tuple[str, Solution, int]]) -> list[bool]:
    """Whether each (problem, solution, step index) passes the judge's check; one batch of claims."""
    reads = [read_step(prompt, solution, index) for prompt, solution, index in requests]
    claims = list(dict.fromkeys(r.claim for r in reads if r.reads_ok and r.claim is not None))
    verified = dict(zip(claims, checker.verify(claims))) if claims else {}
    return [r.reads_ok and (r.claim is None or verified[r.claim]) for r in reads]


__all__ = ["DEFAULT_CHECK_TEMPLATE", "ExactLineChecker", "LLMLineChecker", "LineChecker", "judge_steps"]
