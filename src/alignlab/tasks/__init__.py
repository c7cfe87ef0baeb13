"""Built-in offline tasks: worlds with a corpus, prompts and a gold scorer (see `base.Task`)."""

from __future__ import annotations

from typing import Callable

from alignlab.tasks.arithmetic import ArithmeticTask
from alignlab.tasks.base import Task
from alignlab.tasks.sentiment import SentimentTask

# Task name -> constructor. A new task registers here.
TASKS: dict[str, Callable[[], Task]] = {
    "sentiment": SentimentTask,
    "arithmetic": ArithmeticTask,
}


def get_task(name: str) -> Task:
    """A fresh instance of the built-in task called `name`."""
    try:
        factory = TASKS[name]
    except KeyError:
        known = ", ".join(sorted(TASKS))
        raise ValueError(f"unknown task {name!r}; known tasks: {known}") from None
    return factory()


__all__ = ["TASKS", "ArithmeticTask", "Task", "SentimentTask", "get_task"]
