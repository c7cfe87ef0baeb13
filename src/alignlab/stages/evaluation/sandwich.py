"""Sandwiching: non-expert alone, model alone, non-expert assisted by the model, and the expert, on one set of items.

Two settings (`items.type`), each described in its module:

- `arithmetic` (`alignlab.oversight.sandwich`): held-out problems with two candidate answers (the
  debate's items); the non-expert is the sparse judge with a budget of one step (`checker`), the
  model is `assistant` (its greedy answer; as its argument it points to the step of the other
  candidate's solution it claims is wrong), the expert is the task's verifier.

      items: {type: arithmetic, prompts: "@task/data/prompts_test.jsonl", task: {name: arithmetic, ...},
              assistant: {type: local, path: "@sft/model"}}

- `pairs` (`alignlab.oversight.pairs`): preference pairs; the non-expert is an LLM judge
  (`non_expert`), the model another LLM (`assistant`) whose verdict and one-line argument the assisted
  judge reads, the expert a task's gold scorer (`gold_task`) or else the labels.

      items: {type: pairs, data: "@pairs/data/test.jsonl", non_expert: {type: local, path: ...},
              assistant: {type: openai, base_url: ..., model: ...}, gold_task: sentiment}

Writes metrics.json (each role's accuracy with its Wilson interval and the number of items, and the
paired gains of the assisted non-expert over the non-expert alone and over the model alone, with
bootstrap intervals), table.md, sandwich.png (bars with interval whiskers) and data/items.jsonl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from alignlab.data.formats import load_preferences
from alignlab.data.readers import write_jsonl
from alignlab.feedback.ai.judges import DEFAULT_QUESTION
from alignlab.feedback.ai.llm.base import GenerationSettings, is_error
from alignlab.feedback.ai.llm_spec import LLMSpec, build_llm
from alignlab.oversight.debate import gather_evidence
from alignlab.oversight.debaters import RecomputingDebater
from alignlab.oversight.pairs import pair_items, pair_sandwich
from alignlab.oversight.report import accuracy_table, gain_table, plot_accuracies
from alignlab.oversight.sandwich import ROLES, arithmetic_outcomes
from alignlab.oversight.stats import accuracy, paired_gain
from alignlab.oversight.steps import Solution
from alignlab.stages.blocks import EvaluationSeedSettings
from alignlab.stages.common import finish
from alignlab.stages.evaluation.oversight_common import ArithmeticItemsSettings, build_checker, build_items, problems
from alignlab.tasks import TaskSpec, get_task


class ArithmeticSandwich(ArithmeticItemsSettings):
    type: Literal["arithmetic"]
    assistant: LLMSpec = Field(description="the model overseen: it answers, writes the candidates' solutions and argues")


class PairsSandwich(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    type: Literal["pairs"]
    data: str = Field(description="preference pairs (prompt/chosen/rejected): chosen is the gold-better one")
    non_expert: LLMSpec = Field(description="the weak judge: an LLM asked which response is better")
    assistant: LLMSpec = Field(description="the model overseen: its verdict and argument assist the non-expert")
    question: str | None = Field(None, description=f"the comparison question (default {DEFAULT_QUESTION!r})")
    argument_tokens: int = Field(48, gt=0, description="longest argument the model writes")
    n_items: int | None = Field(None, gt=0, description="use the first n_items pairs only")
    gold_task: TaskSpec | None = Field(None, description="a task whose gold reward is the expert; unset: the labels")


class SandwichConfig(EvaluationSeedSettings):
    items: Annotated[ArithmeticSandwich | PairsSandwich, Field(discriminator="type")]
    resamples: int = Field(2000, gt=0, description="bootstrap resamples over prompts")
    confidence: float = Field(0.95, gt=0, lt=1)


def _greedy_answers(backend, prompts: list[str], prefix: str, max_tokens: int) -> list[int | None]:
    replies = backend.complete([prefix + p for p in prompts], GenerationSettings(max_tokens=max_tokens))
    solutions = [None if is_error(r) else Solution.from_completion(str(r)) for r in replies]
    return [s.answer if s is not None else None for s in solutions]


def _arithmetic(spec: ArithmeticSandwich, out: Path, seed: int) -> tuple[list[dict], dict]:
    prompts = problems(spec)
    backend = build_llm(spec.assistant, out)
    checker = build_checker(spec.checker, spec.assistant, backend, out)
    items, sampled = build_items(spec, backend, prompts, seed)
    model = RecomputingDebater(backend, spec.prefix)
    evidence = gather_evidence(items, model, model, checker)  # its flags are the model's argument, whichever side it takes
    answers = _greedy_answers(backend, prompts, spec.prefix, spec.generation.max_tokens)
    records = [{**item.as_dict(), **ev.as_dict(), "model_answer": a, "outcomes": arithmetic_outcomes(item, ev, a)}
               for item, ev, a in zip(items, evidence, answers)]
    right = sum(a == it.right for a, it in zip(answers, items))
    return records, {**sampled, "model_exact_match": right / len(items), "checker": checker.name,
                     "checker_errors": getattr(checker, "errors", 0), "model_errors": model.errors}


def _pairs(spec: PairsSandwich, out: Path, seed: int) -> tuple[list[dict], dict]:
    pairs = load_preferences(spec.data)[: spec.n_items]
    if not pairs:
        raise ValueError(f"items.data: {spec.data} holds no preference pair")
    for pair in pairs:
        if not all(isinstance(x, str) for x in (pair.prompt, pair.chosen, pair.rejected)):
            raise ValueError(f"items.data: {pair.source}: the pairs sandwich takes text prompts and responses")
    items = pair_items([(p.prompt, p.chosen, p.rejected) for p in pairs], seed)
    non_expert = build_llm(spec.non_expert, out)
    model = non_expert if spec.assistant == spec.non_expert else build_llm(spec.assistant, out)
    gold = get_task(spec.gold_task).gold_reward if spec.gold_task is not None else None
    records = pair_sandwich(items, non_expert, model, spec.question or DEFAULT_QUESTION, spec.argument_tokens, gold)
    # a pair a judge could not judge (an LLM error, e.g. a prompt past its context) counted ½: say how many
    no_verdict = {key: sum(r[key] is None for r in records) for key in ("p_a_non_expert", "p_a_model", "p_a_assisted")}
    return records, {"expert": "gold scorer" if gold else "label (1 by definition)", "no_verdict": no_verdict}


def run(cfg: SandwichConfig, out: Path) -> dict:
    out = Path(out)
    spec = cfg.items
    records, extra = _arithmetic(spec, out, cfg.seed) if isinstance(spec, ArithmeticSandwich) else _pairs(spec, out, cfg.seed)
    by_role = {role: [r["outcomes"][role] for r in records] for role in ROLES}
    rows = {role: accuracy(values, cfg.confidence) for role, values in by_role.items()}
    assisted = by_role["non-expert + model"]
    gains = {f"assisted - {base}": paired_gain(assisted, by_role[base], cfg.resamples, cfg.confidence, cfg.seed)
             for base in ("non-expert alone", "model alone")}
    write_jsonl(out / "data" / "items.jsonl", records)
    table = accuracy_table(rows, cfg.confidence, label="who decides")
    table += "\n" + gain_table(gains, "items")
    (out / "table.md").write_text(table, encoding="utf-8")
    plot_accuracies(rows, out / "sandwich.png", f"Sandwiching on {len(records)} {spec.type} items", cfg.confidence)
    return finish(out, cfg, {"setting": spec.type, "roles": rows, "gains": gains, "items": len(records), **extra,
                             "confidence": cfg.confidence})


__all__ = ["ArithmeticSandwich", "PairsSandwich", "SandwichConfig", "run"]
