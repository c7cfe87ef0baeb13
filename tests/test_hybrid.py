"""Hybrid human/AI labelling: routing by AI confidence, the human queue, agreement, the merge.

Every count and rate below is worked out by hand from the soft labels in `AI_LABELS`.
"""

from __future__ import annotations

import json

import pytest

from alignlab.data.formats import load_preferences
from alignlab.data.readers import write_jsonl
from alignlab.feedback.human.hybrid import (
    agreement_report,
    confidence,
    human_queue,
    merge,
    pair_id,
    route_pairs,
)
from alignlab.feedback.human.labels_judge import PairLabels
from alignlab.stages.feedback.hybrid_labels import AwaitingHumanLabels, HybridLabelsConfig, run

# (prompt, chosen, rejected, P_ai(chosen ≻ rejected)) and, with ai_threshold 0.6 and
# human_threshold 0.2, confidence |P − 0.5|·2 and route:
AI_LABELS = [
    ("p0", "c0", "r0", 0.95),  # 0.9   ai
    ("p1", "c1", "r1", 0.05),  # 0.9   ai (the AI prefers r1)
    ("p2", "c2", "r2", 0.80),  # 0.6   ai (exactly at the threshold)
    ("p3", "c3", "r3", 0.30),  # 0.4   both
    ("p4", "c4", "r4", 0.62),  # 0.24  both
    ("p5", "c5", "r5", 0.75),  # 0.5   both
    ("p6", "c6", "r6", 0.60),  # 0.2   both (exactly at the threshold)
    ("p7", "c7", "r7", 0.55),  # 0.1   human
    ("p8", "c8", "r8", 0.50),  # 0.0   human
]
THRESHOLDS = {"ai_threshold": 0.6, "human_threshold": 0.2}


def write_ai_labels(path):
    write_jsonl(path, [{"prompt": p, "chosen": c, "rejected": r, "label": label} for p, c, r, label in AI_LABELS])
    return path


def human_labels(path):
    """People's labels (the labelling app's export): p3 agrees with the AI (r3 better), p4 disagrees
    (r4 better, stored in the reversed order), p5 is a human tie, p6 nobody labelled, p7 labelled
    (c7 better), p8 nobody labelled; plus one label for a pair that was never queued."""
    write_jsonl(path, [
        {"prompt": "p3", "chosen": "r3", "rejected": "c3"},
        {"prompt": "p4", "chosen": "r4", "rejected": "c4"},
        {"prompt": "p5", "chosen": "c5", "rejected": "r5", "label": 0.5},
        {"prompt": "p7", "chosen": "c7", "rejected": "r7", "label": 0.9},
        {"prompt": "elsewhere", "chosen": "a", "rejected": "b"},
    ])
    return path


def test_confidence_definition():
    assert confidence(0.9) == confidence(0.1) == 0.8
    assert confidence(0.5) == 0.0 and confidence(1.0) == 1.0
    assert confidence(0.6) == 0.2  # not 0.19999999999999996
    with pytest.raises(ValueError):
        confidence(1.2)


def test_routing_counts_per_bucket(tmp_path):
    pairs = route_pairs(load_preferences(write_ai_labels(tmp_path / "ai.jsonl")), **THRESHOLDS)
    assert [p.route for p in pairs] == ["ai"] * 3 + ["both"] * 4 + ["human"] * 2
    queue = human_queue(pairs, seed=0)
    assert [q["id"] for q in queue] == [p.id for p in pairs[3:]]
    for q, (prompt, chosen, rejected, _) in zip(queue, AI_LABELS[3:]):
        assert q["prompt"] == prompt and sorted(q["responses"]) == sorted([chosen, rejected])
    chosen_first = [q["responses"][0] == AI_LABELS[3 + i][1] for i, q in enumerate(queue)]
    assert True in chosen_first and False in chosen_first  # the AI's choice is not always shown first
    assert pair_id("p", "a", "b") == pair_id("p", "b", "a") != pair_id("q", "a", "b")
    with pytest.raises(ValueError):
        route_pairs([], ai_threshold=0.2, human_threshold=0.6)


def test_the_labelling_app_reads_the_queue(tmp_path):
    from alignlab.feedback.human.labelling.items import load_label_items

    pairs = route_pairs(load_preferences(write_ai_labels(tmp_path / "ai.jsonl")), **THRESHOLDS)
    write_jsonl(tmp_path / "queue.jsonl", human_queue(pairs))
    items = load_label_items(tmp_path / "queue.jsonl")
    assert [item.id for item in items] == [p.id for p in pairs[3:]] and all(i.kind == "pair" for i in items)


def test_merge_agreement_and_resolution_by_hand(tmp_path):
    pairs = route_pairs(load_preferences(write_ai_labels(tmp_path / "ai.jsonl")), **THRESHOLDS)
    result = merge(pairs, PairLabels.from_file(human_labels(tmp_path / "human.jsonl")))
    assert result.counts == {
        "ai_accepted": 3, "both_labelled": 3, "both_kept_ai": 1, "human_labelled": 1, "human_missing": 1,
        "disagreements_resolved": 1, "ties_dropped": 1, "merged": 7, "unmatched_labels": 1,
    }
    report = agreement_report(result.comparisons)
    # both: p3 agrees, p4 disagrees, p5 is a human tie (not compared) -> 1 of 2
    assert report["both"] == {"n": 3, "compared": 2, "agree": 1, "rate": 0.5}
    # all labelled adds p7 (AI 0.55 for c7, person 0.9 for c7: agree) -> 2 of 3
    assert report["all_labelled"] == {"n": 4, "compared": 3, "agree": 2, "rate": pytest.approx(2 / 3)}
    # buckets of width 0.1: p7 c=0.1, p4 c=0.24, p3 c=0.4, p5 c=0.5
    rows = {(r["low"], r["high"]): (r["compared"], r["agree"]) for r in report["by_confidence"]}
    assert rows == {(0.1, 0.2): (1, 1), (0.2, 0.3): (1, 0), (0.4, 0.5): (1, 1), (0.5, 0.6): (0, 0)}

    merged = {r["prompt"]: r for r in result.records}
    assert sorted(merged) == ["p0", "p1", "p2", "p3", "p4", "p6", "p7"]  # p5 tie and p8 unlabelled left out
    # the preferred response is `chosen`, label = P(chosen ≻ rejected) >= 0.5
    assert (merged["p1"]["chosen"], merged["p1"]["label"], merged["p1"]["label_source"]) == ("r1", pytest.approx(0.95), "ai")
    assert (merged["p4"]["chosen"], merged["p4"]["label"], merged["p4"]["label_source"]) == ("r4", 1.0, "human")
    assert merged["p4"]["ai_label"] == pytest.approx(0.38)  # the AI's P(r4 ≻ c4): it was overruled
    assert (merged["p6"]["chosen"], merged["p6"]["label"], merged["p6"]["label_source"]) == ("c6", 0.6, "ai")
    assert (merged["p7"]["chosen"], merged["p7"]["label"]) == ("c7", 0.9)


def test_stage_writes_the_queue_then_merges(tmp_path):
    ai = write_ai_labels(tmp_path / "ai.jsonl")
    out = tmp_path / "hybrid"
    with pytest.raises(AwaitingHumanLabels, match=r"6 items await human labels: run `alignlab label serve \S*human_queue.jsonl --db "):
        run(HybridLabelsConfig(ai_labels=str(ai), **THRESHOLDS), out)
    assert not (out / "done.json").exists()  # a recipe resumes this stage on the next run
    assert json.loads((out / "metrics.json").read_text())["status"] == "awaiting_human_labels"
    queue = [json.loads(x) for x in (out / "data" / "human_queue.jsonl").read_text().splitlines()]
    assert len(queue) == 6 and set(queue[0]) == {"id", "prompt", "responses"}
    assert len(load_preferences(out / "data" / "ai_accepted.jsonl")) == 3

    metrics = run(HybridLabelsConfig(ai_labels=str(ai), human_labels=str(human_labels(tmp_path / "h.jsonl")),
                                     **THRESHOLDS), out)
    assert metrics["status"] == "merged" and metrics["merged"] == 7 and metrics["routes"] == {"ai": 3, "both": 4, "human": 2}
    assert metrics["agreement"]["both"]["rate"] == 0.5
    merged = load_preferences(out / "data" / "merged.jsonl")
    assert len(merged) == 7 and all(e.label >= 0.5 for e in merged)
    table = (out / "agreement.md").read_text()
    assert "| both (AI + person) | 3 | 2 | 1 | 50.0% |" in table and "confidence [0.10, 0.20)" in table
    assert (out / "done.json").exists()


def test_stage_refuses_labels_that_match_nothing_in_the_queue(tmp_path):
    ai = write_ai_labels(tmp_path / "ai.jsonl")
    other = tmp_path / "other.jsonl"
    write_jsonl(other, [{"prompt": "elsewhere", "chosen": "a", "rejected": "b"}])
    with pytest.raises(ValueError, match="none of the 6 queued pairs"):
        run(HybridLabelsConfig(ai_labels=str(ai), human_labels=str(other), **THRESHOLDS), tmp_path / "out")


def test_stage_finishes_at_once_when_the_ai_is_trusted_everywhere(tmp_path):
    ai = write_ai_labels(tmp_path / "ai.jsonl")
    metrics = run(HybridLabelsConfig(ai_labels=str(ai), ai_threshold=0.0, human_threshold=0.0), tmp_path / "out")
    assert metrics["queued"] == 0 and metrics["merged"] == 8  # p8 (P = 0.5) says nothing: dropped
    assert len(load_preferences(tmp_path / "out" / "data" / "merged.jsonl")) == 8


def test_config_checks_the_threshold_order():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="human_threshold"):
        HybridLabelsConfig(ai_labels="x.jsonl", ai_threshold=0.3, human_threshold=0.5)
