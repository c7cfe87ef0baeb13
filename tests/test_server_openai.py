"""`alignlab serve-llm` as the official `openai` client sees it: batching of ordinary (seedless)
requests, streaming, n > 1, model lookup, OpenAI-shaped errors, refused parameters, log-probs with
their real bytes."""

from __future__ import annotations

import threading

import httpx
import pytest

openai = pytest.importorskip("openai")

from alignlab.feedback.ai.llm.server import make_app, start_in_thread  # noqa: E402
from alignlab.feedback.ai.llm.token_text import TokenTexts  # noqa: E402

PROMPT = "the film was"


@pytest.fixture(scope="module")
def server(llm):
    calls = []
    real = llm.generate

    def counting(prompts, *args, **kwargs):
        calls.append(len(prompts))
        return real(prompts, *args, **kwargs)

    llm.generate = counting
    base_url, stop = start_in_thread(make_app(llm, "tiny", api_key="secret"))
    client = openai.OpenAI(base_url=base_url, api_key="secret", max_retries=0)
    yield base_url, client, calls
    stop()
    llm.generate = real


def test_seedless_requests_share_a_batch(server):
    # every ordinary client sends no seed; they used to get a random seed each and a model call each
    _, client, calls = server
    calls.clear()
    barrier = threading.Barrier(8)
    answers = [None] * 8

    def ask(i):
        barrier.wait()
        answers[i] = client.completions.create(model="tiny", prompt=f"{PROMPT} {i}", max_tokens=8)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a.choices[0].text is not None for a in answers)
    assert sum(calls) == 8 and len(calls) <= 3, calls  # one model call takes the first, one the rest


def test_a_seed_still_gives_the_same_answer_in_any_batch(server):
    _, client, _ = server
    alone = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, seed=7).choices[0].text
    results = []

    def ask(seed):
        results.append((seed, client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, seed=seed)))

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in (7, 8, 9, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert dict(results)[7].choices[0].text == alone


def test_streaming_gives_the_same_text_in_chunks(server):
    _, client, _ = server
    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, seed=3)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, seed=3, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert len(chunks) == whole.usage.completion_tokens + 1  # one a token, then the finish

    messages = [{"role": "user", "content": "hello"}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, seed=4)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, seed=4, stream=True,
                                            stream_options={"include_usage": True})
    parts = list(stream)
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == chat.choices[0].message.content
    assert parts[-1].usage.completion_tokens == chat.usage.completion_tokens and not parts[-1].choices


def test_n_choices_are_the_seeds_one_by_one(server):
    _, client, _ = server
    three = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, seed=5, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    for k, choice in enumerate(three.choices):
        single = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, seed=5 + k * 1_000_003)
        assert choice.text == single.choices[0].text
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], n=2,
                                          max_tokens=6, seed=1)
    assert [c.index for c in chat.choices] == [0, 1]


def test_models_can_be_retrieved_by_id(server):
    _, client, _ = server
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_unknown_routes_and_methods_answer_in_openais_shape(server):
    base_url, _, _ = server
    headers = {"Authorization": "Bearer secret"}
    missing = httpx.get(f"{base_url}/nothing-here", headers=headers)
    assert missing.status_code == 404 and "message" in missing.json()["error"]
    wrong = httpx.get(f"{base_url}/completions", headers=headers)
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"


def test_health_needs_no_key_and_the_api_does(server):
    base_url, _, _ = server
    assert httpx.get(base_url.removesuffix("/v1") + "/health").json() == {"status": "ok"}
    assert httpx.get(f"{base_url}/models").status_code == 401


@pytest.mark.parametrize("extra", [
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    {"response_format": {"type": "json_object"}},
    {"logit_bias": {"5": 10}},
    {"presence_penalty": 0.5},
    {"frequency_penalty": 1.0},
])
def test_parameters_it_cannot_honour_are_refused(server, extra):
    _, client, _ = server
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       **extra)
    assert next(iter(extra)) in str(info.value)


@pytest.mark.parametrize("extra,param", [
    ({"logprobs": 5}, "logprobs"),  # a number is the legacy API's; in chat it would return nothing
    ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ({"messages": [{"role": "user", "content": "hi", "name": "ann"}]}, "name"),
])
def test_chat_fields_that_would_be_dropped_are_refused(server, extra, param):
    _, client, _ = server
    request = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**request)
    assert param in str(info.value)


def test_usage_counts_the_prompt_once_for_n_choices(server):
    _, client, _ = server
    one = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, seed=1)
    three = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, seed=1, n=3, logprobs=0)
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert three.usage.completion_tokens == sum(len(c.logprobs.token_logprobs) for c in three.choices)


def test_neutral_values_of_those_parameters_are_accepted(server):
    _, client, _ = server
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                            presence_penalty=0, frequency_penalty=0, response_format={"type": "text"})
    assert answer.choices[0].message.content is not None


def test_logprobs_zero_gives_one_entry_per_token(server):
    _, client, _ = server
    answer = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, seed=2, logprobs=0)
    logprobs = answer.choices[0].logprobs
    n = answer.usage.completion_tokens
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == n
    assert all(len(top) == 1 for top in logprobs.top_logprobs)  # the chosen token only
    assert "".join(logprobs.tokens) == answer.choices[0].text


def test_chat_logprobs_carry_real_bytes_and_join_into_the_text(server):
    _, client, _ = server
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=12, seed=6, logprobs=True, top_logprobs=3)
    content = answer.choices[0].logprobs.content
    text = answer.choices[0].message.content
    assert "".join(t.token for t in content) == text
    assert bytes(b for t in content for b in t.bytes).decode("utf-8", errors="replace") == text
    assert all(len(t.top_logprobs) == 3 for t in content)


def test_token_texts_of_a_character_split_over_byte_tokens(tiny_tokenizer):
    # byte-level BPE splits "é" and "ö" into two tokens each; decoded alone each half is U+FFFD
    text = "héllo wörld"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "\ufffd" in "".join(tiny_tokenizer.decode([i]) for i in ids)
    texts = TokenTexts(tiny_tokenizer)
    pieces, _ = texts.pieces(ids)
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    assert b"".join(texts.token_bytes(i) for i in ids) == text.encode("utf-8")
