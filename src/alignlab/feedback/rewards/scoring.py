"""Scoring with faults: a batch's rewards with the samples that cannot be scored left out and explained."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from alignlab.feedback.rewards.sources import (
    RewardError,
    RewardOutputError,
    RewardSource,
    ScoringBatch,
    WeightedSum,
    as_score_list,
    check_count,
)

log = logging.getLogger(__name__)

PROMPT_PREVIEW_CHARS = 60

@dataclass
class ScoreResult:
    """Scores of one batch, with the samples that could not be scored marked and explained.

    `scores` [N] float32 is NaN where `valid` [N] is False. `terms` holds each term's raw values
    by name (NaN where that term failed): a WeightedSum's terms, or the one source's values.
    `problems` has one line per invalid sample and term, naming the sample, its prompt and the cause.
    """

    scores: torch.Tensor
    valid: torch.Tensor
    terms: dict[str, list[float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def num_invalid(self) -> int:
        return int((~self.valid).sum())

    def spread(self, rows: list[int], n: int) -> "ScoreResult":
        """This result (of the samples `rows` of a batch of n) laid out over all n: the samples it
        did not score are invalid, NaN, with no problem line (the caller left them out on purpose);
        its problem lines keep numbering the samples it scored (each names its prompt)."""
        if len(rows) == n:
            return self
        index = torch.tensor(rows, dtype=torch.long)
        scores = torch.full((n,), float("nan")).index_copy(0, index, self.scores)
        valid = torch.zeros(n, dtype=torch.bool).index_copy(0, index, self.valid)
        terms = {}
        for name, values in self.terms.items():
            spread = [math.nan] * n
            for i, value in zip(rows, values):
                spread[i] = value
            terms[name] = spread
        return ScoreResult(scores, valid, terms, self.problems)

    def override(self, rows: torch.Tensor, value: float | None) -> None:
        """Set the score of the samples where `rows` [N] is True to `value` (valid, whatever their
        source said: the value stands in for it). Nothing to set: no change."""
        if value is None or not rows.any():
            return
        self.scores[rows] = value
        self.valid |= rows


def score_safely(
    source: RewardSource, batch: ScoringBatch, on_error: Literal["drop", "stop"] = "drop"
) -> ScoreResult:
    """Score `batch`, keeping every sample that can be scored.

    - A source that returns the wrong number of scores (or not a list) raises RewardOutputError:
      that is a bug in the source, never a sample to skip.
    - A sample whose score is NaN, infinite or not a number is invalid.
    - A source that raises on the batch is retried sample by sample, so only the samples that
      raise alone are invalid (one odd completion does not cost the batch).
    - on_error="drop": invalid samples get NaN, valid=False and a line in `problems`.
      on_error="stop": the first invalid sample raises RewardError naming it and the cause.
    - For a WeightedSum, each term is scored this way and a sample invalid in any term is invalid.
    """
    if on_error not in ("drop", "stop"):
        raise ValueError(f"on_error must be 'drop' or 'stop', got {on_error!r}")
    if isinstance(source, WeightedSum):
        return _score_weighted(source, batch, on_error)
    values, problems = _score_values(source, batch, on_error)
    scores = torch.tensor(values, dtype=torch.float32)
    return ScoreResult(scores=scores, valid=~torch.isnan(scores), terms={source.name: values}, problems=problems)


def _score_weighted(source: WeightedSum, batch: ScoringBatch, on_error: str) -> ScoreResult:
    total = torch.zeros(len(batch), dtype=torch.float32)
    valid = torch.ones(len(batch), dtype=torch.bool)
    terms: dict[str, list[float]] = {}
    problems: list[str] = []
    for term_name, term, weight in source.terms:
        part = score_safely(term, batch, on_error)
        valid &= part.valid
        total += weight * torch.nan_to_num(part.scores)
        terms[term_name] = part.scores.tolist()
        if isinstance(term, WeightedSum):  # nested sums: keep their own terms, under the outer name
            terms.update({f"{term_name}/{k}": v for k, v in part.terms.items()})
        problems.extend(part.problems)
    total[~valid] = float("nan")
    return ScoreResult(scores=total, valid=valid, terms=terms, problems=problems)


def _score_values(source: RewardSource, batch: ScoringBatch, on_error: str) -> tuple[list[float], list[str]]:
    """The source's scores as floats (NaN where invalid) and one problem line per invalid sample."""
    failures: dict[int, str] = {}
    try:
        raw = as_score_list(source.score(batch), source.name)
    except RewardOutputError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of a user's scorer is narrowed down below
        raw, failures = _score_one_by_one(source, batch, on_error, batch_error=err)
    check_count(source.name, raw, len(batch))

    values: list[float] = []
    problems: list[str] = []
    for i, value in enumerate(raw):
        cause = failures.get(i)
        number = float("nan")
        if cause is None:
            try:
                number = float(value)
            except (TypeError, ValueError):
                cause = f"score {value!r} is not a number"
            else:
                if not math.isfinite(number):
                    cause, number = f"score {number} is not finite", float("nan")
        if cause is not None:
            problem = _problem(batch, i, source.name, cause)
            if on_error == "stop":
                raise RewardError(problem, index=i)
            problems.append(problem)
        values.append(number)
    return values, problems


def _score_one_by_one(
    source: RewardSource, batch: ScoringBatch, on_error: str, batch_error: Exception
) -> tuple[list, dict[int, str]]:
    """Score each sample alone after the batch raised; (values, {index: cause} of those that raise)."""
    values: list = []
    failures: dict[int, str] = {}
    for i in range(len(batch)):
        try:
            one = as_score_list(source.score(batch.select([i])), source.name)
        except RewardOutputError:
            raise
        except Exception as err:
            cause = f"{type(err).__name__}: {err}"
            if on_error == "stop":
                raise RewardError(_problem(batch, i, source.name, cause), index=i) from err
            failures[i] = cause
            values.append(float("nan"))
            continue
        check_count(source.name, one, 1)
        values.append(one[0])
    if not failures:
        # Only the whole batch fails (memory, a batch-size limit): the per-sample scores stand.
        log.warning(
            "%s raised on a batch of %d but on no sample alone; scored one by one (%s: %s)",
            source.name, len(batch), type(batch_error).__name__, batch_error,
        )
    return values, failures


def _problem(batch: ScoringBatch, index: int, source_name: str, cause: str) -> str:
    prompt = batch.prompts[index]
    if len(prompt) > PROMPT_PREVIEW_CHARS:
        prompt = prompt[: PROMPT_PREVIEW_CHARS - 1] + "…"
    return f"sample {index} (prompt {prompt!r}): {source_name}: {cause}"
