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
- Behind a guard (`serve(gate=...)`, `alignlab serve-llm --guard-input/--guard-output`), a request
  the input classifier flags and an answer the streaming output classifier stops are answered with
  the guard's message and finish_reason "content_filter", as OpenAI's filters answer.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from alignlab.feedback.ai.llm.base import LLMError
from alignlab.feedback.ai.llm.batching import Batcher
from alignlab.feedback.ai.llm.gate import ReplyGate
from alignlab.feedback.ai.llm.local import LocalLLM
from alignlab.feedback.ai.llm.server_replies import chat_logprobs, echo_logprobs, event_stream, legacy_logprobs, usage
from alignlab.feedback.ai.llm.server_requests import (
    RequestError,
    chat_messages,
    check_model,
    completion_prompts,
    generation_settings,
    int_field,
    json_body,
    refuse_unsupported,
    unwrap,
    wants_usage,
)
from alignlab.feedback.ai.llm.token_text import TokenTexts

log = logging.getLogger(__name__)


class _Endpoints:
    """The server's request handlers over one model, and the checks every request goes through."""

    def __init__(self, llm: LocalLLM, served: str, *, max_logprobs: int, default_max_tokens: int, max_batch: int,
                 api_key: str | None, max_n: int):
        self.llm, self.served = llm, served
        self.max_logprobs, self.default_max_tokens, self.max_n = max_logprobs, default_max_tokens, max_n
        self.api_key = api_key
        self.batcher = Batcher(llm, max_batch)
        self.texts = TokenTexts(llm.tokenizer)
        self.model_card = {"id": served, "object": "model", "created": int(time.time()), "owned_by": "alignlab"}

    def authorised(self, request: Request) -> bool:
        if self.api_key is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode())

    def endpoint(self, handler: Callable[[dict], Any], public: bool = False, kind: str | None = None) -> Callable:
        """A route's endpoint: the key and the request checked, then `handler` given the JSON body
        (or the path parameters of a GET); refusals answered in OpenAI's error shape."""
        async def run(request: Request):
            try:
                if not public and not self.authorised(request):
                    raise RequestError("invalid or missing API key", status=401, code="invalid_api_key")
                body = await json_body(request) if request.method == "POST" else dict(request.path_params)
                if kind is not None:
                    refuse_unsupported(body, kind)
                    check_model(body, self.served)
                answer = await handler(body)
                return answer if isinstance(answer, StreamingResponse) else JSONResponse(answer)
            except RequestError as err:
                return err.response()
        return run

    async def models(self, _: dict) -> dict:
        return {"object": "list", "data": [self.model_card]}

    async def model(self, params: dict) -> dict:
        if params["model_id"] != self.served:
            raise RequestError(f"the model `{params['model_id']}` does not exist; this server serves `{self.served}`",
                               status=404, param="model", code="model_not_found")
        return self.model_card

    async def health(self, _: dict) -> dict:
        return {"status": "ok"}

    async def completions(self, body: dict):
        prompts = completion_prompts(body)
        if body.get("echo"):  # scoring: the log-prob of every token of the prompt given what precedes it
            choices = [{"index": i, "text": p, "finish_reason": "length",
                        "logprobs": echo_logprobs(self.llm, self.texts, p)} for i, p in enumerate(prompts)]
            return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                    "model": self.served, "choices": choices}
        settings = generation_settings(body, default_max_tokens=16)
        top = int_field(body, "logprobs", 0, 0, self.max_logprobs) if body.get("logprobs") is not None else None
        n = int_field(body, "n", 1, 1, self.max_n)
        results = [unwrap(per_prompt) for per_prompt in await self.batcher.generate(prompts, settings, top or 0, n)]
        answers = [g for per_prompt in results for g in per_prompt]  # choice index = prompt * n + k, as OpenAI
        reply = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                 "model": self.served}
        if body.get("stream"):
            return event_stream(reply, answers, self.texts, top, chat=False, include_usage=wants_usage(body), n=n)
        choices = [{"index": i, "text": g.text, "finish_reason": g.finish_reason,
                    "logprobs": legacy_logprobs(self.texts, g) if top is not None else None}
                   for i, g in enumerate(answers)]
        return {**reply, "choices": choices, "usage": usage(answers, n)}

    async def chat_completions(self, body: dict):
        prompt = self.llm.render_chat(chat_messages(body))
        if isinstance(prompt, LLMError):
            raise RequestError(prompt.message, param="messages")
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
            body = {**body, "max_tokens": body["max_completion_tokens"]}
        room = self.llm.context_length - len(self.llm.encode(prompt))
        settings = generation_settings(body, default_max_tokens=max(1, min(self.default_max_tokens, room)))
        want_logprobs = _wants_chat_logprobs(body)
        top = int_field(body, "top_logprobs", 0, 0, self.max_logprobs) if want_logprobs else 0
        n = int_field(body, "n", 1, 1, self.max_n)
        (answers,) = [unwrap(per_prompt) for per_prompt in await self.batcher.generate([prompt], settings, top, n)]
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.served}
        if body.get("stream"):
            return event_stream({**reply, "object": "chat.completion.chunk"}, answers, self.texts,
                                top if want_logprobs else None, chat=True, include_usage=wants_usage(body), n=n)
        choices = [{"index": k, "message": {"role": "assistant", "content": g.text}, "finish_reason": g.finish_reason,
                    "logprobs": chat_logprobs(self.texts, g) if want_logprobs else None}
                   for k, g in enumerate(answers)]
        return {**reply, "object": "chat.completion", "choices": choices, "usage": usage(answers, n)}

    @asynccontextmanager
    async def lifespan(self, _: Starlette):
        yield
        await self.batcher.stop()

    async def http_error(self, request: Request, exc: HTTPException) -> JSONResponse:
        # unknown routes and wrong methods in OpenAI's error shape, which clients parse
        message = {404: f"no route {request.url.path}", 405: f"method {request.method} is not allowed on {request.url.path}"}
        return RequestError(message.get(exc.status_code, str(exc.detail)), status=exc.status_code).response()


def _wants_chat_logprobs(body: dict) -> bool:
    """Whether a chat request asks for log-probs (`logprobs: true`; `top_logprobs` only with it)."""
    if body.get("logprobs") is not None and not isinstance(body["logprobs"], bool):
        raise RequestError("`logprobs` must be true or false in a chat completion (top_logprobs gives k)",
                           param="logprobs")
    want_logprobs = body.get("logprobs") is True
    if body.get("top_logprobs") is not None and not want_logprobs:
        raise RequestError("`top_logprobs` needs `logprobs: true`", param="top_logprobs")
    return want_logprobs


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
    handlers = _Endpoints(llm, served, max_logprobs=max_logprobs, default_max_tokens=default_max_tokens,
                          max_batch=max_batch or llm.batch_size, api_key=api_key, max_n=max_n)
    endpoint = handlers.endpoint
    routes = [
        Route("/v1/models", endpoint(handlers.models), methods=["GET"]),
        Route("/v1/models/{model_id:path}", endpoint(handlers.model), methods=["GET"]),
        Route("/health", endpoint(handlers.health, public=True), methods=["GET"]),
        Route("/v1/completions", endpoint(handlers.completions, kind="completions"), methods=["POST"]),
        Route("/v1/chat/completions", endpoint(handlers.chat_completions, kind="chat"), methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=handlers.lifespan,
                     exception_handlers={404: handlers.http_error, 405: handlers.http_error})


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
    gate: Callable[[LocalLLM], ReplyGate] | None = None,
) -> None:
    """Load the model at `model_path` and serve it until interrupted (port 0: any free port;
    uvicorn prints the one it got). With `api_key_env`, the key in that environment variable is
    required from clients. `gate(llm)` builds the guard every answer of the loaded model goes through."""
    llm = LocalLLM(model_path, device=device, batch_size=batch_size, dtype=dtype)
    if gate is not None:
        llm.gate = gate(llm)
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
