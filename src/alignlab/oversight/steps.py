"""What a sparse judge sees of an arithmetic solution: one step at a time, never the whole chain.

A `Solution` defends one answer: its step lines ("x op y = z", see `alignlab.tasks.arithmetic`)
and the answer line "A: n". Its checkable steps are numbered 0..len(lines): step i < len(lines) is
line i, and the last step is the answer line.

A REVEALED step i shows the judge that line, the value it must start from (the problem's first
number for line 0, else the result line i-1 claims) and the problem's i-th operator and operand.
The judge then checks, for that one step only:

- reading and copying (no arithmetic): the line parses, it is not beyond the problem's length,
  its operator and right operand are the problem's i-th, its left operand is the value it starts
  from; for the answer line, the solution has exactly one line per operation and the answer is
  the last line's result;
- the arithmetic of the one line, x op y = z, by a line checker (`alignlab.oversight.checkers`:
  exact, or a small LLM asked to compute x op y).

A solution that passes every step reaches the true answer (by induction along the chain), so a
solution defending a wrong answer has at least one step that fails: that is what an honest
debater can point to. The judge still never evaluates the chain: it checks at most the steps it
is shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alignlab.tasks.arithmetic import ANSWER_PREFIX, apply, parse_problem, split_steps

_LINE = re.compile(r"^(-?\d+) ([+\-*]) (-?\d+) = (-?\d+)$")
_ANSWER = re.compile(r"^A: (-?\d+)$")


@dataclass(frozen=True)
class Solution:
    """Step lines and the answer they defend; `source` says who wrote it (for the records)."""

    lines: tuple[str, ...]
    answer: int
    source: str = ""

    @property
    def n_steps(self) -> int:
        """Checkable steps: every line, then the answer line."""
        return len(self.lines) + 1

    def step_text(self, index: int) -> str:
        if not 0 <= index < self.n_steps:
            raise IndexError(f"step {index} of a solution with {self.n_steps} steps")
        return self.lines[index] if index < len(self.lines) else f"{ANSWER_PREFIX}{self.answer}"

    @property
    def text(self) -> str:
        """The completion text, as the policy writes it."""
        return "\n".join([*self.lines, f"{ANSWER_PREFIX}{self.answer}"])

    def as_dict(self) -> dict:
        return {"lines": list(self.lines), "answer": self.answer, "source": self.source}

    @classmethod
    def from_completion(cls, completion: str, source: str = "") -> Solution | None:
        """The solution a completion writes, or None when it has no well-formed answer line."""
        lines, answer_line = split_steps(completion)
        match = _ANSWER.match(answer_line) if answer_line is not None else None
        return cls(tuple(lines), int(match.group(1)), source) if match else None


@dataclass(frozen=True)
class LineClaim:
    """The arithmetic one line claims: x op y = z."""

    x: int
    op: str
    y: int
    z: int

    @property
    def text(self) -> str:
        return f"{self.x} {self.op} {self.y} = {self.z}"


@dataclass(frozen=True)
class StepCheck:
    """The judge's reading of one revealed step: whether it copies the problem and the previous line
    correctly, the arithmetic left to verify (None for the answer line or a line that failed
    reading), and why reading failed."""

    reads_ok: bool
    claim: LineClaim | None
    reason: str = ""


def _result(line: str) -> int | None:
    match = _LINE.match(line)
    return int(match.group(4)) if match else None


def read_step(prompt: str, solution: Solution, index: int) -> StepCheck:
    """Check step `index` of `solution` for everything but its arithmetic (see the module docstring)."""
    operands, operators = parse_problem(prompt)
    n_ops = len(operators)
    if index == len(solution.lines):  # the answer line
        if len(solution.lines) != n_ops:
            return StepCheck(False, None, f"{len(solution.lines)} step lines for {n_ops} operations")
        last = _result(solution.lines[-1]) if solution.lines else operands[0]
        if last != solution.answer:
            return StepCheck(False, None, "the answer is not the last line's result")
        return StepCheck(True, None)
    line = solution.step_text(index)
    match = _LINE.match(line)
    if match is None:
        return StepCheck(False, None, "not a step line")
    if index >= n_ops:
        return StepCheck(False, None, "a step beyond the problem's operations")
    x, op, y, z = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
    if op != operators[index] or y != operands[index + 1]:
        return StepCheck(False, None, "operator or operand not the problem's")
    start = operands[0] if index == 0 else _result(solution.lines[index - 1])
    if x != start:
        return StepCheck(False, None, "does not start from the previous line's result")
    return StepCheck(True, LineClaim(x, op, y, z))


def true_step_labels(prompt: str, solution: Solution) -> list[bool]:
    """Every step checked with exact arithmetic: the ground truth a judge's checks are measured against."""
    checks = [read_step(prompt, solution, i) for i in range(solution.n_steps)]
    return [c.reads_ok and (c.claim is None or apply(c.claim.x, c.claim.op, c.claim.y) == c.claim.z) for c in checks]


__all__ = ["LineClaim", "Solution", "StepCheck", "read_step", "true_step_labels"]
