"""People's labels as a pairwise judge: each pair looked up, in either order, in a preference file."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from alignlab.data.examples import PreferenceExample, PromptLike
from alignlab.data.formats import load_preferences
from alignlab.feedback.judgement import Judgement, JudgeError, JudgeResult, ties_first, winner_from_probability


def pair_key(prompt: PromptLike, first: PromptLike, second: PromptLike) -> str:
    """One string per (prompt, first, second), text or conversations alike."""
    return json.dumps([prompt, first, second], ensure_ascii=False, sort_keys=True, separators=(",", ":"))


class PairLabels:
    """Preference labels looked up by content: P(a ≻ b) for a (prompt, a, b) given in either order.

    A pair labelled several times (by several people, or in both orders) gets the mean of its
    labels, each turned to P(a ≻ b) first.
    """

    def __init__(self, examples: Iterable[PreferenceExample], where: str = "labels"):
        self.where = where
        self.labels: dict[str, list[float]] = {}
        for ex in examples:
            self.labels.setdefault(pair_key(ex.prompt, ex.chosen, ex.rejected), []).append(ex.label)

    @classmethod
    def from_file(cls, path: str | Path) -> PairLabels:
        """Labels from a preference file (prompt/chosen/rejected, optional soft `label`). An empty
        response is a valid answer to judge (a tiny model often ends at once), so it is accepted."""
        return cls(load_preferences(path, allow_empty_responses=True), where=str(path))

    def __len__(self) -> int:
        return sum(len(v) for v in self.labels.values())

    def keys_of(self, prompt: PromptLike, a: PromptLike, b: PromptLike) -> tuple[str, str]:
        """The two keys a pair may be stored under: (a, b) and (b, a)."""
        return pair_key(prompt, a, b), pair_key(prompt, b, a)

    def lookup(self, prompt: PromptLike, a: PromptLike, b: PromptLike) -> tuple[float, int] | None:
        """(P(a ≻ b), number of labels) or None when the pair was never labelled."""
        forward, backward = self.keys_of(prompt, a, b)
        values = list(self.labels.get(forward, [])) + [1.0 - v for v in self.labels.get(backward, [])]
        if not values:
            return None
        return sum(values) / len(values), len(values)


class HumanLabelsJudge:
    """People's labels as a judge: each pair is looked up (in either order) in a preference file,
    e.g. the export of `alignlab label`. p_a is the label turned to P(a ≻ b) (1 or 0 for a hard
    label, 0.5 for a tie, the mean over several labels); a pair nobody labelled is a JudgeError."""

    name = "human"

    def __init__(self, path_or_labels: str | Path | PairLabels):
        self.labels = path_or_labels if isinstance(path_or_labels, PairLabels) else PairLabels.from_file(path_or_labels)

    def judge(self, prompts, responses_a, responses_b) -> list[JudgeResult]:
        results, todo = ties_first(prompts, responses_a, responses_b)
        for i in todo:
            found = self.labels.lookup(prompts[i], responses_a[i], responses_b[i])
            if found is None:
                results[i] = JudgeError(f"no human label for this pair in {self.labels.where}")
            else:
                p_a, count = found
                results[i] = Judgement(p_a, winner_from_probability(p_a), {"labels": count})
        return results  # type: ignore[return-value]
