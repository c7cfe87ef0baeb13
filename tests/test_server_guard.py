"""`serve-llm` behind a guard, as the official `openai` client sees it: a request the input classifier
flags and an answer the streaming classifier stops come back as the guard's message with
finish_reason content_filter; everything else is the bare model's answer, token for token."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")

from alignlab.feedback.ai.llm import LocalLLM  # noqa: E402
from alignlab.feedback.ai.llm.base import GenerationSettings  # noqa: E402
from alignlab.feedback.ai.llm.server import make_app, start_in_thread  # noqa: E402
from alignlab.guard.models import load_input_classifier, prompt_scores  # noqa: E402
from alignlab.guard.sampler import REFUSAL_MESSAGE, Guard  # noqa: E402
from token_trigger import TokenTrigger  # noqa: E402

PROMPTS = ["the film was", "a dull and", "i loved the", "hello world this"]


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    bare = LocalLLM(tiny_model_dir, device="cpu")
    classifier = load_input_classifier(tiny_model_dir, bare.tokenizer)
    scores = prompt_scores(classifier, [bare.encode(p) for p in PROMPTS], bare.pad_id)
    refused = max(range(len(PROMPTS)), key=scores.__getitem__)
    source = min(range(len(PROMPTS)), key=scores.__getitem__)  # answered: the trigger comes from its answer
    answer = bare.generate([PROMPTS[source]], GenerationSettings(max_tokens=10, temperature=1.0, seed=3))[0]
    k = next(i for i in range(2, len(answer.token_ids)) if answer.token_ids[i] not in answer.token_ids[:i])
    trigger = answer.token_ids[k]
    guard = Guard(input=classifier, input_threshold=scores[refused], scorer_factory=lambda: TokenTrigger(trigger))
    guarded = LocalLLM(tiny_model_dir, device="cpu", gate=guard.gate(bare.pad_id))
    base_url, stop = start_in_thread(make_app(guarded, "tiny"))
    yield openai.OpenAI(base_url=base_url, api_key="none", max_retries=0), bare, trigger, k, PROMPTS[refused], \
        PROMPTS[source]
    stop()


def test_a_flagged_request_is_refused_without_generating(served):
    client, _, _, _, refused, _ = served
    reply = client.completions.create(model="tiny", prompt=refused, max_tokens=10, seed=1)
    assert reply.choices[0].text == REFUSAL_MESSAGE and reply.choices[0].finish_reason == "content_filter"
    assert reply.usage.completion_tokens == 0
    chunks = list(client.completions.create(model="tiny", prompt=refused, max_tokens=10, seed=1, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == REFUSAL_MESSAGE
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_an_answer_is_withheld_at_the_token_the_stream_flags(served):
    client, _, _, k, _, source = served
    reply = client.completions.create(model="tiny", prompt=source, max_tokens=10, seed=3, temperature=1.0)
    assert reply.choices[0].text == REFUSAL_MESSAGE and reply.choices[0].finish_reason == "content_filter"
    assert reply.usage.completion_tokens == k + 1  # generation stopped right after the flagged token


def test_answers_the_guard_lets_through_are_the_bare_models(served):
    client, bare, trigger, _, refused, _ = served
    settings = GenerationSettings(max_tokens=10, temperature=1.0, seed=11)
    through = 0
    for prompt in PROMPTS:
        if prompt == refused:
            continue
        expected = bare.generate([prompt], settings)[0]
        reply = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, seed=11, temperature=1.0)
        if trigger in expected.token_ids:
            assert reply.choices[0].finish_reason == "content_filter"
        else:
            assert reply.choices[0].text == expected.text and reply.choices[0].finish_reason == expected.finish_reason
            through += 1
    assert through > 0


def test_serve_llm_builds_the_guard_from_classifier_directories(tiny_model_dir, monkeypatch):
    from typer.testing import CliRunner

    import alignlab.feedback.ai.llm.server as server
    from alignlab.cli import app

    seen = {}
    monkeypatch.setattr(server, "serve", lambda model, **kwargs: seen.update(kwargs))
    result = CliRunner().invoke(app, ["serve-llm", str(tiny_model_dir), "--guard-output", str(tiny_model_dir),
                                      "--output-threshold", "0.9"], env={"CI": "true"})
    assert result.exit_code == 0, result.output
    gate = seen["gate"](LocalLLM(tiny_model_dir, device="cpu"))
    assert gate.refuse is None and gate.stop_rule is not None and "output>=0.9" in gate.name
