"""Pairwise judges: which of two responses to the same prompt is better?

One protocol for every judge::

    judge.judge(prompts, responses_a, responses_b) -> list[Judgement | JudgeError]

one result per pair, in order. A `Judgement` holds p_a = P(A is better) in [0, 1] and a hard
winner ("a", "b" or "tie"); a `JudgeError` in a slot says why that one pair could not be judged
(the rest are unaffected, and callers count the errors). Prompts and responses are text or
conversations (lists of {"role", "content"} messages), as everywhere in alignlab. Two identical
responses are a tie (p_a = 0.5) without asking anyone (`ties_first`).

The judges: `RewardModelJudge` and `LLMJudge` in `feedback/ai/judges.py`, `HumanLabelsJudge` in
`feedback/human/labels_judge.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from alignlab.data.examples import PromptLike

Winner = Literal["a", "b", "tie"]


@dataclass
class Judgement:
    """The verdict on one pair: p_a = P(response A is better than B), and the hard winner."""

    p_a: float
    winner: Winner | None = None  # None: derived from p_a (see `outcome`)
    details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_a <= 1.0:  # also refuses NaN
            raise ValueError(f"p_a must be a probability in [0, 1], got {self.p_a}")

    @property
    def outcome(self) -> float:
        """1 when A wins, 0.5 for a tie, 0 when B wins: the winner, else the side p_a favours."""
        winner = self.winner or winner_from_probability(self.p_a)
        return {"a": 1.0, "tie": 0.5, "b": 0.0}[winner]


@dataclass
class JudgeError:
    """Why one pair could not be judged."""

    message: str
    details: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


JudgeResult = Judgement | JudgeError


@runtime_checkable
class PairwiseJudge(Protocol):
    name: str

    def judge(
        self, prompts: Sequence[PromptLike], responses_a: Sequence[PromptLike], responses_b: Sequence[PromptLike]
    ) -> list[JudgeResult]: ...


def winner_from_probability(p_a: float) -> Winner:
    return "a" if p_a > 0.5 else "b" if p_a < 0.5 else "tie"


def sigmoid(x: float) -> float:
    """σ(x) without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _check_lengths(prompts: Sequence, responses_a: Sequence, responses_b: Sequence) -> None:
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ValueError(
            f"a judge needs one prompt per pair: got {len(prompts)} prompts, {len(responses_a)} responses A "
            f"and {len(responses_b)} responses B"
        )


def ties_first(
    prompts: Sequence, responses_a: Sequence, responses_b: Sequence
) -> tuple[list[JudgeResult | None], list[int]]:
    """Results with identical pairs already decided as ties, and the indices still to judge."""
    _check_lengths(prompts, responses_a, responses_b)
    results: list[JudgeResult | None] = [None] * len(prompts)
    todo = []
    for i, (a, b) in enumerate(zip(responses_a, responses_b)):
        if a == b:
            results[i] = Judgement(0.5, "tie", {"identical": True})
        else:
            todo.append(i)
    return results, todo
