"""Scores from a PRM or ORM (a token classifier) for solutions given as lists of steps.

The scorer tokenizes exactly as the prm stage trained it (`tokenize_stepwise`: prompt, then each
step followed by the separator) and reads σ(logit) at each step's scored position: the model's
probability that the step is correct. An ORM is the same kind of model trained on one "step"
holding the whole solution, so it is asked about the joined solution and its last score is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignlab.data.errors import Source
from alignlab.data.stepwise import StepExample, pad_step_rows, tokenize_stepwise
from alignlab.losses.prm import aggregate_step_scores
from alignlab.models.load import load_tokenizer
from alignlab.models.value import load_critic

AGGREGATIONS = ("prod", "min", "last")


class StepScorer:
    """P(step correct) for every step of many solutions, in batches, without gradients."""

    def __init__(self, model, tokenizer, *, max_length: int = 512, separator: str = "\n", batch_size: int = 64):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.separator, self.batch_size = max_length, separator, batch_size

    @torch.no_grad()
    def step_probs(self, prompts: Sequence[str], solutions: Sequence[Sequence[str]]) -> list[list[float]]:
        """One list of step probabilities per (prompt, steps); steps past max_length get none.

        A solution without steps gets an empty list.
        """
        where = "<search>"
        index = [i for i, steps in enumerate(solutions) if steps]
        examples = [
            StepExample(prompts[i], list(solutions[i]), [True] * len(solutions[i]), Source(where, i + 1, "row"))
            for i in index
        ]
        rows, _ = tokenize_stepwise(examples, self.tokenizer, self.max_length, self.separator)
        device = next(self.model.parameters()).device
        out: list[list[float]] = [[] for _ in solutions]
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            batch = pad_step_rows(chunk, self.tokenizer.pad_token_id)
            logits = self.model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits[..., 0].float().sigmoid().cpu()
            for row, tokenized in zip(range(start, start + len(chunk)), chunk):
                out[index[row]] = logits[row - start, tokenized.step_positions].tolist()
        return out

    def solution_scores(
        self, prompts: Sequence[str], solutions: Sequence[Sequence[str]], how: str = "prod"
    ) -> list[float]:
        """One score per solution from its step probabilities (NaN when it has none)."""
        return [aggregate(probs, how) for probs in self.step_probs(prompts, solutions)]

    def outcome_scores(self, prompts: Sequence[str], solutions: Sequence[Sequence[str]]) -> list[float]:
        """An ORM's P(solution correct): its score after the steps joined by the separator, read
        as one step (how `outcome_record` writes ORM data); NaN for a solution without steps."""
        joined = [[self.separator.join(steps)] if steps else [] for steps in solutions]
        probs = self.step_probs(prompts, joined)
        return [p[-1] if p else float("nan") for p in probs]


def load_step_scorer(path: str, device=None, *, max_length: int = 512, separator: str = "\n",
                     batch_size: int = 64) -> StepScorer:
    """A StepScorer over a saved PRM or ORM directory (the prm stage's `model/`), with its own tokenizer."""
    tokenizer = load_tokenizer(path)
    model = load_critic(path, device=device, pad_token_id=tokenizer.pad_token_id)
    return StepScorer(model, tokenizer, max_length=max_length, separator=separator, batch_size=batch_size)


def aggregate(step_probs: Sequence[float], how: str = "prod") -> float:
    """prod / min over the steps (see `aggregate_step_scores`) or the last step's; NaN for none."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown step aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
    if not step_probs:
        return float("nan")
    return float(step_probs[-1]) if how == "last" else aggregate_step_scores(step_probs, how)


__all__ = ["AGGREGATIONS", "ProcessRewardSource", "StepScorer", "aggregate", "load_step_scorer", "split_lines"]


def split_lines(completion: str, separator: str = "\n") -> list[str]:
    """A completion's steps: its non-blank pieces between separators, stripped."""
    return [piece.strip() for piece in completion.split(separator) if piece.strip()]


class ProcessRewardSource:
    """A PRM as a reward source (e.g. to shape a verifier's 0/1 reward in GRPO): the aggregated
    step probabilities of the completion's lines. A completion without a step scores 0.

    The PRM reads text with its own tokenizer, so it need not share the policy's vocabulary.
    """

    name = "prm"

    def __init__(self, path: str, device=None, aggregate: str = "prod", separator: str = "\n",
                 max_length: int = 512, batch_size: int = 64):
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"unknown step aggregation {aggregate!r}; choose one of {', '.join(AGGREGATIONS)}")
        self.scorer = load_step_scorer(path, device, max_length=max_length, separator=separator, batch_size=batch_size)
        self.aggregate, self.separator, self.where = aggregate, separator, str(path)

    def score(self, batch) -> list[float]:
        steps = [split_lines(c, self.separator) for c in batch.completions]
        scores = self.scorer.solution_scores(list(batch.prompts), steps, self.aggregate)
        return [0.0 if not s else value for s, value in zip(steps, scores)]
