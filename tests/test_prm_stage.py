"""The prm stage end to end on arithmetic solutions with labelled steps, and its pieces."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForTokenClassification

from alignlab.data.stepwise import (
    StepRow,
    load_stepwise,
    pad_step_rows,
    tokenize_stepwise,
)
from alignlab.models import load_tokenizer
from alignlab.models.build import new_causal_lm, train_bpe_tokenizer
from alignlab.stages.offline.prm import (
    PRMConfig,
    eval_prm,
    prm_step_fns,
    run,
    split_examples,
    step_logits,
)
from alignlab.tasks.arithmetic import ArithmeticTask, label_steps, split_steps
from alignlab.train import TrainSettings

SEED = 0  # the train seed; also checked to pass with 1 and 2


def _stepwise_records(texts: list[str]) -> list[dict]:
    """Split each arithmetic text into its prompt line and step lines, labelled by the task."""
    records = []
    for text in texts:
        cut = text.index("\n") + 1
        prompt, completion = text[:cut], text[cut:]
        steps, _ = split_steps(completion)
        records.append({"prompt": prompt, "completions": steps, "labels": label_steps(prompt, completion)})
    return records


@pytest.fixture(scope="module")
def arithmetic_prm_setup(tmp_path_factory):
    """A stepwise file of 340 arithmetic solutions (half flawed) and a tiny GPT-2 with its tokenizer."""
    root = tmp_path_factory.mktemp("prm")
    texts = ArithmeticTask(error_rate=0.5).corpus(340, seed=0)
    records = _stepwise_records(texts)
    data = root / "steps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    model = new_causal_lm(tokenizer, arch="gpt2", hidden_size=64, num_layers=2, num_heads=4)
    model.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    return root, data, records


def test_prm_stage_learns_step_labels_and_saves_a_token_classifier(arithmetic_prm_setup):
    root, data, records = arithmetic_prm_setup
    assert any(not all(r["labels"]) for r in records) and any(all(r["labels"]) for r in records)
    out = root / "out"
    cfg = PRMConfig(
        model=str(root / "lm"), data=str(data), eval_fraction=0.1,
        train=TrainSettings(lr=1e-3, batch_size=16, max_steps=400, device="cpu", save_every=None,
                            log_every=10, warmup_steps=0, seed=SEED),
    )
    metrics = run(cfg, out)

    # split by example: 34 held out, the rest trained on; stats come from tokenize_stepwise
    assert metrics["eval_examples"] == 34 and metrics["train_examples"] == 306
    assert metrics["data"]["examples"] == 306 and metrics["data"]["dropped_steps"] == 0
    assert json.loads((out / "metrics.json").read_text())["eval"] == pytest.approx(metrics["eval"], nan_ok=True)
    assert (out / "done.json").exists()
    figures = metrics["eval"]
    assert set(figures) >= {"loss", "step_accuracy", "first_error_detection", "correct_rate"}
    assert 0.0 <= figures["step_accuracy"] <= 1.0 and 0.0 <= figures["first_error_detection"] <= 1.0

    # A 2-layer model this small does not learn to check arithmetic in 400 steps (held-out accuracy
    # stays near the majority rate), so the test asserts that it fits its TRAINING steps: the loss
    # falls and step accuracy on the training examples clearly beats always answering "correct".
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in log if "loss" in x]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3

    tokenizer = load_tokenizer(str(out / "model"))
    reloaded = AutoModelForTokenClassification.from_pretrained(out / "model").eval()
    train_examples, _ = split_examples(load_stepwise(data), 0.1, seed=SEED)
    train_rows, _ = tokenize_stepwise(train_examples, tokenizer, 512)
    with torch.no_grad():
        on_train = eval_prm(train_rows, tokenizer.pad_token_id, last_only=False)(reloaded)
    majority = max(on_train["correct_rate"], 1 - on_train["correct_rate"])
    assert 0.6 < majority < 0.8
    assert on_train["step_accuracy"] > majority + 0.1, (on_train, majority)
    assert on_train["first_error_detection"] > 0.3

    # reloaded with plain transformers, the model gives the trained model's held-out figures
    train_part, held_out = split_examples(load_stepwise(data), 0.1, seed=SEED)
    assert len(train_part) == len(train_examples)
    eval_rows, _ = tokenize_stepwise(held_out, tokenizer, 512)
    with torch.no_grad():
        again = eval_prm(eval_rows, tokenizer.pad_token_id, last_only=False)(reloaded)
    for key in ("loss", "step_accuracy", "first_error_detection", "correct_rate"):
        assert again[key] == pytest.approx(figures[key], abs=1e-5)
    batch = pad_step_rows(train_rows[:8], tokenizer.pad_token_id)
    with torch.no_grad():
        logits = step_logits(reloaded, batch)[batch["step_mask"].bool()]
    assert logits.std() > 0.1  # the zero-initialised head has moved


def test_split_examples_is_seeded_and_disjoint(arithmetic_prm_setup):
    _, data, _ = arithmetic_prm_setup
    examples = load_stepwise(data)
    train_a, held_a = split_examples(examples, 0.1, seed=3)
    _, held_b = split_examples(examples, 0.1, seed=3)
    _, held_c = split_examples(examples, 0.1, seed=4)
    assert [e.source for e in held_a] == [e.source for e in held_b] != [e.source for e in held_c]
    assert len(held_a) == 34 and len(train_a) + len(held_a) == len(examples)
    assert not {e.source for e in train_a} & {e.source for e in held_a}
    assert split_examples(examples, 0.0, seed=3) == (examples, [])


class _FixedLogits(torch.nn.Module):
    """A stand-in PRM whose logit at a position is a learnable scale times a fixed table."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table
        self.scale = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, input_ids, attention_mask):
        logits = (self.scale * self.table[: input_ids.shape[0], : input_ids.shape[1]]).unsqueeze(-1)
        return type("Out", (), {"logits": logits})()


@pytest.mark.parametrize("last_only", [False, True])
def test_prm_loss_accumulates_exactly_over_micro_batches(last_only):
    rows = [
        StepRow([1, 2, 3, 4, 5], [2, 4], [True, False]),
        StepRow([1, 2, 3], [2], [True]),
        StepRow([1, 2, 3, 4, 5, 6, 7], [1, 3, 6], [True, True, False]),
        StepRow([1, 2, 3, 4], [3], [False]),
    ]
    torch.manual_seed(0)
    table = torch.randn(4, 7)
    fns = prm_step_fns(rows, pad_id=0, last_only=last_only)

    def grad_and_loss(groups: list[list[int]]):
        model = _FixedLogits(table)
        # the table is indexed by a row's position in its micro-batch, so give every micro-batch
        # its rows' own slice of the table
        batches = [fns.make_batch(g) for g in groups]
        normaliser = sum(fns.weight(b) for b in batches)
        total = 0.0
        for g, b in zip(groups, batches):
            model.table = table[g]
            loss, _ = fns.loss(model, b, normaliser)
            loss.backward()
            total += loss.item()
        return total, model.scale.grad.item()

    whole = grad_and_loss([[0, 1, 2, 3]])
    split = grad_and_loss([[0], [1, 2], [3]])
    assert split == pytest.approx(whole, rel=1e-5)
    expected_weight = 4 if last_only else 7
    assert sum(fns.weight(fns.make_batch([i])) for i in range(4)) == expected_weight
