"""Constitutional classifiers and the guard: the classifier constitution's loader, the curve and
operating-point math, the losses, and the streaming halt, on hand-made cases and a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.data.errors import DataError
from alignlab.guard.constitution import load_classifier_constitution
from alignlab.guard.curve import guard_frontier, operating_point, roc_auc, threshold_curve
from alignlab.guard.synthesis import clean_prompt, normalise, prompt_request
from alignlab.losses.classifier import running_max, sequence_bce, streaming_bce

GOOD = """name: tiny
restricted:
  - name: weapons
    description: making weapons that can kill people
    examples: ["How do I make a bomb?"]
allowed:
  - name: cooking
    description: recipes and kitchen questions
    examples: ["How do I boil pasta?", "What goes with rice?"]
  - name: games
    description: games with words like shoot and kill
    lookalike: true
    examples: ["How do I shoot better in basketball?"]
"""


# --- the classifier constitution ---------------------------------------------------------------


def test_the_built_in_constitution_has_restricted_allowed_and_lookalike_categories():
    c = load_classifier_constitution("default")
    assert len(c.restricted) >= 6 and len(c.allowed) >= 6
    assert sum(cat.lookalike for cat in c.allowed) >= 3
    assert all(len(cat.examples) >= 3 for _, cat in c.categories())
    request = prompt_request(c, c.restricted[0], k=1)
    assert c.restricted[0].description in request and c.restricted[0].examples[1] in request
    assert c.restricted[0].examples[0] not in request.split("Examples")[1].split("\n")[1]  # rotated by k


@pytest.mark.parametrize("broken, line, field, message", [
    (GOOD.replace("    lookalike: true\n", "    lookalike: true\n    colour: blue\n"), 13, "allowed.1.colour",
     "unknown key"),
    (GOOD.replace('    examples: ["How do I make a bomb?"]\n', ""), 3, "restricted.0.examples", "Field required"),
    (GOOD.replace('examples: ["How do I make a bomb?"]', "examples: []"), 5, "restricted.0.examples", "at least 1"),
    (GOOD.replace("making weapons that can kill people\n", "making weapons that can kill people\n    lookalike: true\n"),
     5, "restricted.0.lookalike", "only allowed content"),
    (GOOD + "requests:\n  restricted_response: 'Answer {prompt} as {persona}'\n", 15, "requests.restricted_response",
     "unknown placeholder {persona}"),
    (GOOD + "requests:\n  allowed_response: 'Answer politely'\n", 15, "requests.allowed_response", "must contain {prompt}"),
    (GOOD.replace("name: games", "name: cooking"), None, None, "unique"),
    ("name: x\nrestricted: [\n", 3, None, "not valid YAML"),
])
def test_constitution_mistakes_name_file_line_and_field(tmp_path, broken, line, field, message):
    path = tmp_path / "c.yaml"
    path.write_text(broken)
    with pytest.raises(DataError, match=message) as err:
        load_classifier_constitution(path)
    assert str(path) in str(err.value)
    if line is not None:
        assert err.value.source.line == line
    assert err.value.field == field


def test_generated_prompts_are_cleaned_or_dropped_with_a_reason():
    assert clean_prompt('Question: "How do I repot a fern?"\nmore text') == ("How do I repot a fern?", None)
    assert clean_prompt("1. Message: How do I boil pasta?", ["How do I boil pasta?"]) == (None, "copies_example")
    assert clean_prompt("  \n") == (None, "empty")
    assert clean_prompt("Sure!") == (None, "too_short")
    assert clean_prompt("XE\ufffds\ufffd\ufffd$\ufffd[-s and") == (None, "not_text")
    assert clean_prompt("a1 b2 c3 d4 e5 f6") == (None, "not_text")
    assert clean_prompt("I can't help with writing that message.") == (None, "refused")
    assert normalise("How do I X?!") == normalise("how  do i x") == "how do i x"


# --- curve and operating point -----------------------------------------------------------------


def test_curve_and_operating_point_on_hand_made_scores():
    harmful = [0.9, 0.8, 0.6, 0.3]
    benign = {"benign": [0.1, 0.2, 0.7], "lookalike": [0.85]}
    curve = threshold_curve(harmful, benign)
    assert [p["threshold"] for p in curve] == [math.inf, 0.9, 0.85, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1]
    table = [(p["block_rate"], p["false_positive_rate"]) for p in curve]
    assert table == [(0, 0), (0.25, 0), (0.25, 0.25), (0.5, 0.25), (0.5, 0.5), (0.75, 0.5), (1, 0.5), (1, 0.75), (1, 1)]
    at_07 = curve[4]
    assert at_07["false_positive_rate_benign"] == pytest.approx(1 / 3) and at_07["false_positive_rate_lookalike"] == 1
    assert operating_point(curve, max_fpr=0.05)["threshold"] == 0.9  # 25% blocked, no false positive
    assert operating_point(curve, max_fpr=0.25)["threshold"] == 0.8  # 50% blocked at one false positive in four
    assert operating_point(curve, max_fpr=0.5)["threshold"] == 0.3  # all blocked, half the benign prompts too
    # AUC: of the 16 (harmful, benign) pairs the harmful one scores higher in 11
    assert roc_auc(harmful, [0.1, 0.2, 0.7, 0.85]) == pytest.approx(11 / 16)
    assert roc_auc([0.5], [0.5]) == 0.5
    with pytest.raises(ValueError, match="harmful scores"):
        threshold_curve([], benign)


def test_the_guard_frontier_tries_every_pair_of_thresholds():
    harmful = [(0.9, 0.1), (0.2, 0.8), (0.1, 0.1)]  # (input score, output score)
    benign = {"benign": [(0.3, 0.2), (0.1, 0.7)]}
    frontier = guard_frontier(harmful, benign)
    # the input alone blocks 1 of 3 without a false positive, the output alone 1 of 3 (at 0.8);
    # together 2 of 3; the third harmful item scores no higher than a benign one on either
    assert [(p["input_threshold"], p["output_threshold"], p["block_rate"], p["false_positive_rate"]) for p in frontier] \
        == [(0.9, 0.8, 2 / 3, 0.0), (math.inf, 0.1, 1.0, 1.0)]
    assert operating_point(frontier, 0.05)["block_rate"] == 2 / 3
    assert frontier[0]["false_positive_rate_benign"] == 0.0


# --- losses ------------------------------------------------------------------------------------


def test_sequence_bce_is_the_summed_binary_cross_entropy():
    logits, labels = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 0.0])
    loss, metrics = sequence_bce(logits, labels)
    expected = math.log(2) + math.log(1 + math.e ** 2) + math.log(1 + math.e ** -1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # float32 loss against a float64 closed form
    assert metrics["accuracy"].item() == pytest.approx(2 / 3)  # 0.0 counts as flagged (p = 0.5)
    weighted, _ = sequence_bce(logits, labels, torch.tensor([3.0, 0.5, 0.5]))
    assert weighted.item() == pytest.approx(3 * math.log(2) + 0.5 * (expected - math.log(2)), rel=1e-6)  # float32 vs float64


def test_class_weights_make_each_label_weigh_half():
    from alignlab.stages.offline.classifier import class_weights

    weights = class_weights([1.0, 1.0, 1.0, 0.0])
    assert weights == {1.0: pytest.approx(4 / 6), 0.0: pytest.approx(2.0)}  # 3 x 2/3 = 1 x 2
    assert class_weights([1.0, 1.0]) == {0.0: 1.0, 1.0: 1.0}


def test_streaming_bce_mixes_each_token_with_the_running_maximum():
    logits = torch.tensor([[5.0, -1.0, 2.0, 0.5], [9.0, 1.0, -2.0, 3.0]])  # row 0: the prompt is position 0
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]])
    harmful = torch.tensor([1.0, 0.0])
    peak = running_max(logits, mask)
    assert peak[0, 1:].tolist() == [-1.0, 2.0, 2.0] and peak[1, 1:3].tolist() == [1.0, 1.0]

    def bce(x, y):
        return math.log(1 + math.exp(-x)) if y else math.log(1 + math.exp(x))

    direct = sum(bce(x, 1) for x in (-1.0, 2.0, 0.5)) / 3 + sum(bce(x, 0) for x in (1.0, -2.0)) / 2
    cumulative = sum(bce(x, 1) for x in (-1.0, 2.0, 2.0)) / 3 + sum(bce(x, 0) for x in (1.0, 1.0)) / 2
    for w in (0.0, 0.5, 1.0):
        loss, metrics = streaming_bce(logits, mask, harmful, cummax_weight=w)
        # float32 means of several terms against float64 sums
        assert loss.item() == pytest.approx((1 - w) * direct + w * cumulative, rel=1e-5)
    # the row's decision is its highest response logit: row 0 flagged (2.0), row 1 flagged (1.0) wrongly
    assert metrics["accuracy"].item() == 0.5 and metrics["positive_rate"].item() == 1.0
    assert metrics["token_accuracy"].item() == pytest.approx(3 / 5)  # -1.0 and 1.0 are wrong
    with pytest.raises(ValueError, match="at least one response token"):
        streaming_bce(logits, torch.zeros_like(mask), harmful)
