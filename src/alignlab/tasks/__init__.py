"""Built-in offline tasks: worlds with a corpus, prompts and a gold scorer (see `base.Task`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alignlab.tasks.arithmetic import ArithmeticTask
from alignlab.tasks.base import Task
from alignlab.tasks.sentiment import SentimentTask

# Task name -> constructor. A new task registers here.
TASKS: dict[str, Callable[[], Task]] = {
    "sentiment": SentimentTask,
    "arithmetic": ArithmeticTask,
}


# A task as configs name it: its name, or a mapping {name: ..., <constructor options>}, e.g.
# {name: arithmetic, max_operand: 9, max_operations: 3}.
TaskSpec = str | dict[str, Any]


def get_task(spec: TaskSpec) -> Task:
    """A fresh instance of the built-in task `spec` names, built with the options it gives."""
    options = dict(spec) if isinstance(spec, dict) else {"name": spec}
    name = options.pop("name", None)
    try:
        factory = TASKS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(TASKS))
        raise ValueError(f"unknown task {name!r}; known tasks: {known}") from None
    try:
        return factory(**options)
    except TypeError as error:
        raise ValueError(f"task {name!r}: bad options {sorted(options)}: {error}") from None


def task_name(spec: TaskSpec) -> str:
    """The task's name, for reports."""
    return spec if isinstance(spec, str) else str(spec.get("name"))


__all__ = ["TASKS", "ArithmeticTask", "SentimentTask", "Task", "TaskSpec", "get_task", "task_name"]
