"""LLM backends: LocalLLM against manual computations, OpenAICompatibleLLM against the real
alignlab server and against a fault-injecting server (both uvicorn on loopback), and the cache."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time

import pytest
import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from alignlab.data.templates import DEFAULT_CHAT_TEMPLATE
from alignlab.feedback.ai.llm import CallCache, GenerationSettings, LLMBackend, LLMError, LocalLLM, OpenAICompatibleLLM
from alignlab.feedback.ai.llm.server import make_app, start_in_thread
from alignlab.models.load import load_causal_lm, load_tokenizer

GREEDY = GenerationSettings(max_tokens=6)
PROMPTS = ["the film was", "hello world this is a tiny", "a dull"]  # different lengths: padding matters


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LocalLLM(tiny_model_dir, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def served(llm):
    """The real alignlab server for the tiny model, on loopback."""
    base_url, stop = start_in_thread(make_app(llm, "tiny"))
    yield base_url
    stop()


def manual_ids(tokenizer, text: str) -> list[int]:
    """BOS then the text's tokens (alignlab's tokenization policy), built independently."""
    return [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def last_logps(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)


# ---------------------------------------------------------------------------------------------
# LocalLLM


def test_local_llm_is_an_llm_backend(llm):
    assert isinstance(llm, LLMBackend)


def test_local_greedy_complete_is_deterministic_and_equals_manual_argmax(llm):
    settings = GenerationSettings(max_tokens=3)
    first = llm.complete(PROMPTS, settings)
    assert llm.complete(PROMPTS, settings) == first
    for prompt, text in zip(PROMPTS, first):
        ids = manual_ids(llm.tokenizer, prompt)
        new = []
        for _ in range(3):
            token = int(last_logps(llm.model, ids + new).argmax())
            assert token != llm.tokenizer.eos_token_id  # the comparison below assumes no early stop
            new.append(token)
        assert text == llm.tokenizer.decode(new, skip_special_tokens=True)


def test_local_sampling_depends_on_the_item_and_seed_not_the_batch(llm):
    sampled = GenerationSettings(max_tokens=8, temperature=1.0, seed=3)
    in_batch = llm.complete(PROMPTS, sampled)
    alone = llm.complete([PROMPTS[1]], sampled)
    assert alone[0] == in_batch[1]
    assert llm.complete([PROMPTS[1]], GenerationSettings(max_tokens=8, temperature=1.0, seed=4))[0] != alone[0]
    assert in_batch != llm.complete(PROMPTS, GREEDY)


def test_local_stop_string_cuts_the_text_before_it(llm):
    full = llm.complete([PROMPTS[0]], GenerationSettings(max_tokens=12))[0]
    stop = full[4:6]
    assert stop.strip() and len(full) > 6
    cut = llm.complete([PROMPTS[0]], GenerationSettings(max_tokens=12, stop=(stop,)))[0]
    assert cut == full[: full.find(stop)]


def test_local_prompt_too_long_is_an_item_error(llm):
    results = llm.complete(["the film " * 200, PROMPTS[0]], GREEDY)
    assert isinstance(results[0], LLMError) and "context" in results[0].message
    assert isinstance(results[1], str)


def test_next_token_logprobs_equals_a_manual_forward(llm):
    tok, model = llm.tokenizer, llm.model
    candidates = ["lo", " the film", "a"]
    prompts = ["the film was", "hello world this is", "the film was "]  # the last forces the fallback
    results = llm.next_token_logprobs(prompts, candidates)
    for prompt, result in zip(prompts, results):
        prompt_ids = manual_ids(tok, prompt)
        for candidate in candidates:
            joint = manual_ids(tok, prompt + candidate)
            if joint[: len(prompt_ids)] == prompt_ids:
                candidate_ids = joint[len(prompt_ids):]
            else:
                candidate_ids = tok(candidate, add_special_tokens=False)["input_ids"]
            full = prompt_ids + candidate_ids
            with torch.no_grad():
                logps = model(torch.tensor([full])).logits[0].float().log_softmax(-1)
            expected = sum(float(logps[len(prompt_ids) - 1 + k, t]) for k, t in enumerate(candidate_ids))
            assert result[candidate] == pytest.approx(expected, abs=1e-5), (prompt, candidate)
    # the fallback really ran: prompt and candidate merge across the boundary there
    assert manual_ids(tok, "the film was a")[: len(manual_ids(tok, "the film was "))] != manual_ids(tok, "the film was ")
    with pytest.raises(ValueError):
        llm.next_token_logprobs(prompts, [""])


def test_chat_renders_with_the_default_template_when_the_tokenizer_has_none(llm):
    assert not getattr(llm.tokenizer, "chat_template", None)
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    rendered = "<|system|>\nbe brief\n<|user|>\nhello\n<|assistant|>\n"
    assert llm.render_chat(conversation) == rendered
    assert "<|assistant|>" in DEFAULT_CHAT_TEMPLATE
    bad = [{"role": "user"}]
    reply, broken = llm.chat([conversation, bad], GREEDY)
    assert reply == llm.complete([rendered], GREEDY)[0]
    assert isinstance(broken, LLMError) and "content" in broken.message


def test_chat_uses_the_tokenizers_own_template(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}[bot]{% endif %}"
    )
    llm = LocalLLM(load_causal_lm(tiny_model_dir), tokenizer=tokenizer, device="cpu")
    conversation = [{"role": "user", "content": "hello"}]
    assert llm.render_chat(conversation) == "[user] hello [bot]"
    assert llm.chat([conversation], GREEDY) == llm.complete(["[user] hello [bot]"], GREEDY)


def test_local_cache_answers_a_rerun_without_the_model(tiny_model_dir, tmp_path):
    cache = CallCache(tmp_path / "calls.sqlite")
    llm = LocalLLM(tiny_model_dir, device="cpu", cache=cache)
    texts = llm.complete(PROMPTS, GREEDY)
    logps = llm.next_token_logprobs(PROMPTS, ["lo", "the"])

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran for a cached item")

    rerun = LocalLLM(tiny_model_dir, device="cpu", cache=CallCache(tmp_path / "calls.sqlite"))
    rerun.generate = no_model
    rerun._candidate_logprobs = no_model
    assert rerun.complete(PROMPTS, GREEDY) == texts
    assert rerun.next_token_logprobs(PROMPTS, ["lo", "the"]) == logps
    with pytest.raises(AssertionError):  # other settings are other items
        rerun.complete(PROMPTS, GenerationSettings(max_tokens=6, seed=1))


# ---------------------------------------------------------------------------------------------
# Through the real server


def test_http_backend_through_the_real_server_matches_local(llm, served):
    client = OpenAICompatibleLLM(served, "tiny", max_retries=0)
    assert isinstance(client, LLMBackend)
    assert client.complete(PROMPTS, GREEDY) == llm.complete(PROMPTS, GREEDY)
    sampled = GenerationSettings(max_tokens=6, temperature=0.8, top_p=0.9, seed=5)
    assert client.complete(PROMPTS, sampled) == llm.complete(PROMPTS, sampled)
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    assert client.chat(conversations, GREEDY) == llm.chat(conversations, GREEDY)
    stopped = GenerationSettings(max_tokens=12, stop=("lo", "\n"))
    assert client.complete(PROMPTS, stopped) == llm.complete(PROMPTS, stopped)


def single_token_candidates(llm, prompt: str, n: int = 3) -> list[str]:
    """Texts of tokens among the local model's 20 most likely next tokens that spell one token
    after this prompt, and whose other spelling (with/without a leading space) is not listed."""
    ids = llm.encode(prompt)
    order = last_logps(llm.model, ids).topk(25).indices.tolist()
    texts = [llm.tokenizer.decode([t]) for t in order]
    picked = []
    for token, text in zip(order[:20], texts[:20]):
        other = text[1:] if text.startswith(" ") else " " + text
        if "\ufffd" in text or not text.strip() or texts.count(text) > 1 or other in texts:
            continue
        if llm.encode(prompt + text) == ids + [token]:
            picked.append(text)
    return picked[:n]


def test_http_next_token_logprobs_match_local_through_the_real_server(llm, served):
    client = OpenAICompatibleLLM(served, "tiny", max_retries=0)
    for prompt in PROMPTS:
        candidates = single_token_candidates(llm, prompt)
        assert len(candidates) >= 2, candidates
        (remote,) = client.next_token_logprobs([prompt], candidates)
        (local,) = llm.next_token_logprobs([prompt], candidates)
        assert set(remote) == set(candidates)
        for candidate in candidates:
            assert remote[candidate] == pytest.approx(local[candidate], abs=1e-4)
    # candidates outside the top 20 are scored exactly by echoing prompt + candidate (max_tokens 0)
    (far,) = client.next_token_logprobs([PROMPTS[0]], ["ZZZZ", "A"])
    (local,) = llm.next_token_logprobs([PROMPTS[0]], ["ZZZZ", "A"])
    assert not isinstance(far, LLMError), far
    for candidate in ("ZZZZ", "A"):
        assert far[candidate] == pytest.approx(local[candidate], abs=1e-4)


def test_real_server_speaks_the_openai_format(served):
    import httpx

    models = httpx.get(f"{served}/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    answer = httpx.post(f"{served}/completions", json={
        "model": "tiny", "prompt": ["hello", "the film"], "max_tokens": 4, "temperature": 0, "logprobs": 3,
    }).json()
    assert answer["object"] == "text_completion" and len(answer["choices"]) == 2
    for choice in answer["choices"]:
        logprobs = choice["logprobs"]
        assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"])
        for token, logp, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]):
            assert top[token] == pytest.approx(logp) and logp <= 0
    chat = httpx.post(f"{served}/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
    }).json()
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["usage"]["completion_tokens"] == 3
    wrong = httpx.post(f"{served}/completions", json={"model": "other", "prompt": "hi"})
    assert wrong.status_code == 404 and "other" in wrong.json()["error"]["message"]
    bad = httpx.post(f"{served}/completions", json={"model": "tiny", "prompt": "hi", "temperature": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"


# ---------------------------------------------------------------------------------------------
# Against a fault-injecting server


class FaultServer:
    """An OpenAI-shaped server whose answer depends on the prompt, counting what it sees."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.auth: list[str | None] = []
        self.in_flight = 0
        self.peak = 0

    def count(self, prompt: str) -> int:
        with self.lock:
            return self.requests.count(prompt)

    async def handle(self, request: Request) -> Response:
        body = json.loads(await request.body())
        prompt = body["prompt"] if "prompt" in body else body["messages"][-1]["content"]
        with self.lock:
            self.requests.append(prompt)
            self.auth.append(request.headers.get("authorization"))
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            seen = self.requests.count(prompt)
        try:
            await asyncio.sleep(self.delay_s)
            return self.answer(prompt, seen, request)
        finally:
            with self.lock:
                self.in_flight -= 1

    def answer(self, prompt: str, seen: int, request: Request) -> Response:
        if prompt == "flaky" and seen <= 2:
            return JSONResponse({"error": "overloaded"}, status_code=500)
        if prompt == "truncated":
            return Response('{"choices": [{"text": "ok", "fin', media_type="application/json")
        if prompt == "no choices":
            return JSONResponse({"choices": []})
        if prompt == "unauthorised":  # a careless server that echoes the header it got
            return JSONResponse({"error": f"bad key in {request.headers.get('authorization')}"}, status_code=401)
        if prompt == "content format":  # the chat-style logprobs some llama.cpp versions send
            listed = [{"token": "A", "logprob": -0.3}, {"token": " B", "logprob": -1.0}]
            return JSONResponse({"choices": [{"index": 0, "text": "A", "logprobs": {
                "content": [{"token": "A", "logprob": -0.3, "top_logprobs": listed}]}}]})
        if prompt == "letters":
            top = {" A": -0.5, "A": -2.0, "B": -1.5, "C": -3.0}
        else:
            top = {"C": -0.1, " D": -2.5}
        return JSONResponse({
            "choices": [{"index": 0, "text": "ok", "message": {"role": "assistant", "content": "ok"},
                         "logprobs": {"tokens": ["C"], "token_logprobs": [-0.1], "top_logprobs": [top]},
                         "finish_reason": "length"}],
        })

    async def slow(self, request: Request) -> Response:
        await asyncio.sleep(1.0)
        return await self.handle(request)

    def app(self) -> Starlette:
        async def route(request: Request) -> Response:
            body = json.loads(await request.body())
            if body.get("prompt") == "sleep":
                return await self.slow(request)
            return await self.handle(request)

        return Starlette(routes=[
            Route("/v1/completions", route, methods=["POST"]),
            Route("/v1/chat/completions", route, methods=["POST"]),
        ])


@pytest.fixture
def faults():
    server = FaultServer()
    base_url, stop = start_in_thread(server.app())
    server.base_url = base_url
    yield server
    stop()


def fast_client(faults: FaultServer, **overrides) -> OpenAICompatibleLLM:
    settings = dict(max_retries=3, backoff_s=0.01, timeout_s=5, api_key_env="ALIGNLAB_TEST_KEY")
    return OpenAICompatibleLLM(faults.base_url, "fake", **{**settings, **overrides})


def test_5xx_is_retried_until_it_succeeds(faults):
    assert fast_client(faults).complete(["flaky"], GREEDY) == ["ok"]
    assert faults.count("flaky") == 3


def test_timeout_fails_its_item_and_the_batch_goes_on(faults):
    start = time.monotonic()
    results = fast_client(faults, timeout_s=0.3, max_retries=1).complete(["fine", "sleep", "fine too"], GREEDY)
    assert results[0] == "ok" and results[2] == "ok"
    error = results[1]
    assert isinstance(error, LLMError) and "timed out" in error.message and "timeout 0.3" in error.message
    assert error.attempts == 2 and "2 attempts" in error.message and error.details["cause"] == "timeout"
    assert time.monotonic() - start < 3


def test_malformed_answers_are_retried_then_reported(faults):
    truncated, empty = fast_client(faults, max_retries=2).complete(["truncated", "no choices"], GREEDY)
    for error, prompt in ((truncated, "truncated"), (empty, "no choices")):
        assert isinstance(error, LLMError) and "malformed" in error.message
        assert error.attempts == 3 and faults.count(prompt) == 3
    assert "JSON" in truncated.message and "choices[0]" in empty.message


def test_missing_candidate_fails_only_its_item(faults):
    letters, other, content = fast_client(faults).next_token_logprobs(["letters", "other", "content format"], ["A", "B"])
    assert content == {"A": pytest.approx(-0.3), "B": pytest.approx(-1.0)}
    assert letters["A"] == pytest.approx(math.log(math.exp(-0.5) + math.exp(-2.0)))
    assert letters["B"] == pytest.approx(-1.5)
    assert isinstance(other, LLMError)
    assert "no log-prob for candidate 'A' in the top 20" in other.message
    assert other.attempts == 1 and faults.count("other") == 1  # a definite answer: not retried


def test_4xx_is_not_retried_and_names_the_status(faults):
    (error,) = fast_client(faults).chat([[{"role": "user", "content": "unauthorised"}]], GREEDY)
    assert isinstance(error, LLMError) and "HTTP 401" in error.message
    assert error.details["status"] == 401 and error.attempts == 1
    assert faults.count("unauthorised") == 1


def test_no_more_than_max_concurrency_requests_in_flight(faults):
    faults.delay_s = 0.1
    prompts = [f"item {i}" for i in range(12)]
    assert fast_client(faults, max_concurrency=3).complete(prompts, GREEDY) == ["ok"] * 12
    assert 2 <= faults.peak <= 3


def test_cache_makes_a_rerun_free_and_keeps_errors_out(faults, tmp_path):
    path = tmp_path / "calls.sqlite"
    prompts = ["one", "two", "one", "three"]
    first = fast_client(faults, cache=CallCache(path)).complete(prompts + ["unauthorised"], GREEDY)
    assert first[:4] == ["ok"] * 4 and isinstance(first[4], LLMError)
    assert faults.count("one") == 1  # identical items in a batch are asked once
    seen = len(faults.requests)
    rerun = fast_client(faults, cache=CallCache(path))  # a new run on the same file
    assert rerun.complete(prompts, GREEDY) == ["ok"] * 4
    assert len(faults.requests) == seen
    assert isinstance(rerun.complete(["unauthorised"], GREEDY)[0], LLMError)  # errors are asked again
    assert len(faults.requests) == seen + 1
    rerun.complete(["one"], GenerationSettings(max_tokens=6, seed=9))  # other settings: another item
    assert faults.count("one") == 2


def test_api_key_is_sent_as_bearer_and_never_leaks(faults, tmp_path, monkeypatch):
    secret = "sk-test-5ecret-value"
    monkeypatch.setenv("ALIGNLAB_TEST_KEY", secret)
    cache = CallCache(tmp_path / "calls.sqlite")
    client = fast_client(faults, cache=cache)
    results = client.complete(["one", "unauthorised"], GREEDY)
    results += client.next_token_logprobs(["letters", "other"], ["A"])
    assert faults.auth and all(header == f"Bearer {secret}" for header in faults.auth)
    errors = [r for r in results if isinstance(r, LLMError)]
    assert len(errors) == 2
    for error in errors:
        assert secret not in error.message and secret not in str(error.details)
    assert "[redacted]" in errors[0].message  # the server echoed it; the client hid it
    assert secret not in repr(client) and secret not in repr(cache)
    files = list(tmp_path.iterdir())  # the database and its WAL files
    assert len(cache) == 2 and any(f.name.endswith("-wal") for f in files)
    for stored in files:
        assert secret.encode() not in stored.read_bytes()
    monkeypatch.delenv("ALIGNLAB_TEST_KEY")
    client.complete(["two"], GREEDY)
    assert faults.auth[-1] is None  # read at call time: no key, no header
