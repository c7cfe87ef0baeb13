"""The contract of a built-in task: an offline world with its own texts, prompts and gold signal.

A task stands in for the pieces a real alignment project gathers from outside: a corpus to
pretrain a small model on, supervised examples, prompts to sample from, and a gold scorer that
says how good a completion truly is (the thing a learned reward model only approximates).
Stages ask a task for these by name (see `alignlab.tasks.get_task`) and never look inside it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

SPLITS = ("train", "test")


@runtime_checkable
class Task(Protocol):
    """What every built-in task provides. All methods are deterministic for a given seed."""

    name: str

    def corpus(self, n: int, seed: int) -> list[str]:
        """`n` whole texts to pretrain a language model on."""
        ...

    def sft_examples(self, n: int, seed: int) -> list[dict]:
        """`n` records {"prompt": str, "completion": str}; prompt + completion is a whole text."""
        ...

    def prompts(self, split: str, n: int, seed: int) -> list[str]:
        """`n` prompts of `split` ("train" or "test"); no test prompt is also a train prompt."""
        ...

    def gold_reward(self, prompts: list[str], completions: list[str]) -> list[float]:
        """The true score of each completion of the matching prompt."""
        ...


def check_split(split: str) -> None:
    """Raise a ValueError naming the allowed splits when `split` is not one of them."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
