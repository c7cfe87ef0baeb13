"""Hybrid labelling: trust the AI where it is sure, ask people where it is not, check it in between.

Input: AI soft labels, a preference file whose `label` is the AI's P(chosen ≻ rejected) (as the
RLAIF stage writes them). The AI's **confidence** in a pair is

    c = |P − 0.5| · 2        (0: a coin flip, 1: certain; P = 0.9 and P = 0.1 both give c = 0.8)

and two thresholds route every pair (`human_threshold` ≤ `ai_threshold`):

    c ≥ ai_threshold                     → "ai":    the AI label is accepted as it is
    c < human_threshold                  → "human": only a person's label will be used
    human_threshold ≤ c < ai_threshold   → "both":  a person labels it too; the AI label is kept

People's labels come back as a preference file (the labelling app's export), matched to the pairs
by content in either order (`PairLabels`). Then:

- "both" pairs measure **agreement**: do the AI and the person prefer the same response? (A tie on
  either side is not counted as agreement or disagreement.) The person's label is final, so every
  disagreement is resolved in the person's favour; a "both" pair nobody labelled keeps its AI label.
- "human" pairs use the person's label; one nobody labelled is left out (and counted).
- Agreement is also reported by confidence bucket over every pair a person labelled ("both" and
  "human"), which shows whether the AI's confidence means anything: agreement should rise with it.

The merged dataset is an ordinary preference file: `chosen` is the response the final label
prefers and `label` = P(chosen ≻ rejected) ≥ 0.5 (so hard-label losses read it right too);
`label_source` says "ai" or "human". A final label of exactly 0.5 (a tie) says nothing about which
response is better and is left out (counted). `margin` fields of the AI file are not carried over.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from alignlab.data.examples import PreferenceExample, PromptLike
from alignlab.feedback.human.labels_judge import PairLabels, pair_key
from alignlab.feedback.judgement import winner_from_probability

Route = Literal["ai", "both", "human"]
ROUTES: tuple[Route, ...] = ("ai", "both", "human")


def confidence(p: float) -> float:
    """The AI's confidence in a soft label P(chosen ≻ rejected): |P − 0.5| · 2, in [0, 1].

    Rounded to 12 decimals so thresholds act as written: in floating point (0.6 − 0.5)·2 is
    0.19999999999999996, which would put P = 0.6 below a threshold of 0.2.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a soft label must be in [0, 1], got {p}")
    return round(abs(p - 0.5) * 2, 12)


def check_thresholds(ai_threshold: float, human_threshold: float) -> None:
    if not 0.0 <= human_threshold <= ai_threshold <= 1.0:
        raise ValueError(
            f"need 0 <= human_threshold <= ai_threshold <= 1 (got human_threshold={human_threshold}, "
            f"ai_threshold={ai_threshold})"
        )


def route(c: float, ai_threshold: float, human_threshold: float) -> Route:
    """Where a pair of confidence `c` goes (see the module docstring)."""
    if c >= ai_threshold:
        return "ai"
    if c < human_threshold:
        return "human"
    return "both"


def pair_id(prompt: PromptLike, a: PromptLike, b: PromptLike) -> str:
    """A stable id for an unordered pair: the same whichever response is called chosen."""
    first, second = sorted([a, b], key=lambda r: json.dumps(r, ensure_ascii=False, sort_keys=True))
    return hashlib.sha256(pair_key(prompt, first, second).encode("utf-8")).hexdigest()[:16]


@dataclass
class RoutedPair:
    """One AI-labelled pair (as in the AI file), its confidence and its route."""

    id: str
    example: PreferenceExample
    confidence: float
    route: Route

    @property
    def ai_p(self) -> float:
        return self.example.label


def route_pairs(examples: Sequence[PreferenceExample], ai_threshold: float, human_threshold: float) -> list[RoutedPair]:
    check_thresholds(ai_threshold, human_threshold)
    routed = []
    for ex in examples:
        c = confidence(ex.label)
        routed.append(RoutedPair(pair_id(ex.prompt, ex.chosen, ex.rejected), ex, c, route(c, ai_threshold, human_threshold)))
    return routed


def route_counts(pairs: Sequence[RoutedPair]) -> dict[str, int]:
    return {r: sum(1 for p in pairs if p.route == r) for r in ROUTES}


def human_queue(pairs: Sequence[RoutedPair], seed: int = 0) -> list[dict]:
    """Items for the labelling app, {"id", "prompt", "responses": [a, b]}, for every "both" and
    "human" pair (each pair once). The two responses are shown in a seeded random order, so the
    AI's `chosen` is not always first (people, too, favour a position)."""
    rng = random.Random(seed)
    items, seen = [], set()
    for pair in pairs:
        if pair.route == "ai" or pair.id in seen:
            continue
        seen.add(pair.id)
        responses = [pair.example.chosen, pair.example.rejected]
        if rng.random() < 0.5:
            responses.reverse()
        items.append({"id": pair.id, "prompt": pair.example.prompt, "responses": responses})
    return items


def preference_record(example: PreferenceExample, p_chosen: float, **extra) -> dict:
    """A preference record with the preferred response as `chosen` and label = max(P, 1 − P)."""
    if p_chosen >= 0.5:
        chosen, rejected, label = example.chosen, example.rejected, p_chosen
    else:
        chosen, rejected, label = example.rejected, example.chosen, 1.0 - p_chosen
    return {"prompt": example.prompt, "chosen": chosen, "rejected": rejected, "label": label, **extra}


def ai_accepted_records(pairs: Sequence[RoutedPair]) -> list[dict]:
    """The "ai" pairs as preference records (ties, P = 0.5, left out)."""
    return [
        preference_record(p.example, p.ai_p, label_source="ai", confidence=p.confidence)
        for p in pairs if p.route == "ai" and p.ai_p != 0.5
    ]


@dataclass
class Comparison:
    """The AI's and a person's label of one pair; `agree` is None when either is a tie."""

    id: str
    route: Route
    confidence: float
    ai_p: float
    human_p: float

    @property
    def agree(self) -> bool | None:
        ai, human = winner_from_probability(self.ai_p), winner_from_probability(self.human_p)
        if "tie" in (ai, human):
            return None
        return ai == human


@dataclass
class MergeResult:
    records: list[dict]
    comparisons: list[Comparison]
    counts: dict[str, int] = field(default_factory=dict)


def merge(pairs: Sequence[RoutedPair], labels: PairLabels) -> MergeResult:
    """The final preference dataset: AI-accepted pairs plus people's labels (see the module doc)."""
    records: list[dict] = []
    comparisons: list[Comparison] = []
    counts = dict.fromkeys(
        ("ai_accepted", "both_labelled", "both_kept_ai", "human_labelled", "human_missing",
         "disagreements_resolved", "ties_dropped"), 0,
    )
    used_keys: set[str] = set()
    for pair in pairs:
        ex = pair.example
        if pair.route == "ai":
            final, source = pair.ai_p, "ai"
            counts["ai_accepted"] += 1
        else:
            found = labels.lookup(ex.prompt, ex.chosen, ex.rejected)
            if found is None:
                if pair.route == "human":
                    counts["human_missing"] += 1
                    continue
                final, source = pair.ai_p, "ai"
                counts["both_kept_ai"] += 1
            else:
                used_keys.update(labels.keys_of(ex.prompt, ex.chosen, ex.rejected))
                human_p, _ = found
                comparison = Comparison(pair.id, pair.route, pair.confidence, pair.ai_p, human_p)
                comparisons.append(comparison)
                counts[f"{pair.route}_labelled"] += 1
                counts["disagreements_resolved"] += pair.route == "both" and comparison.agree is False
                final, source = human_p, "human"
        if final == 0.5:
            counts["ties_dropped"] += 1
            continue
        extra = {"label_source": source, "confidence": pair.confidence, "route": pair.route}
        if source == "human":
            extra["ai_label"] = pair.ai_p if final >= 0.5 else 1.0 - pair.ai_p  # P_ai(chosen ≻ rejected) as written
        records.append(preference_record(ex, final, **extra))
    counts["merged"] = len(records)
    counts["unmatched_labels"] = sum(len(v) for k, v in labels.labels.items() if k not in used_keys)
    return MergeResult(records, comparisons, counts)


# --------------------------------------------------------------------------- agreement


def _rate(comparisons: Sequence[Comparison]) -> dict:
    decided = [c.agree for c in comparisons if c.agree is not None]
    agree = sum(decided)
    return {
        "n": len(comparisons), "compared": len(decided), "agree": agree,
        "rate": agree / len(decided) if decided else float("nan"),
    }


def agreement_report(comparisons: Sequence[Comparison], bucket_width: float = 0.1) -> dict:
    """Agreement of AI and people: on the "both" pairs (the check the routing is built for), on
    every pair a person labelled, and by AI-confidence bucket [k·w, (k+1)·w) over all of those."""
    if not 0.0 < bucket_width <= 1.0:
        raise ValueError(f"bucket_width must be in (0, 1], got {bucket_width}")
    n_buckets = max(1, round(1.0 / bucket_width))
    buckets: dict[int, list[Comparison]] = {}
    for c in comparisons:
        buckets.setdefault(min(int(c.confidence / bucket_width + 1e-9), n_buckets - 1), []).append(c)
    rows = []
    for k in sorted(buckets):
        members = buckets[k]
        low, high = k * bucket_width, 1.0 if k == n_buckets - 1 else (k + 1) * bucket_width
        rows.append({"low": round(low, 6), "high": round(high, 6), **_rate(members),
                     "routes": {r: sum(1 for m in members if m.route == r) for r in ROUTES if any(m.route == r for m in members)}})
    return {
        "both": _rate([c for c in comparisons if c.route == "both"]),
        "all_labelled": _rate(comparisons),
        "by_confidence": rows,
    }


def agreement_markdown(report: dict) -> str:
    """The agreement report as a small markdown table."""

    def cell(rate: float) -> str:
        return "–" if math.isnan(rate) else f"{rate:.1%}"  # NaN: nothing to compare

    lines = [
        "| pairs | labelled by a person | compared (no ties) | agree | agreement |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, key in (("both (AI + person)", "both"), ("all labelled", "all_labelled")):
        r = report[key]
        lines.append(f"| {name} | {r['n']} | {r['compared']} | {r['agree']} | {cell(r['rate'])} |")
    for row in report["by_confidence"]:
        closing = "]" if row["high"] == 1.0 else ")"
        lines.append(
            f"| confidence [{row['low']:.2f}, {row['high']:.2f}{closing} | {row['n']} | {row['compared']} | "
            f"{row['agree']} | {cell(row['rate'])} |"
        )
    return "\n".join(lines) + "\n"
