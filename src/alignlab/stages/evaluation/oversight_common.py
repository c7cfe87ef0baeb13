"""What the debate and sandwich stages share on arithmetic: the judge's checker spec, the held-out
problems, and the items (two answers with a solution each) built from the debater's samples."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from alignlab.data.formats import load_prompts
from alignlab.feedback.ai.llm.base import LLMBackend
from alignlab.feedback.ai.llm_spec import FeedbackGeneration, LLMSpec, build_llm
from alignlab.oversight.checkers import DEFAULT_CHECK_TEMPLATE, ExactLineChecker, LineChecker, LLMLineChecker
from alignlab.oversight.debaters import DebateItem, build_item, sample_solutions
from alignlab.stages.common import StageConfig
from alignlab.tasks import TaskSpec, task_name
from alignlab.tasks.arithmetic import parse_problem


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class RuleCheckerSpec(_Spec):
    """Exact arithmetic of the one revealed line."""

    type: Literal["rule"]


class LLMCheckerSpec(_Spec):
    """A (small) LLM asked to compute x op y of the one revealed line."""

    type: Literal["llm"]
    llm: LLMSpec
    template: str = Field(DEFAULT_CHECK_TEMPLATE, description="prompt with {x}, {op}, {y}; the reply's first integer is the result")
    reply_tokens: int = Field(8, gt=0, description="longest reply")


CheckerSpec = Annotated[RuleCheckerSpec | LLMCheckerSpec, Field(discriminator="type")]


class ArithmeticItemsSettings(StageConfig):
    """Held-out arithmetic problems, how solutions to judge are sampled, and the judge's checker."""

    prompts: str = Field(description="held-out problems (`prompt` records, e.g. @task/data/prompts_test.jsonl)")
    task: TaskSpec = Field(description="the arithmetic task, as the problems were made (its solver gives the right answers)")
    n_prompts: int | None = Field(None, gt=0)
    samples_per_prompt: int = Field(8, gt=0, description="solutions sampled per problem to find the two answers' solutions")
    prefix: str = Field("", description="text put before every prompt to the solution-writing model (e.g. worked examples)")
    generation: FeedbackGeneration = FeedbackGeneration(max_tokens=48, temperature=1.0)
    checker: CheckerSpec = Field(RuleCheckerSpec(type="rule"), description="how the judge checks one revealed line")


def problems(settings: ArithmeticItemsSettings) -> list[str]:
    """The distinct problems of the prompts file (first n_prompts), checked to be arithmetic."""
    if task_name(settings.task) != "arithmetic":
        raise ValueError(f"task: debate and sandwiching run on the arithmetic task, got {task_name(settings.task)!r}")
    found = [p.prompt for p in load_prompts(settings.prompts)]
    for i, prompt in enumerate(found):
        if not isinstance(prompt, str):
            raise ValueError(f"prompts: record {i + 1} of {settings.prompts} is not a text prompt")
        try:
            parse_problem(prompt)
        except ValueError as err:
            raise ValueError(f"prompts: record {i + 1} of {settings.prompts}: {err}") from None
    distinct = list(dict.fromkeys(found))[: settings.n_prompts]
    if not distinct:
        raise ValueError(f"prompts: {settings.prompts} holds no problem")
    return distinct


def build_checker(spec, writer_spec, writer: LLMBackend, cache_dir: Path) -> LineChecker:
    """The judge's checker; an LLM checker on the writer's own spec reuses the loaded writer."""
    if isinstance(spec, RuleCheckerSpec):
        return ExactLineChecker()
    backend = writer if spec.llm == writer_spec else build_llm(spec.llm, cache_dir)
    return LLMLineChecker(backend, spec.template, spec.reply_tokens)


def build_items(settings: ArithmeticItemsSettings, writer: LLMBackend, prompts: list[str],
                seed: int) -> tuple[list[DebateItem], dict]:
    """The items, and counts of where their solutions came from and how the samples fared."""
    samples = sample_solutions(writer, prompts, settings.samples_per_prompt,
                               settings.generation.settings(seed=seed), settings.prefix)
    rng = random.Random(seed)
    items = [build_item(p, s, rng) for p, s in zip(prompts, samples)]
    flat = [s for per in samples for s in per]
    right = sum(s is not None and s.answer == it.right for it, per in zip(items, samples) for s in per)
    sources = Counter(f"{side}:{getattr(it, side).source}" for it in items for side in ("honest", "liar"))
    return items, {
        "samples": len(flat),
        "samples_answered": sum(s is not None for s in flat),
        "sample_accuracy": right / max(len(flat), 1),
        "solution_sources": dict(sorted(sources.items())),
    }


__all__ = ["ArithmeticItemsSettings", "CheckerSpec", "LLMCheckerSpec", "RuleCheckerSpec", "build_checker",
           "build_items", "problems"]
