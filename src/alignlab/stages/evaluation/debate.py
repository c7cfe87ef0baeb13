"""Debate against consultancy and the judge alone, on held-out arithmetic problems (`alignlab.oversight.debate`).

One model (`debater`, any LLM backend: the policy of a run, or a model behind an OpenAI-compatible
server) plays both debaters: it samples `samples_per_prompt` solutions per problem, which give the
right answer's solution and the model's most frequent wrong answer with its solution (the task's
generator stands in where no sample reaches one; metrics count how often). Each debater reveals
the step of the other's solution its own recomputation disagrees with first. The judge checks
only revealed steps, with `checker` (exact one-line arithmetic, or an LLM asked to compute it).

    debate:
      prompts: "@task/data/prompts_test.jsonl"
      task: {name: arithmetic, max_operand: 9, max_operations: 3}
      debater: {type: local, path: "@sft/model"}
      checker: {type: rule}                # or {type: llm, llm: {type: local, path: ...}}

Writes metrics.json (accuracy of each protocol with its Wilson interval and the number of
problems, also on the problems whose two solutions are both the model's own, debate's paired gain over each baseline with a bootstrap interval, where the solutions
came from, how the checker and the debaters did against the true step labels), table.md,
debate.png, and data/debates.jsonl (every problem: answers, solutions, flags, checks, outcomes).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from alignlab.data.readers import write_jsonl
from alignlab.feedback.ai.llm_spec import LLMSpec, build_llm
from alignlab.oversight.debate import PROTOCOLS, checker_agreement, debater_diagnostics, gather_evidence
from alignlab.oversight.debaters import RecomputingDebater
from alignlab.oversight.report import accuracy_table, gain_table, plot_accuracies
from alignlab.oversight.stats import accuracy, paired_gain
from alignlab.stages.blocks import EvaluationSeedSettings
from alignlab.stages.common import finish
from alignlab.stages.evaluation.oversight_common import ArithmeticItemsSettings, build_checker, build_items, problems


class DebateConfig(ArithmeticItemsSettings, EvaluationSeedSettings):
    debater: LLMSpec = Field(description="the model that writes both sides' solutions and picks the steps to reveal")
    resamples: int = Field(2000, gt=0, description="bootstrap resamples over prompts")
    confidence: float = Field(0.95, gt=0, lt=1)


def run(cfg: DebateConfig, out: Path) -> dict:
    out = Path(out)
    prompts = problems(cfg)
    debater_backend = build_llm(cfg.debater, out)
    checker = build_checker(cfg.checker, cfg.debater, debater_backend, out)
    items, sampled = build_items(cfg, debater_backend, prompts, cfg.seed)
    debater = RecomputingDebater(debater_backend, cfg.prefix)
    evidence = gather_evidence(items, debater, debater, checker)
    outcomes = [ev.outcomes() for ev in evidence]
    by_protocol = {name: [o[name] for o in outcomes] for name in PROTOCOLS}
    rows = {name: accuracy(values, cfg.confidence) for name, values in by_protocol.items()}
    # The same on the problems where both solutions are the model's own (none from the task's generator).
    own = [k for k, it in enumerate(items) if it.honest.source == it.liar.source == "policy"]
    own_rows = {name: accuracy([values[k] for k in own], cfg.confidence) for name, values in by_protocol.items()}
    gains = {f"debate - {base}": paired_gain(by_protocol["debate"], by_protocol[base], cfg.resamples,
                                             cfg.confidence, cfg.seed)
             for base in PROTOCOLS if base != "debate"}

    write_jsonl(out / "data" / "debates.jsonl", [
        {**item.as_dict(), **ev.as_dict(), "outcomes": o} for item, ev, o in zip(items, evidence, outcomes)])
    table = accuracy_table(rows, cfg.confidence)
    table += "\n" + gain_table(gains, "problems")
    table += f"\nOnly the {len(own)} problems where both solutions are the model's own:\n\n"
    table += accuracy_table(own_rows, cfg.confidence)
    (out / "table.md").write_text(table, encoding="utf-8")
    plot_accuracies(rows, out / "debate.png",
                    f"Judge accuracy on {len(items)} held-out problems (checker: {checker.name})", cfg.confidence)
    return finish(out, cfg, {
        "protocols": rows, "gains": gains, "problems": len(items), "protocols_on_model_solutions_only": own_rows,
        "checker": checker.name, "checker_errors": getattr(checker, "errors", 0), "debater_errors": debater.errors,
        **sampled, "checker_vs_truth": checker_agreement(evidence), "debaters": debater_diagnostics(evidence),
        "confidence": cfg.confidence,
    })


__all__ = ["DebateConfig", "run"]
