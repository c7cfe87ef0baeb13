"""A small OpenAI-compatible HTTP server for a local model (`LocalLLM`), run with uvicorn.

Endpoints (under /v1): `GET /models`, `POST /completions` (the legacy format: `prompt` a string
or a list of strings, `max_tokens` (16 by default, as OpenAI), `temperature`, `top_p`, `stop`,
`seed`, and `logprobs: k` for the k most likely tokens at each generated position) and
`POST /chat/completions` (`messages`, `max_tokens` / `max_completion_tokens`, `temperature`,
`top_p`, `stop`, `seed`, `logprobs: true` with `top_logprobs: k`). Enough for
`OpenAICompatibleLLM` and for standard OpenAI clients; not supported (answered 400): streaming,
`n > 1`, `echo`, token-id prompts, tools. Also `GET /health`.

Choices:
- Log-probs are the model's raw ones (before temperature and top-p), as vLLM reports by default.
  Token texts are each token decoded alone; two tokens that decode to the same text (e.g. partial
  UTF-8 bytes) keep the more likely one. The chosen token is listed among each step's
  alternatives. `text_offset` counts from the start of the completion.
- No `seed` in a request means a random one, as with OpenAI; with a seed, a sampled answer is
  reproducible (see `LocalLLM`).
- Concurrent requests are batched: while the model works on one batch, arriving requests queue,
  and those with the same settings go together into the next one (one model call at a time).
- `api_key` (or `serve(api_key_env=...)`) makes every request need `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import random
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from alignlab.feedback.llm.base import GenerationSettings, LLMError
from alignlab.feedback.llm.local import Generation, LocalLLM

log = logging.getLogger(__name__)


class RequestError(Exception):
    """A request the server refuses, answered with OpenAI's error shape."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


@dataclass
class _Job:
    prompt: str
    settings: GenerationSettings
    top_logprobs: int
    future: asyncio.Future = field(repr=False)


class _Batcher:
    """Runs generation jobs one model call at a time, batching the jobs that queued meanwhile."""

    def __init__(self, llm: LocalLLM, max_batch: int):
        self.llm, self.max_batch = llm, max_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None

    async def generate(self, prompts: list[str], settings: GenerationSettings, top_logprobs: int) -> list[Generation | LLMError]:
        if self._worker is None:  # started on first use, on the server's own event loop
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        loop = asyncio.get_running_loop()
        jobs = [_Job(p, settings, top_logprobs, loop.create_future()) for p in prompts]
        for job in jobs:
            self._queue.put_nowait(job)
        return list(await asyncio.gather(*(job.future for job in jobs)))

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            pending = [await self._queue.get()]
            while len(pending) < self.max_batch and not self._queue.empty():
                pending.append(self._queue.get_nowait())
            groups: dict[tuple, list[_Job]] = {}
            for job in pending:
                groups.setdefault((job.settings, job.top_logprobs), []).append(job)
            for (settings, top), jobs in groups.items():
                try:
                    results = await asyncio.to_thread(self.llm.generate, [j.prompt for j in jobs], settings, top)
                except Exception as err:  # a bug or a broken model: fail these requests, keep serving
                    log.exception("generation failed")
                    results = [LLMError(f"generation failed: {type(err).__name__}: {err}", details={"cause": "model"})] * len(jobs)
                for job, result in zip(jobs, results):
                    if not job.future.done():  # the client may have gone away
                        job.future.set_result(result)


def make_app(
    llm: LocalLLM,
    model_name: str | None = None,
    *,
    max_logprobs: int = 20,
    default_max_tokens: int = 512,
    max_batch: int | None = None,
    api_key: str | None = None,
) -> Starlette:
    """The Starlette app serving `llm` under the model name `model_name` (default: the model
    directory's name). Requests naming another model get 404, as from vLLM."""
    served = model_name or (Path(llm.source).name if llm.source else llm.name)
    batcher = _Batcher(llm, max_batch or llm.batch_size)
    created = int(time.time())

    def authorised(request: Request) -> bool:
        if api_key is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode())

    def endpoint(handler: Callable[[dict], Any]) -> Callable:
        async def run(request: Request) -> JSONResponse:
            try:
                if not authorised(request):
                    raise RequestError("invalid or missing API key", status=401, code="invalid_api_key")
                body = await _json_body(request) if request.method == "POST" else {}
                if request.method == "POST":
                    _check_model(body, served)
                return JSONResponse(await handler(body))
            except RequestError as err:
                return err.response()
        return run

    async def models(_: dict) -> dict:
        return {"object": "list", "data": [{"id": served, "object": "model", "created": created, "owned_by": "alignlab"}]}

    async def health(_: dict) -> dict:
        return {"status": "ok"}

    async def completions(body: dict) -> dict:
        prompts = _prompts(body)
        if body.get("echo"):  # scoring: the log-prob of every token of the prompt given what precedes it
            choices = [{"index": i, "text": p, "finish_reason": "length", "logprobs": _echo_logprobs(llm, p)}
                       for i, p in enumerate(prompts)]
            return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                    "model": served, "choices": choices}
        settings = _settings(body, default_max_tokens=16)
        top = _int_field(body, "logprobs", 0, 0, max_logprobs) if body.get("logprobs") is not None else None
        results = _unwrap(await batcher.generate(prompts, settings, top or 0))
        choices = [
            {"index": i, "text": g.text, "finish_reason": g.finish_reason,
             "logprobs": _legacy_logprobs(llm, g) if top is not None else None}
            for i, g in enumerate(results)
        ]
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": served, "choices": choices, "usage": _usage(results)}

    async def chat_completions(body: dict) -> dict:
        messages = _messages(body)
        prompt = llm.render_chat(messages)
        if isinstance(prompt, LLMError):
            raise RequestError(prompt.message, param="messages")
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
            body = {**body, "max_tokens": body["max_completion_tokens"]}
        room = llm.context_length - len(llm.encode(prompt))
        settings = _settings(body, default_max_tokens=max(1, min(default_max_tokens, room)))
        want_logprobs = body.get("logprobs") is True
        top = _int_field(body, "top_logprobs", 0, 0, max_logprobs) if want_logprobs else 0
        (generation,) = _unwrap(await batcher.generate([prompt], settings, top))
        choice = {"index": 0, "message": {"role": "assistant", "content": generation.text},
                  "finish_reason": generation.finish_reason,
                  "logprobs": _chat_logprobs(llm, generation) if want_logprobs else None}
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": served, "choices": [choice], "usage": _usage([generation])}

    @asynccontextmanager
    async def lifespan(_: Starlette):
        yield
        await batcher.stop()

    routes = [
        Route("/v1/models", endpoint(models), methods=["GET"]),
        Route("/health", endpoint(health), methods=["GET"]),
        Route("/v1/completions", endpoint(completions), methods=["POST"]),
        Route("/v1/chat/completions", endpoint(chat_completions), methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def serve(
    model_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    device: str | None = None,
    dtype: str = "float32",
    batch_size: int = 16,
    model_name: str | None = None,
    api_key_env: str | None = None,
    log_level: str = "info",
) -> None:
    """Load the model at `model_path` and serve it until interrupted (port 0: any free port;
    uvicorn prints the one it got). With `api_key_env`, the key in that environment variable is
    required from clients."""
    llm = LocalLLM(model_path, device=device, batch_size=batch_size, dtype=dtype)
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ValueError(f"environment variable {api_key_env} is not set; it should hold the API key clients must send")
    app = make_app(llm, model_name, api_key=api_key)
    log.info("serving %s (OpenAI-compatible base URL http://%s:%s/v1)", model_path, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def start_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                    start_timeout_s: float = 30.0) -> tuple[str, Callable[[], None]]:
    """Serve `app` with uvicorn in a background thread; returns the base URL (".../v1") and a
    function that stops the server and waits for the thread."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{host}:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server on {host}:{port} did not start (see uvicorn's log above)")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://{host}:{bound}/v1", stop


# ---------------------------------------------------------------------------------------------
# Request fields


async def _json_body(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except ValueError as err:
        raise RequestError(f"the request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if body.get("stream"):
        raise RequestError("streaming is not supported", param="stream")
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported", param="n")
    if body.get("echo") and body.get("max_tokens") != 0:
        raise RequestError("echo is supported for scoring a text only (max_tokens 0)", param="echo")
    return body


def _check_model(body: dict, served: str) -> None:
    asked = body.get("model")
    if asked is not None and asked != served:
        raise RequestError(f"the model `{asked}` does not exist; this server serves `{served}`",
                           status=404, param="model", code="model_not_found")


def _int_field(body: dict, name: str, default: int, low: int, high: int | None = None) -> int:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise RequestError(f"`{name}` must be an integer {bounds}, got {value!r}", param=name)
    return value


def _float_field(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise RequestError(f"`{name}` must be a number between {low} and {high}, got {value!r}", param=name)
    return float(value)


def _settings(body: dict, default_max_tokens: int) -> GenerationSettings:
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("`stop` must be a string or a list of non-empty strings", param="stop")
    top_p = _float_field(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise RequestError("`top_p` must be above 0", param="top_p")
    seed = body.get("seed")
    if seed is None:
        seed = random.randrange(2**31)
    elif not isinstance(seed, int) or isinstance(seed, bool):
        raise RequestError(f"`seed` must be an integer, got {seed!r}", param="seed")
    return GenerationSettings(
        max_tokens=_int_field(body, "max_tokens", default_max_tokens, 1),
        temperature=_float_field(body, "temperature", 1.0, 0.0, 2.0),
        top_p=top_p, stop=tuple(stop), seed=seed,
    )


def _prompts(body: dict) -> list[str]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    raise RequestError("`prompt` must be a string or a non-empty list of strings (token ids are not supported)",
                       param="prompt")


def _messages(body: dict) -> list[dict]:
    """The messages with text content; a content given as a list of parts must be text parts."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("`messages` must be a non-empty list", param="messages")
    plain = []
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f"messages[{k}] must be an object with a `role`", param="messages")
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise RequestError(f"messages[{k}].content: only text parts are supported", param="messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise RequestError(f"messages[{k}].content must be a string", param="messages")
        plain.append({"role": message["role"], "content": content})
    return plain


def _unwrap(results: list[Generation | LLMError]) -> list[Generation]:
    for result in results:
        if isinstance(result, LLMError):
            status = 400 if result.details.get("cause") == "input" else 500
            raise RequestError(result.message, status=status)
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Answer fields


def _usage(generations: list[Generation]) -> dict:
    prompt = sum(g.prompt_tokens for g in generations)
    completion = sum(g.completion_tokens for g in generations)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _token_text(llm: LocalLLM, token_id: int) -> str:
    return llm.tokenizer.decode([token_id])


def _alternatives(llm: LocalLLM, chosen_id: int, chosen_logp: float, top: list[tuple[int, float]]) -> dict[str, float]:
    """{token text: log-prob} of a step's most likely tokens and the chosen one (more likely first wins)."""
    alternatives: dict[str, float] = {}
    for token_id, logp in sorted([*top, (chosen_id, chosen_logp)], key=lambda pair: -pair[1]):
        alternatives.setdefault(_token_text(llm, token_id), logp)
    return alternatives


def _legacy_logprobs(llm: LocalLLM, generation: Generation) -> dict:
    tokens = [_token_text(llm, t) for t in generation.token_ids]
    offsets = [len(llm.tokenizer.decode(generation.token_ids[:k], skip_special_tokens=True)) for k in range(len(tokens))]
    top = [
        _alternatives(llm, token_id, logp, alternatives)
        for token_id, logp, alternatives in zip(generation.token_ids, generation.token_logprobs, generation.top_logprobs)
    ]
    return {"tokens": tokens, "token_logprobs": generation.token_logprobs, "top_logprobs": top, "text_offset": offsets}


def _echo_logprobs(llm: LocalLLM, text: str) -> dict:
    ids, logps = llm.prompt_logprobs(text)
    offsets = [len(llm.tokenizer.decode(ids[:k], skip_special_tokens=True)) for k in range(len(ids))]
    return {"tokens": [_token_text(llm, t) for t in ids], "token_logprobs": logps, "top_logprobs": None,
            "text_offset": offsets}


def _chat_logprobs(llm: LocalLLM, generation: Generation) -> dict:
    def entry(text: str, logp: float) -> dict:
        return {"token": text, "logprob": logp, "bytes": list(text.encode("utf-8"))}

    content = []
    for token_id, logp, alternatives in zip(generation.token_ids, generation.token_logprobs, generation.top_logprobs):
        top = [entry(_token_text(llm, t), lp) for t, lp in alternatives]
        content.append({**entry(_token_text(llm, token_id), logp), "top_logprobs": top})
    return {"content": content}
