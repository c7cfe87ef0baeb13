"""Test-time search on a step-checkable task: which of N sampled solutions to trust, and PRM beam search.

On held-out problems the policy samples max(N) solutions per problem once; then for every N the
first N samples of each problem are reduced to one answer by

- majority vote over final answers (self-consistency);
- best-of-N by an outcome reward model (ORM: P(solution correct));
- best-of-N by a process reward model (PRM: step scores aggregated by product, minimum or last);
- a vote weighted by the ORM's or the PRM's score (each answer's total score wins);

and, separately, by step-level beam search guided by the PRM (width B, K sampled next steps per
beam, B·K = N). Accuracy is final-answer exact match by the task's verifier; "oracle" is the
share of problems with at least one right answer among the N (pass@N, the ceiling of every
selector). A sample without a final answer never wins a vote or a ranking. Each scorer's
within-problem AUC says how often it ranks a right answer above a wrong one of the same problem,
which is what picking among samples needs. Figures follow
Lightman et al. (2023), "Let's verify step by step", at toy scale.

Writes metrics.json (points per method and N), table.md, accuracy_vs_n.png and
data/samples.jsonl (every sample with its answer, correctness, scores and true step labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from alignlab.data.readers import write_jsonl
from alignlab.eval.metrics import finite_or_none, mean_and_se
from alignlab.eval.search_plot import accuracy_table, plot_accuracy_vs_n
from alignlab.feedback.rewards.step_scores import StepScorer, aggregate, load_step_scorer
from alignlab.models import resolve_max_length
from alignlab.rollout import SamplingSettings
from alignlab.search.beam import beam_search
from alignlab.search.select import pick_best
from alignlab.search.step_sampler import StepSampler, newline_token_ids
from alignlab.search.vote import majority_vote, weighted_vote
from alignlab.stages.blocks import EvaluationSeedSettings, MaxLengthSettings, ModelSettings, PromptLengthSettings
from alignlab.stages.common import finish
from alignlab.stages.online.common import PolicySamples, sample_policy
from alignlab.stages.data.step_labels import step_checkable
from alignlab.tasks import TaskSpec


class BeamSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expansions: int = Field(4, gt=0, description="K: next steps sampled per beam; width = N / K (N that K does not divide are skipped)")
    max_steps: int = Field(8, gt=0, description="a beam is cut after this many steps")
    aggregate: Literal["prod", "min", "last"] = Field("last", description="how a partial solution is scored")
    max_new_tokens: int = Field(24, gt=0, description="tokens per sampled step")


class SearchConfig(ModelSettings, PromptLengthSettings, MaxLengthSettings, EvaluationSeedSettings):
    prompts: str = Field(description="held-out problems")
    task: TaskSpec = Field(description="a step-checkable task: its verifier scores and labels solutions")
    n: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16], min_length=1)
    orm: str | None = Field(None, description="outcome reward model (the prm stage trained on outcomes)")
    prm: str | None = Field(None, description="process reward model (the prm stage trained on steps)")
    prm_aggregate: Literal["prod", "min", "last"] = "prod"
    beam: BeamSettings | None = Field(None, description="PRM beam search (needs prm); absent: not run")
    n_prompts: int | None = Field(None, gt=0)
    sampling: SamplingSettings = SamplingSettings()

    @field_validator("n")
    @classmethod
    def _positive_and_distinct(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values) or len(set(values)) != len(values):
            raise ValueError(f"N values must be distinct and at least 1, got {values}")
        return sorted(values)


def _scorer(path: str, device, max_length: int | None) -> StepScorer:
    return load_step_scorer(path, device, max_length=resolve_max_length(path, max_length))


def accuracy_point(n: int, picks: list[int | None], correct: list[list[bool]]) -> dict:
    """Accuracy over all problems of the picked samples (no pick counts as wrong)."""
    hits = [float(i is not None and correct[p][i]) for p, i in enumerate(picks)]
    mean, se = mean_and_se(hits)
    return {"n": n, "accuracy": mean, "accuracy_se": se, "no_pick": sum(i is None for i in picks)}


def within_problem_auc(scores: list[list[float]], correct: list[list[bool]]) -> float:
    """P(a right sample outscores a wrong one of the SAME problem), ties counting ½; NaN scores
    (no answer) are left out, NaN overall when no problem has both. This is what best-of-N needs
    from a scorer; a held-out accuracy can be high from telling easy problems from hard ones."""
    wins = pairs = 0.0
    for values, rights in zip(scores, correct):
        right = [v for v, c in zip(values, rights) if c and not math.isnan(v)]
        wrong = [v for v, c in zip(values, rights) if not c and not math.isnan(v)]
        for a in right:
            for b in wrong:
                wins += 1.0 if a > b else 0.5 if a == b else 0.0
        pairs += len(right) * len(wrong)
    return wins / pairs if pairs else math.nan


def _answered_scores(scores: list[float], answers: list[str | None]) -> list[float]:
    """A sample without a final answer is never picked: its score becomes NaN."""
    return [s if a is not None else math.nan for s, a in zip(scores, answers)]


@dataclass(frozen=True)
class _Verified:
    """Every sample (k per problem, problem after problem) with what the task's verifier says of it."""

    k: int
    prompts: list[str]
    texts: list[str]
    labelled: list[tuple[list[str], list[bool]]]  # (steps, true step labels) per sample
    answers: list[str | None]
    correct: list[bool]

    def per_prompt(self, values: list) -> list[list]:
        """Per-sample values grouped by problem: one list of k per problem."""
        return [list(values[i : i + self.k]) for i in range(0, len(values), self.k)]


def _verify(task, drawn: PolicySamples) -> _Verified:
    flat_prompts, texts = drawn.row_prompts, drawn.texts
    labelled = [task.label_solution(p, t) for p, t in zip(flat_prompts, texts)]
    answers = [task.final_answer(t) for t in texts]
    correct = [g == 1.0 for g in task.gold_reward(flat_prompts, texts)]
    return _Verified(k=drawn.k, prompts=drawn.prompts, texts=texts, labelled=labelled, answers=answers,
                     correct=correct)


def _scores(cfg: SearchConfig, device, flat_prompts: list[str],
            samples: _Verified) -> tuple[dict[str, list[float]], StepScorer | None]:
    """Each scorer's score of every sample (NaN without an answer), and the PRM, kept for beam search."""
    scores: dict[str, list[float]] = {}
    if cfg.orm:
        orm = _scorer(cfg.orm, device, cfg.max_length)
        scores["orm"] = _answered_scores(orm.outcome_scores(flat_prompts, [s for s, _ in samples.labelled]),
                                         samples.answers)
        del orm
    prm = _scorer(cfg.prm, device, cfg.max_length) if cfg.prm else None
    if prm is not None:
        step_probs = prm.step_probs(flat_prompts, [s for s, _ in samples.labelled])
        scores["prm"] = _answered_scores([aggregate(p, cfg.prm_aggregate) for p in step_probs], samples.answers)
    return scores, prm


def _selector_points(cfg: SearchConfig, samples: _Verified,
                     grouped: dict[str, list[list[float]]]) -> dict[str, list[dict]]:
    """Accuracy at every N of the votes, the best-of-N pickers and the oracle, in the table's order."""
    by_prompt_correct = samples.per_prompt(samples.correct)
    by_prompt_answers = samples.per_prompt(samples.answers)
    methods: dict[str, list[dict]] = {}
    methods["majority vote"] = [
        accuracy_point(n, [majority_vote(a[:n]) for a in by_prompt_answers], by_prompt_correct) for n in cfg.n
    ]
    for name, weights in grouped.items():
        label = f"{name.upper()} best-of-N" + (f" ({cfg.prm_aggregate})" if name == "prm" else "")
        methods[label] = [accuracy_point(n, pick_best(weights, n), by_prompt_correct) for n in cfg.n]
    for name, weights in grouped.items():
        methods[f"{name.upper()}-weighted vote"] = [
            accuracy_point(n, [weighted_vote(a[:n], w[:n]) for a, w in zip(by_prompt_answers, weights)],
                           by_prompt_correct)
            for n in cfg.n
        ]
    methods["oracle (pass@N)"] = [
        {"n": n, **dict(zip(("accuracy", "accuracy_se"), mean_and_se([float(any(c[:n])) for c in by_prompt_correct])))}
        for n in cfg.n
    ]
    return methods


def _sample_records(samples: _Verified, scores: dict[str, list[float]], beams_out: list[dict]) -> list[dict]:
    """samples.jsonl: per problem, every sample with its answer, correctness, scores and step labels."""
    k, records = samples.k, []
    for p, prompt in enumerate(samples.prompts):
        rows = range(p * k, (p + 1) * k)
        records.append({"prompt": prompt, "samples": [
            {"completion": samples.texts[i], "answer": samples.answers[i], "correct": samples.correct[i],
             "steps": samples.labelled[i][0], "step_labels": samples.labelled[i][1],
             **{name: finite_or_none(v[i]) for name, v in scores.items()}}
            for i in rows
        ], **({"beam": beams_out[p]} if beams_out else {})})
    return records


def _summary(methods: dict[str, list[dict]], samples: _Verified, grouped: dict[str, list[list[float]]]) -> dict:
    """The figures of metrics.json."""
    k, correct, answers = samples.k, samples.correct, samples.answers
    largest = {name: points[-1]["accuracy"] for name, points in methods.items() if points and points[-1]["n"] == k}
    by_prompt_correct = samples.per_prompt(correct)
    return {
        "methods": methods,
        "prompts": len(samples.prompts),
        "samples_per_prompt": k,
        "sample_accuracy": sum(correct) / max(len(correct), 1),
        "answered_rate": sum(a is not None for a in answers) / max(len(answers), 1),
        "accuracy_at_largest_n": largest,
        "within_problem_auc": {name: within_problem_auc(w, by_prompt_correct) for name, w in grouped.items()},
    }


def run(cfg: SearchConfig, out: Path) -> dict:
    task = step_checkable(cfg.task)
    if cfg.beam is not None and cfg.prm is None:
        raise ValueError("beam search is guided by the PRM: give `prm` or drop `beam`")
    drawn = sample_policy(cfg.model, cfg.prompts, max(cfg.n), cfg.sampling, max_prompt_length=cfg.max_prompt_length,
                          n_prompts=cfg.n_prompts, seed=cfg.seed)
    samples = _verify(task, drawn)
    scores, prm = _scores(cfg, drawn.device, drawn.row_prompts, samples)
    grouped = {name: samples.per_prompt(values) for name, values in scores.items()}
    methods = _selector_points(cfg, samples, grouped)

    beams_out = []
    if cfg.beam is not None and prm is not None:
        beam_points, beams_out = _beam_points(cfg, task, policy=drawn.policy, tokenizer=drawn.tokenizer,
                                              prompts=drawn.prompts, prompt_ids=drawn.prompt_ids, prm=prm)
        methods[f"PRM beam search ({cfg.beam.aggregate}, K={cfg.beam.expansions})"] = beam_points

    write_jsonl(out / "data" / "samples.jsonl", _sample_records(samples, scores, beams_out))
    (out / "table.md").write_text(accuracy_table(methods), encoding="utf-8")
    plot_accuracy_vs_n(methods, out / "accuracy_vs_n.png",
                       f"Search on held-out problems ({len(samples.prompts)} problems)")
    return finish(out, cfg, _summary(methods, samples, grouped))


def _beam_points(cfg: SearchConfig, task, policy, tokenizer, prompts, prompt_ids, prm: StepScorer):
    """Accuracy of PRM beam search at every N that K divides (width N / K), and each prompt's beams."""
    beam = cfg.beam
    settings = cfg.sampling.model_copy(update={"max_new_tokens": beam.max_new_tokens})
    points, found = [], [{} for _ in prompts]
    stop_ids = newline_token_ids(tokenizer)
    for n in cfg.n:
        if n % beam.expansions:
            continue
        sampler = StepSampler(policy, tokenizer, prompt_ids, settings, seed=cfg.seed + n, is_final=task.is_final_step,
                              stop_ids=stop_ids)

        def score(prefixes):
            probs = prm.step_probs([prompts[p] for p, _ in prefixes], [list(steps) for _, steps in prefixes])
            return [aggregate(x, beam.aggregate) for x in probs]

        result = beam_search(len(prompts), sampler, score, beam_width=n // beam.expansions,
                             expansions=beam.expansions, max_steps=beam.max_steps)
        solutions = ["\n".join(b.steps) for b in result.best]
        hits = task.gold_reward(list(prompts), solutions)
        mean, se = mean_and_se(hits)
        points.append({"n": n, "accuracy": mean, "accuracy_se": se, "width": n // beam.expansions,
                       "sampled_steps": result.sampled_steps, "rounds": result.rounds})
        for p, (solution, hit) in enumerate(zip(solutions, hits)):
            found[p][str(n)] = {"solution": solution, "correct": hit == 1.0, "score": finite_or_none(result.best[p].score)}
    return points, found


__all__ = ["BeamSettings", "SearchConfig", "accuracy_point", "run", "within_problem_auc"]
