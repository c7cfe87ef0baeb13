"""Step-labelled data for PRMs (load, tokenize, pad) and the PRM loss."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignlab.data.errors import DataError, Source
from alignlab.data.stepwise import (
    StepExample,
    StepRow,
    load_stepwise,
    pad_step_rows,
    tokenize_stepwise,
)
from alignlab.losses.prm import aggregate_step_scores, prm_loss

GOOD = {"prompt": "what is two plus two?", "completions": ["two plus two", "is four."], "labels": [True, True]}


def _write(tmp_path, records, name="steps.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


# --- loading ----------------------------------------------------------------------------------


def test_load_stepwise_reads_records_and_accepts_int_labels(tmp_path):
    path = _write(tmp_path, [GOOD, {**GOOD, "labels": [1, 0]}])
    first, second = load_stepwise(path)
    assert first.prompt == GOOD["prompt"] and first.completions == GOOD["completions"]
    assert first.labels == [True, True] and first.source == Source(str(path), 1, "line")
    assert second.labels == [True, False] and all(type(x) is bool for x in second.labels)


@pytest.mark.parametrize(
    "bad, field, message",
    [
        ({"completions": ["a"], "labels": [True]}, "prompt", "missing field"),
        ({"prompt": "  ", "completions": ["a"], "labels": [True]}, "prompt", "empty prompt"),
        ({"prompt": ["x"], "completions": ["a"], "labels": [True]}, "prompt", "must be a string"),
        ({"prompt": "p", "labels": [True]}, "completions", "missing field"),
        ({"prompt": "p", "completions": [], "labels": []}, "completions", "non-empty list"),
        ({"prompt": "p", "completions": "a step", "labels": [True]}, "completions", "non-empty list"),
        ({"prompt": "p", "completions": ["a", ""], "labels": [True, True]}, "completions", r"completions\[1\]: empty step"),
        ({"prompt": "p", "completions": ["a", 3], "labels": [True, True]}, "completions", r"completions\[1\]: must be a string"),
        ({"prompt": "p", "completions": ["a"]}, "labels", "missing field"),
        ({"prompt": "p", "completions": ["a"], "labels": True}, "labels", "must be a list of booleans"),
        ({"prompt": "p", "completions": ["a", "b"], "labels": [True, "yes"]}, "labels", r"labels\[1\]"),
        ({"prompt": "p", "completions": ["a", "b"], "labels": [True, 2]}, "labels", r"labels\[1\]"),
        ({"prompt": "p", "completions": ["a", "b"], "labels": [True, 0.5]}, "labels", r"labels\[1\]"),
        ({"prompt": "p", "completions": ["a", "b"], "labels": [True]}, "labels", "1 labels for 2 steps"),
    ],
)
def test_load_stepwise_errors_name_file_line_and_field(tmp_path, bad, field, message):
    path = _write(tmp_path, [GOOD, GOOD, bad])
    with pytest.raises(DataError, match=rf"steps.jsonl: line 3: field '{field}': .*{message}") as info:
        load_stepwise(path)
    assert info.value.field == field and info.value.source.line == 3
    assert info.value.source.path == str(path)


# --- tokenization -----------------------------------------------------------------------------


def _example(completions, labels, line=1):
    return StepExample("user: what is two plus two?", completions, labels, Source("mem.jsonl", line))


def test_step_positions_end_each_step_with_its_separator(tiny_tokenizer):
    steps = [" assistant: two plus two", " is four.", " hello world"]
    labels = [True, False, True]
    rows, stats = tokenize_stepwise([_example(steps, labels)], tiny_tokenizer, max_length=512)
    (row,) = rows
    assert row.input_ids[0] == tiny_tokenizer.bos_token_id
    assert row.step_labels == labels and len(row.step_positions) == 3
    assert row.step_positions[-1] == len(row) - 1  # the last separator ends the row
    text_so_far = "user: what is two plus two?"
    for step, position in zip(steps, row.step_positions):
        text_so_far += step + "\n"
        decoded = tiny_tokenizer.decode(row.input_ids[: position + 1], skip_special_tokens=True)
        assert decoded == text_so_far
        # the scored token is the separator's last token
        assert tiny_tokenizer.decode(row.input_ids[position : position + 1]).endswith("\n")
    assert stats == {
        "examples": 1, "steps": 3, "dropped_steps": 0, "truncated": 0, "truncated_fraction": 0.0,
        "tokens": len(row),
    }


def test_multi_token_separator_and_batched_examples_stay_aligned(tiny_tokenizer):
    examples = [_example([" four.", " hello"], [False, True]), _example([" the film"], [True], line=2)]
    rows, _ = tokenize_stepwise(examples, tiny_tokenizer, max_length=512, separator=" ki\n\n")
    sep_ids = tiny_tokenizer(" ki\n\n", add_special_tokens=False)["input_ids"]
    assert len(sep_ids) > 1
    for row, ex in zip(rows, examples):
        assert row.step_labels == ex.labels
        for position in row.step_positions:
            assert row.input_ids[position + 1 - len(sep_ids) : position + 1] == sep_ids
        assert tiny_tokenizer.decode(row.input_ids, skip_special_tokens=True) == ex.prompt + "".join(
            s + " ki\n\n" for s in ex.completions
        )


def test_truncation_drops_whole_steps_from_the_end(tiny_tokenizer):
    steps = [" two plus two", " is four.", " the film was a delight"]
    (full,), _ = tokenize_stepwise([_example(steps, [True, False, True])], tiny_tokenizer, max_length=512)
    # Room for exactly the first two steps (and one token short of the third).
    limit = full.step_positions[1] + 1 + (full.step_positions[2] - full.step_positions[1]) - 1
    (cut,), stats = tokenize_stepwise([_example(steps, [True, False, True])], tiny_tokenizer, max_length=limit)
    assert cut.input_ids == full.input_ids[: full.step_positions[1] + 1]
    assert cut.step_positions == full.step_positions[:2] and cut.step_labels == [True, False]
    assert stats["dropped_steps"] == 1 and stats["truncated"] == 1 and stats["steps"] == 2


def test_first_step_that_does_not_fit_is_an_error(tiny_tokenizer):
    ex = _example([" the film was a delight from start to finish"], [True], line=4)
    with pytest.raises(DataError, match=r"mem.jsonl: line 4: field 'completions': the first step does not fit"):
        tokenize_stepwise([ex], tiny_tokenizer, max_length=12)


def test_pad_step_rows_marks_scored_positions():
    rows = [StepRow([5, 6, 7, 8], [1, 3], [True, False]), StepRow([5, 9], [1], [True])]
    batch = pad_step_rows(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [5, 9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["step_mask"].tolist() == [[0, 1, 0, 1], [0, 1, 0, 0]]
    assert batch["step_targets"].tolist() == [[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    assert batch["step_targets"].dtype == torch.float32


# --- loss -------------------------------------------------------------------------------------


def _bce(x: float, y: float) -> float:
    p = 1 / (1 + math.exp(-x))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


LOGITS = [[0.0, 1.5, 0.0, -2.0, 50.0], [0.0, 0.3, 0.0, 0.0, 0.0]]
MASK = [[0, 1, 0, 1, 0], [0, 1, 0, 0, 0]]
TARGETS = [[0.0, 1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("last_only", [False, True])
def test_prm_loss_is_bce_on_scored_positions_with_exact_gradient(last_only):
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    mask, targets = torch.tensor(MASK), torch.tensor(TARGETS, dtype=torch.float64)
    loss, _ = prm_loss(logits, mask, targets, last_only=last_only)
    trained = [(0, 3), (1, 1)] if last_only else [(0, 1), (0, 3), (1, 1)]
    expected = sum(_bce(LOGITS[i][t], TARGETS[i][t]) for i, t in trained) / len(trained)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    expected_grad = torch.zeros_like(logits)
    for i, t in trained:
        expected_grad[i, t] = (torch.sigmoid(logits[i, t]) - targets[i, t]) / len(trained)
    torch.testing.assert_close(logits.grad, expected_grad, rtol=1e-12, atol=1e-15)


def test_prm_loss_with_nothing_scored_is_zero_and_differentiable():
    logits = torch.randn(2, 3, requires_grad=True)
    loss, metrics = prm_loss(logits, torch.zeros(2, 3), torch.zeros(2, 3))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros(2, 3))
    assert math.isnan(metrics["first_error_detection"].item())


def test_prm_metrics_on_a_hand_made_batch():
    # Row 0: targets T F F, PRM judges T F T -> first error found at step 2. Row 1: T T F, judged
    # F T F -> first judged-wrong is step 1, before the first error (step 3): missed. Row 2: all
    # correct (not counted by first_error_detection). Row 3: T F F, judged T T F -> the error is
    # flagged only one step late: missed.
    logits = torch.tensor([[2.0, -1.0, 3.0], [-0.5, 1.0, -2.0], [1.0, 1.0, -1.0], [1.0, 1.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    mask = torch.ones(4, 3)
    _, metrics = prm_loss(logits, mask, targets)
    # agreement: row0 T T F, row1 F T T, row2 T T F, row3 T F T -> 8 of 12
    assert metrics["step_accuracy"].item() == pytest.approx(8 / 12)
    assert metrics["positive_rate"].item() == pytest.approx(7 / 12)
    assert metrics["first_error_detection"].item() == pytest.approx(1 / 3)
    _, last = prm_loss(logits, mask, targets, last_only=True)
    # last steps: judged T F F F vs targets F F T F -> agree on rows 1 and 3
    assert last["step_accuracy"].item() == pytest.approx(2 / 4)
    assert last["positive_rate"].item() == pytest.approx(1 / 4)
    assert last["first_error_detection"].item() == pytest.approx(1 / 3)


def test_prm_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        prm_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4))


def test_aggregate_step_scores():
    assert aggregate_step_scores([0.9, 0.5, 0.8]) == pytest.approx(0.36)
    assert aggregate_step_scores(torch.tensor([0.9, 0.5, 0.8]), how="min") == pytest.approx(0.5)
    assert aggregate_step_scores([0.7], how="prod") == pytest.approx(0.7)
    for bad, how in (([], "prod"), ([1.2], "min"), ([0.5], "mean")):
        with pytest.raises(ValueError):
            aggregate_step_scores(bad, how=how)
