"""A small OpenAI-compatible HTTP server for a local model (`LocalLLM`), run with uvicorn.

Endpoints: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/completions` (the legacy format:
`prompt` a string or a list of strings, `max_tokens` (16 by default, as OpenAI), `temperature`,
`top_p`, `stop`, `seed`, `n`, `stream`, `logprobs: k` for the k most likely tokens at each
generated position, `echo` with `max_tokens: 0` to score a text) and `POST /v1/chat/completions`
(`messages`, `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`, `stop`, `seed`, `n`,
`stream`, `logprobs: true` with `top_logprobs: k`). `GET /health` answers without a key.
Parameters it cannot honour (`tools`, `response_format` other than text, `logit_bias`, non-zero
penalties, `best_of`, `suffix`, token-id prompts, or any key OpenAI's API does not have) are
answered 400 naming the parameter, never silently ignored. Unknown routes and methods get
OpenAI-shaped 404/405 errors.

Choices:
- Log-probs are the model's raw ones (before temperature and top-p), as vLLM reports by default.
  Each token is reported with its own bytes (`bytes`) and a text piece; the pieces of an answer
  join back into its text (a character split over byte-level tokens is shown on the token that
  completes it: `alignlab.feedback.ai.llm.token_text`). In the legacy format two alternatives with the
  same text keep the more likely one. `text_offset` counts from the start of the completion.
- No `seed` in a request means a random one, as with OpenAI; with a seed, a sampled answer is
  reproducible (see `LocalLLM`): each row samples from its own generator, so requests with
  different seeds share a batch. Choice k of `n` uses the seed + k·1,000,003.
- Concurrent requests are batched: while the model works on one batch, arriving requests queue,
  and those whose settings differ only in their seed go together into the next one (one model
  call at a time).
- `stream: true` sends OpenAI's server-sent events (one chunk per token, then `[DONE]`; usage
  last with `stream_options: {include_usage: true}`) once the answer is generated: the batch is
  decoded as a whole, so the chunks arrive together at the end, not while the model decodes.
- `api_key` (or `serve(api_key_env=...)`) makes every request except `/health` need
  `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from alignlab.feedback.ai.llm.base import GenerationSettings, LLMError
from alignlab.feedback.ai.llm.local import Generation, LocalLLM
from alignlab.feedback.ai.llm.token_text import TokenTexts, clip_to

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
    """Runs generation jobs one model call at a time, batching the jobs that queued meanwhile.
    Jobs whose settings differ only in the seed share a call: the model samples each row with its
    own seed."""

    def __init__(self, llm: LocalLLM, max_batch: int):
        self.llm, self.max_batch = llm, max_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None

    async def generate(self, prompts: list[str], settings: GenerationSettings, top_logprobs: int,
                       n: int = 1) -> list[list[Generation | LLMError]]:
        """n answers for each prompt (choice k seeded with seed + k·1,000,003)."""
        if self._worker is None:  # started on first use, on the server's own event loop
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        loop = asyncio.get_running_loop()
        jobs = [[_Job(p, dataclasses.replace(settings, seed=(settings.seed + k * 1_000_003) % 2**63), top_logprobs,
                      loop.create_future()) for k in range(n)] for p in prompts]
        for job in (j for per_prompt in jobs for j in per_prompt):
            self._queue.put_nowait(job)
        return [list(await asyncio.gather(*(job.future for job in per_prompt))) for per_prompt in jobs]

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
                groups.setdefault((dataclasses.replace(job.settings, seed=0), job.top_logprobs), []).append(job)
            for (settings, top), jobs in groups.items():
                try:
                    results = await asyncio.to_thread(self.llm.generate, [j.prompt for j in jobs], settings, top,
                                                      [j.settings.seed for j in jobs])
                except Exception as err:  # a bug or a broken model: fail these requests, keep serving
                    log.exception("generation failed")
                    results = [LLMError(f"generation failed: {type(err).__name__}: {err}", details={"cause": "model"})] * len(jobs)
                for job, result in zip(jobs, results):
                    if not job.future.done():  # the client may have gone away
                        job.future.set_result(result)


# OpenAI parameters each endpoint honours; the ones it cannot honour are accepted only with the
# value that asks for nothing (a client library may send those).
COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed", "user",
          "logprobs"}
ALLOWED = {"completions": COMMON | {"prompt", "echo"},
           "chat": COMMON | {"messages", "max_completion_tokens", "top_logprobs"}}
NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "presence_penalty": lambda v: v == 0,
    "frequency_penalty": lambda v: v == 0,
    "logit_bias": lambda v: v == {},
    "best_of": lambda v: v == 1,
    "suffix": lambda v: v == "",
    "response_format": lambda v: v == {"type": "text"},
    "tools": lambda v: v == [],
    "tool_choice": lambda v: v == "none",
    "parallel_tool_calls": lambda v: True,  # meaningless without tools
    "store": lambda v: v is False,
    "metadata": lambda v: True,
}


def _refuse_unsupported(body: dict, endpoint: str) -> None:
    if body.get("stream_options") is not None and not body.get("stream"):
        raise RequestError("`stream_options` is only allowed with `stream: true`", param="stream_options")
    for name, value in body.items():
        if name in ALLOWED[endpoint] or value is None:
            continue
        if name in NEUTRAL:
            if NEUTRAL[name](value):
                continue
            raise RequestError(f"`{name}` is not supported by this server (got {value!r})", param=name,
                               code="unsupported_parameter")
        raise RequestError(f"unknown or unsupported parameter `{name}`", param=name, code="unsupported_parameter")


def make_app(
    llm: LocalLLM,
    model_name: str | None = None,
    *,
    max_logprobs: int = 20,
    default_max_tokens: int = 512,
    max_batch: int | None = None,
    api_key: str | None = None,
    max_n: int = 16,
) -> Starlette:
    """The Starlette app serving `llm` under the model name `model_name` (default: the model
    directory's name). Requests naming another model get 404, as from vLLM."""
    served = model_name or (Path(llm.source).name if llm.source else llm.name)
    batcher = _Batcher(llm, max_batch or llm.batch_size)
    texts = TokenTexts(llm.tokenizer)
    created = int(time.time())
    model_card = {"id": served, "object": "model", "created": created, "owned_by": "alignlab"}

    def authorised(request: Request) -> bool:
        if api_key is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode())

    def endpoint(handler: Callable[[dict], Any], public: bool = False, kind: str | None = None) -> Callable:
        async def run(request: Request):
            try:
                if not public and not authorised(request):
                    raise RequestError("invalid or missing API key", status=401, code="invalid_api_key")
                body = await _json_body(request) if request.method == "POST" else dict(request.path_params)
                if kind is not None:
                    _refuse_unsupported(body, kind)
                    _check_model(body, served)
                answer = await handler(body)
                return answer if isinstance(answer, StreamingResponse) else JSONResponse(answer)
            except RequestError as err:
                return err.response()
        return run

    async def models(_: dict) -> dict:
        return {"object": "list", "data": [model_card]}

    async def model(params: dict) -> dict:
        if params["model_id"] != served:
            raise RequestError(f"the model `{params['model_id']}` does not exist; this server serves `{served}`",
                               status=404, param="model", code="model_not_found")
        return model_card

    async def health(_: dict) -> dict:
        return {"status": "ok"}

    async def completions(body: dict):
        prompts = _prompts(body)
        if body.get("echo"):  # scoring: the log-prob of every token of the prompt given what precedes it
            choices = [{"index": i, "text": p, "finish_reason": "length", "logprobs": _echo_logprobs(llm, texts, p)}
                       for i, p in enumerate(prompts)]
            return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                    "model": served, "choices": choices}
        settings = _settings(body, default_max_tokens=16)
        top = _int_field(body, "logprobs", 0, 0, max_logprobs) if body.get("logprobs") is not None else None
        n = _int_field(body, "n", 1, 1, max_n)
        results = [_unwrap(per_prompt) for per_prompt in await batcher.generate(prompts, settings, top or 0, n)]
        answers = [g for per_prompt in results for g in per_prompt]  # choice index = prompt * n + k, as OpenAI
        reply = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                 "model": served}
        if body.get("stream"):
            return _stream(reply, answers, texts, top, chat=False, usage=_wants_usage(body), n=n)
        choices = [{"index": i, "text": g.text, "finish_reason": g.finish_reason,
                    "logprobs": _legacy_logprobs(texts, g) if top is not None else None}
                   for i, g in enumerate(answers)]
        return {**reply, "choices": choices, "usage": _usage(answers, n)}

    async def chat_completions(body: dict):
        messages = _messages(body)
        prompt = llm.render_chat(messages)
        if isinstance(prompt, LLMError):
            raise RequestError(prompt.message, param="messages")
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
            body = {**body, "max_tokens": body["max_completion_tokens"]}
        room = llm.context_length - len(llm.encode(prompt))
        settings = _settings(body, default_max_tokens=max(1, min(default_max_tokens, room)))
        if body.get("logprobs") is not None and not isinstance(body["logprobs"], bool):
            raise RequestError("`logprobs` must be true or false in a chat completion (top_logprobs gives k)",
                               param="logprobs")
        want_logprobs = body.get("logprobs") is True
        if body.get("top_logprobs") is not None and not want_logprobs:
            raise RequestError("`top_logprobs` needs `logprobs: true`", param="top_logprobs")
        top = _int_field(body, "top_logprobs", 0, 0, max_logprobs) if want_logprobs else 0
        n = _int_field(body, "n", 1, 1, max_n)
        (answers,) = [_unwrap(per_prompt) for per_prompt in await batcher.generate([prompt], settings, top, n)]
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served}
        if body.get("stream"):
            return _stream({**reply, "object": "chat.completion.chunk"}, answers, texts,
                           top if want_logprobs else None, chat=True, usage=_wants_usage(body), n=n)
        choices = [{"index": k, "message": {"role": "assistant", "content": g.text}, "finish_reason": g.finish_reason,
                    "logprobs": _chat_logprobs(texts, g) if want_logprobs else None}
                   for k, g in enumerate(answers)]
        return {**reply, "object": "chat.completion", "choices": choices, "usage": _usage(answers, n)}

    @asynccontextmanager
    async def lifespan(_: Starlette):
        yield
        await batcher.stop()

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # unknown routes and wrong methods in OpenAI's error shape, which clients parse
        message = {404: f"no route {request.url.path}", 405: f"method {request.method} is not allowed on {request.url.path}"}
        return RequestError(message.get(exc.status_code, str(exc.detail)), status=exc.status_code).response()

    routes = [
        Route("/v1/models", endpoint(models), methods=["GET"]),
        Route("/v1/models/{model_id:path}", endpoint(model), methods=["GET"]),
        Route("/health", endpoint(health, public=True), methods=["GET"]),
        Route("/v1/completions", endpoint(completions, kind="completions"), methods=["POST"]),
        Route("/v1/chat/completions", endpoint(chat_completions, kind="chat"), methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: http_error, 405: http_error})


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
    if body.get("echo") and body.get("max_tokens") != 0:
        raise RequestError("echo is supported for scoring a text only (max_tokens 0)", param="echo")
    if body.get("echo") and (body.get("stream") or body.get("n", 1) != 1):
        raise RequestError("echo (scoring) answers one choice, not streamed", param="echo")
    return body


def _wants_usage(body: dict) -> bool:
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise RequestError("`stream_options` may hold `include_usage` only", param="stream_options")
    return bool(options.get("include_usage"))


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
        unused = sorted(key for key, value in message.items() if key not in ("role", "content") and value is not None)
        if unused:  # a name, tool calls or audio this server would drop
            raise RequestError(f"messages[{k}]: `{unused[0]}` is not supported (role and content only)",
                               param="messages")
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


def _usage(generations: list[Generation], n: int = 1) -> dict:
    """Token counts; with n choices a prompt is counted once, as OpenAI does (choices are prompt-major)."""
    prompt = sum(g.prompt_tokens for g in generations[::n])
    completion = sum(g.completion_tokens for g in generations)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _steps(texts: TokenTexts, generation: Generation) -> list[dict]:
    """Per generated token: its text piece (pieces join into the answer), bytes, log-prob and the
    step's alternatives as (text, bytes, log-prob), the chosen token among them."""
    ids = generation.token_ids
    alternatives = [[t for t, _ in top] for top in generation.top_logprobs] or [[] for _ in ids]
    pieces, other_pieces = texts.pieces(ids, alternatives)
    pieces = clip_to(pieces, generation.text) if pieces else pieces
    steps = []
    for k, token_id in enumerate(ids):
        own = (pieces[k], texts.token_bytes(token_id), generation.token_logprobs[k])
        others = [(text, texts.token_bytes(t), lp) for text, (t, lp) in zip(other_pieces[k], generation.top_logprobs[k])
                  ] if generation.top_logprobs else []
        steps.append({"own": own, "top": others})
    return steps


def _offsets(pieces: list[str]) -> list[int]:
    """`text_offset`: where each piece starts in the text the pieces join into."""
    starts, at = [], 0
    for piece in pieces:
        starts.append(at)
        at += len(piece)
    return starts


def _legacy_logprobs(texts: TokenTexts, generation: Generation) -> dict:
    steps = _steps(texts, generation)
    pieces = [s["own"][0] for s in steps]
    return {"tokens": pieces, "token_logprobs": [s["own"][2] for s in steps],
            "top_logprobs": [_legacy_top(s) for s in steps], "text_offset": _offsets(pieces)}


def _legacy_top(step: dict) -> dict[str, float]:
    """{text: log-prob} of a step's alternatives, the chosen token included; of equal texts the
    more likely one is kept (the legacy format is keyed by text)."""
    alternatives: dict[str, float] = {}
    for text, _, logp in sorted([*step["top"], step["own"]], key=lambda entry: -entry[2]):
        alternatives.setdefault(text, logp)
    return alternatives


def _echo_logprobs(llm: LocalLLM, texts: TokenTexts, text: str) -> dict:
    ids, logps = llm.prompt_logprobs(text)
    pieces, _ = texts.pieces(ids)
    return {"tokens": pieces, "token_logprobs": logps, "top_logprobs": None, "text_offset": _offsets(pieces)}


def _chat_logprobs(texts: TokenTexts, generation: Generation) -> dict:
    return {"content": [_chat_entry(step) for step in _steps(texts, generation)]}


def _chat_entry(step: dict) -> dict:
    """One token of a chat answer's `logprobs.content`, with its alternatives."""
    def entry(text: str, data: bytes, logp: float) -> dict:
        return {"token": text, "logprob": logp, "bytes": list(data)}

    return {**entry(*step["own"]), "top_logprobs": [entry(*alt) for alt in step["top"]]}


def _stream(reply: dict, answers: list[Generation], texts: TokenTexts, top: int | None, chat: bool,
            usage: bool, n: int) -> StreamingResponse:
    """The answers as OpenAI's server-sent events: per choice one chunk a token, then its finish."""

    def events():
        for index, generation in enumerate(answers):
            if chat:
                yield _event(reply, {"index": index, "delta": {"role": "assistant", "content": ""},
                                     "logprobs": None, "finish_reason": None})
            steps = _steps(texts, generation)
            for step, offset in zip(steps, _offsets([s["own"][0] for s in steps])):
                text, _, logp = step["own"]
                if chat:
                    logprobs = {"content": [_chat_entry(step)]} if top is not None else None
                    choice = {"index": index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": None}
                else:
                    logprobs = ({"tokens": [text], "token_logprobs": [logp], "top_logprobs": [_legacy_top(step)],
                                 "text_offset": [offset]} if top is not None else None)
                    choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": None}
                yield _event(reply, choice)
            last = {"index": index, "finish_reason": generation.finish_reason, "logprobs": None}
            yield _event(reply, {**last, "delta": {}} if chat else {**last, "text": ""})
        if usage:
            yield f"data: {json.dumps({**reply, 'choices': [], 'usage': _usage(answers, n)})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _event(reply: dict, choice: dict) -> str:
    return f"data: {json.dumps({**reply, 'choices': [choice]})}\n\n"
