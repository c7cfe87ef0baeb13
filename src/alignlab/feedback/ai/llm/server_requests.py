"""Reading and checking the JSON of an OpenAI-style request; a bad one raises `RequestError`."""

from __future__ import annotations

import json
import random
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse

from alignlab.feedback.ai.llm.base import GenerationSettings, LLMError
from alignlab.feedback.ai.llm.generation import Generation


class RequestError(Exception):
    """A request the server refuses, answered with OpenAI's error shape."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


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


def refuse_unsupported(body: dict, endpoint: str) -> None:
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


async def json_body(request: Request) -> dict:
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


def wants_usage(body: dict) -> bool:
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise RequestError("`stream_options` may hold `include_usage` only", param="stream_options")
    return bool(options.get("include_usage"))


def check_model(body: dict, served: str) -> None:
    asked = body.get("model")
    if asked is not None and asked != served:
        raise RequestError(f"the model `{asked}` does not exist; this server serves `{served}`",
                           status=404, param="model", code="model_not_found")


def int_field(body: dict, name: str, default: int, low: int, high: int | None = None) -> int:
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


def generation_settings(body: dict, default_max_tokens: int) -> GenerationSettings:
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
        max_tokens=int_field(body, "max_tokens", default_max_tokens, 1),
        temperature=_float_field(body, "temperature", 1.0, 0.0, 2.0),
        top_p=top_p, stop=tuple(stop), seed=seed,
    )


def completion_prompts(body: dict) -> list[str]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    raise RequestError("`prompt` must be a string or a non-empty list of strings (token ids are not supported)",
                       param="prompt")


def chat_messages(body: dict) -> list[dict]:
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


def unwrap(results: list[Generation | LLMError]) -> list[Generation]:
    """The generations, or a `RequestError` for the first failure (400 when the input caused it)."""
    for result in results:
        if isinstance(result, LLMError):
            status = 400 if result.details.get("cause") == "input" else 500
            raise RequestError(result.message, status=status)
    return results  # type: ignore[return-value]
