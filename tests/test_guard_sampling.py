"""The guard around sampling on a tiny model: it halts at the exact token a scorer flags, changes
nothing when it never fires, streams the same scores as one full forward, and refuses flagged prompts."""

from __future__ import annotations

import pytest
import torch

from alignlab.guard.models import (
    keep_layers,
    load_input_classifier,
    load_output_classifier,
    prompt_scores,
    response_token_scores,
)
from alignlab.guard.sampler import REFUSAL_MESSAGE, Guard, guarded_sample
from alignlab.guard.streaming import TokenClassifierStream
from alignlab.models import load_causal_lm, load_tokenizer
from alignlab.rollout import SamplingSettings, sample
from alignlab.rollout.local import left_pad
from token_trigger import TokenTrigger

SETTINGS = SamplingSettings(max_new_tokens=12, temperature=1.0, batch_size=8)


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir)
    prompts = [tokenizer(t)["input_ids"] for t in ("the film was", "a dull and", "i loved the", "hello world this")]
    return model, tokenizer, prompts


def test_generation_halts_at_the_exact_token_the_scorer_flags(policy):
    model, tokenizer, prompts = policy
    ids = {"pad_id": tokenizer.pad_token_id, "eos_id": tokenizer.eos_token_id}
    plain = sample(model, prompts, SETTINGS, seed=3, **ids)
    # a token that row 0 draws first at position k >= 2 (not earlier in its completion)
    row = plain.completion_ids[0]
    k = next(i for i in range(2, len(row)) if row[i] not in row[:i])
    trigger = row[k]
    guard = Guard(scorer_factory=lambda: TokenTrigger(trigger), output_threshold=0.5)
    guarded = guarded_sample(model, prompts, SETTINGS, guard, seed=3, **ids)
    assert guarded.halted_at[0] == k
    assert guarded.completion_ids[0] == row[: k + 1]  # the sampler's record ends with the flagged token
    assert guarded.shown_ids()[0] == row[:k]  # a user never sees it, nor anything after it
    assert guarded.logps[0] == pytest.approx(plain.logps[0][: k + 1])
    assert guarded.output_scores[0] == [0.0] * k + [1.0]
    assert guarded.verdicts()[0] == "output" and guarded.texts(tokenizer)[0] == REFUSAL_MESSAGE
    assert not guarded.finished[0]
    for r in range(1, len(prompts)):  # the other rows: cut at their own first trigger, or untouched
        other = plain.completion_ids[r]
        first = next((i for i, t in enumerate(other) if t == trigger), None)
        assert guarded.halted_at[r] == first
        assert guarded.completion_ids[r] == (other if first is None else other[: first + 1])


@pytest.mark.parametrize("settings", [SETTINGS, SETTINGS.model_copy(update={"draw": "multinomial", "batch_size": 3})],
                         ids=["inverse_cdf", "multinomial-in-batches-of-3"])
def test_a_guard_that_never_fires_returns_the_unguarded_samples(policy, tiny_model_dir, settings):
    model, tokenizer, prompts = policy
    ids = {"pad_id": tokenizer.pad_token_id, "eos_id": tokenizer.eos_token_id}
    classifier = load_output_classifier(tiny_model_dir, tokenizer)
    guard = Guard(output=classifier, output_threshold=2.0)  # a probability never reaches 2
    plain = sample(model, prompts, settings, seed=5, **ids)
    guarded = guarded_sample(model, prompts, settings, guard, seed=5, **ids)
    assert guarded.completion_ids == plain.completion_ids and guarded.finished == plain.finished
    assert guarded.halted_at == [None] * len(prompts) and guarded.seconds["output_scoring"] > 0
    assert [len(s) for s in guarded.output_scores] == [len(c) for c in plain.completion_ids]


def test_streamed_scores_equal_one_forward_over_the_whole_response(policy, tiny_model_dir):
    model, tokenizer, prompts = policy
    classifier = load_output_classifier(tiny_model_dir, tokenizer)
    with torch.no_grad():  # a non-zero head, so the scores differ from token to token
        head = classifier.classifier  # GPT-2's token classification head
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0)))
    completions = sample(model, prompts, SETTINGS, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                         seed=1).completion_ids
    full = response_token_scores(classifier, prompts, completions, tokenizer.pad_token_id)
    stream = TokenClassifierStream(classifier)
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    stream.begin(ids, mask)
    width = max(len(c) for c in completions)
    steps = [stream.step(torch.tensor([c[t] if t < len(c) else tokenizer.pad_token_id for c in completions]))
             for t in range(width)]
    streamed = torch.stack(steps, 1)
    for r, c in enumerate(completions):
        # float32: a KV-cached step and a full forward sum attention in another order
        assert streamed[r, : len(c)].tolist() == pytest.approx(full[r], abs=1e-5)
    assert len({round(s, 4) for s in full[0]}) > 1


def test_flagged_prompts_are_refused_without_generating(policy, tiny_model_dir):
    model, tokenizer, prompts = policy
    classifier = load_input_classifier(tiny_model_dir, tokenizer)
    scores = prompt_scores(classifier, prompts, tokenizer.pad_token_id)
    threshold = sorted(scores)[2]  # the two highest-scoring prompts are refused
    guard = Guard(input=classifier, input_threshold=threshold)
    guarded = guarded_sample(model, prompts, SETTINGS, guard, pad_id=tokenizer.pad_token_id,
                             eos_id=tokenizer.eos_token_id, seed=0)
    assert guarded.blocked == [s >= threshold for s in scores] and sum(guarded.blocked) == 2
    for blocked, completion, text in zip(guarded.blocked, guarded.completion_ids, guarded.texts(tokenizer)):
        assert (completion == []) == blocked and (text == REFUSAL_MESSAGE) == blocked


def test_keep_layers_cuts_the_backbone_and_the_cut_model_reloads(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_output_classifier(tiny_model_dir, tokenizer, layers=1)
    assert model.config.num_hidden_layers == 1 and len(model.transformer.h) == 1
    model.save_pretrained(tmp_path / "cut")
    tokenizer.save_pretrained(tmp_path / "cut")
    again = load_output_classifier(tmp_path / "cut", tokenizer)
    assert len(again.transformer.h) == 1
    with pytest.raises(ValueError, match="between 1 and the model's 1 blocks"):
        keep_layers(again, 2)
