"""`evaluate` behind a guard: a guard that never fires changes no figure, and one that fires on
every prompt or at every first token turns each answer into its message, counted as such."""

from __future__ import annotations

import json

import pytest

from alignlab.guard.models import load_output_classifier
from alignlab.guard.sampler import REFUSAL_MESSAGE
from alignlab.models import load_tokenizer

PROMPTS = ["the film was", "a dull and", "i loved the", "not the worst", "the acting was", "hello world"]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("guarded-eval")
    tokenizer = load_tokenizer(tiny_model_dir)
    classifier = load_output_classifier(tiny_model_dir, tokenizer)  # an untrained head: scores near 0.5
    classifier.save_pretrained(root / "classifier")
    tokenizer.save_pretrained(root / "classifier")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return root, str(tiny_model_dir)


def _evaluate(root, model, name, guard=None):
    from alignlab.stages.evaluation.evaluate import EvaluateConfig, run

    cfg = EvaluateConfig(models={"m": model}, prompts=str(root / "prompts.jsonl"), reference=model,
                         samples_per_prompt=2, sampling={"max_new_tokens": 8}, guard=guard)
    metrics = run(cfg, root / name)
    samples = [json.loads(line) for line in (root / name / "data/samples.jsonl").read_text().splitlines()]
    return metrics["models"]["m"], samples


def test_a_guard_that_never_fires_changes_no_figure(setup):
    root, model = setup
    plain, plain_samples = _evaluate(root, model, "plain")
    quiet, quiet_samples = _evaluate(root, model, "quiet", {"input": str(root / "classifier"),
                                                            "output": str(root / "classifier"),
                                                            "input_threshold": 2.0, "output_threshold": 2.0})
    assert quiet["guard_blocked_rate"] == quiet["guard_halted_rate"] == 0
    unguarded = {k: v for k, v in quiet.items() if not k.startswith("guard_")}
    assert json.dumps(unguarded, sort_keys=True) == json.dumps(plain, sort_keys=True)  # gold_std is NaN: no task
    assert [s["completion"] for s in quiet_samples] == [s["completion"] for s in plain_samples]
    assert all(s["guarded_by"] is None for s in quiet_samples)


@pytest.mark.parametrize("kind", ["input", "output"])
def test_a_guard_that_always_fires_answers_every_prompt_with_its_message(setup, kind):
    root, model = setup
    figures, samples = _evaluate(root, model, f"always-{kind}", {kind: str(root / "classifier"),
                                                                f"{kind}_threshold": 0.0})
    assert figures[f"guard_{'blocked' if kind == 'input' else 'halted'}_rate"] == 1.0
    assert all(s["completion"] == REFUSAL_MESSAGE and s["guarded_by"] == kind for s in samples)
    assert figures["length_mean"] == 0 and figures["kl_mean"] == 0  # no token of the model is shown
