"""Debaters on the arithmetic task: any `LLMBackend` writes solutions and picks the step to reveal.

Solutions. The debater's backend samples `k` solutions per problem (`sample_solutions`: the prompt
"Q: <chain>\\n", optionally after a few-shot prefix, each sample with its own seed). For one
problem, `build_item` assigns the two answers to defend:

- the right answer (from the task's solver); the honest debater's solution is the first sample
  that reaches it, or, when none does, the task's correct chain (source "generator");
- the wrong answer is the one the samples reach most often among wrong answers (the model's own
  most plausible mistake); the lying debater's solution is the first sample that reaches it. When
  no sample is wrong, it is a flawed solution from the task's corpus generator (one slipped step,
  later steps consistent with it; source "generator"). Every solution records its source.

Picking the step to reveal. `RecomputingDebater` reads a solution step by step and, for each step,
asks its backend to write that step itself from the problem and the solution's earlier lines
(greedy, one line); a step whose line differs from the backend's own is flagged as wrong. That is
what a real LLM debater does when asked "which step of your opponent's solution is wrong?", and a
model that is weak at arithmetic flags the wrong steps. Calls are memoised per prompt, so checking
the same prefix twice costs nothing; a backend error leaves the step unflagged (no claim is made).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from alignlab.feedback.ai.llm.base import GenerationSettings, LLMBackend, is_error
from alignlab.oversight.steps import Solution
from alignlab.tasks.arithmetic import _chain, _wrong_result, parse_problem, solve


@dataclass(frozen=True)
class DebateItem:
    """One problem, its two answers, and the solution defending each."""

    prompt: str
    right: int
    wrong: int
    honest: Solution
    liar: Solution

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "right": self.right, "wrong": self.wrong,
                "honest": self.honest.as_dict(), "liar": self.liar.as_dict()}


def sample_solutions(backend: LLMBackend, prompts: Sequence[str], k: int, settings: GenerationSettings,
                     prefix: str = "") -> list[list[Solution | None]]:
    """k sampled solutions per prompt (seeds settings.seed .. + k - 1); None where a sample has no
    well-formed answer line or the backend failed."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    out: list[list[Solution | None]] = [[] for _ in prompts]
    for j in range(k):
        replies = backend.complete([prefix + p for p in prompts], replace(settings, seed=settings.seed + j))
        for i, reply in enumerate(replies):
            out[i].append(None if is_error(reply) else Solution.from_completion(str(reply), "policy"))
    return out


def flawed_solution(prompt: str, rng: random.Random) -> Solution:
    """A corpus-style flawed solution: one step slipped (another operator's result or off by 1-3),
    later steps computed correctly from it, so the answer is wrong."""
    operands, operators = parse_problem(prompt)
    step = rng.randrange(len(operators))
    lines, answer = _chain(operands, operators, step, _wrong_result(operands, operators, step, rng))
    return Solution(tuple(lines), answer, "generator")


def build_item(prompt: str, samples: Sequence[Solution | None], rng: random.Random) -> DebateItem:
    """The problem's two answers and their solutions (see the module docstring for the sources)."""
    true_lines, right = solve(prompt)
    answered = [s for s in samples if s is not None]
    honest = next((s for s in answered if s.answer == right), None) or Solution(tuple(true_lines), right, "generator")
    wrong_counts = Counter(s.answer for s in answered if s.answer != right)
    if wrong_counts:
        wrong = wrong_counts.most_common(1)[0][0]  # ties: the first one sampled
        liar = next(s for s in answered if s.answer == wrong)
    else:
        liar = flawed_solution(prompt, rng)
    return DebateItem(prompt, right, liar.answer, honest, liar)


def _same_line(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


class RecomputingDebater:
    """Flags each step of a solution that its backend, writing that step itself, writes differently."""

    def __init__(self, backend: LLMBackend, prefix: str = "", max_tokens: int = 16):
        self.backend, self.prefix = backend, prefix
        self.settings = GenerationSettings(max_tokens=max_tokens, temperature=0.0, stop=("\n",))
        self.name = getattr(backend, "name", type(backend).__name__)
        self._memo: dict[str, str | None] = {}
        self.errors = 0

    def step_prompt(self, prompt: str, solution: Solution, index: int) -> str:
        """The problem and the solution's lines before step `index`, as the policy would continue them."""
        return self.prefix + prompt + "".join(line + "\n" for line in solution.lines[:index])

    def own_lines(self, prompts: Sequence[str]) -> list[str | None]:
        """The backend's greedy next line after each prompt (None on an error)."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self._memo))
        if todo:
            for p, reply in zip(todo, self.backend.complete(todo, self.settings)):
                if is_error(reply):
                    self.errors += 1
                self._memo[p] = None if is_error(reply) else str(reply).split("\n", 1)[0].strip()
        return [self._memo[p] for p in prompts]

    def flags(self, requests: Sequence[tuple[str, Solution]]) -> list[list[bool]]:
        """For each (problem, solution): per step, True when this debater claims the step is wrong."""
        keys = [(r, i) for r, (_, s) in enumerate(requests) for i in range(s.n_steps)]
        lines = self.own_lines([self.step_prompt(requests[r][0], requests[r][1], i) for r, i in keys])
        out: list[list[bool]] = [[] for _ in requests]
        for (r, i), own in zip(keys, lines):
            out[r].append(own is not None and not _same_line(own, requests[r][1].step_text(i)))
        return out


__all__ = ["DebateItem", "RecomputingDebater", "build_item", "flawed_solution", "sample_solutions"]
