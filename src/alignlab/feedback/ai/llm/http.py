"""`OpenAICompatibleLLM`: the LLM backend for any server speaking OpenAI's HTTP API (vLLM,
llama.cpp's server, OpenAI itself, alignlab's own `alignlab.feedback.ai.llm.server`).

- `chat` posts to `{base_url}/chat/completions`, `complete` to `{base_url}/completions`, one
  request per item.
- `next_token_logprobs` posts to `{base_url}/completions` with `max_tokens=1`, `temperature=0`
  and `logprobs=top_logprobs` (20 by default), and reads the legacy completions field
  `choices[0].logprobs.top_logprobs[0]` (a {token text: log-prob} map of the most likely first
  tokens). A server sees tokens, not the caller's strings, so each candidate is matched with and
  without a leading space ("A" and " A"): which of the two the prompt's formatting makes the
  model produce is not knowable from outside, and both spell the same answer, so the candidate's
  log-prob is the log-sum-exp of the variants present (the probability that the next token is
  either). A candidate with no variant among the returned alternatives is then scored exactly:
  prompt + candidate is sent with `echo: true, max_tokens: 0` (how vLLM and the legacy OpenAI API
  return the log-probs of a given text) and the candidate's log-prob is the sum over the tokens
  from the prompt's end on. Only when that fails too (a server without echo, or a token that
  straddles the prompt's end) does the item become an `LLMError`: guessing would bias labels.

The API key is read from the environment variable named by `api_key_env` at each call (never
stored on the object) and sent as `Authorization: Bearer ...`; no key set means no header (local
servers need none). The key never enters logs, errors, reprs or cache keys.

At most `max_concurrency` requests are in flight (a thread pool of that size). A request is
retried with exponential backoff (`backoff_s`, doubling, a little jitter, a server's Retry-After
honoured up to `max_backoff_s`) on connection errors, timeouts, HTTP 429 and 5xx, and answers that
are not JSON or lack the expected fields; other 4xx answers are final. After `max_retries` retries
the item becomes an `LLMError` naming the cause and the number of attempts, and the batch goes on.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Sequence

import httpx

from alignlab.feedback.ai.llm.base import (
    GenerationSettings,
    LLMError,
    LogprobResult,
    Message,
    TextResult,
    check_candidates,
)
from alignlab.feedback.ai.llm.cache import CachedBatch, CallCache

log = logging.getLogger(__name__)

_EXCERPT = 300  # characters of an error body quoted in an LLMError


class _Retryable(Exception):
    """A failed attempt worth trying again; `cause` and `details` describe it for the final error."""

    def __init__(self, message: str, cause: str, retry_after: float | None = None, **details: Any):
        super().__init__(message)
        self.cause, self.retry_after, self.details = cause, retry_after, details


class OpenAICompatibleLLM:
    """An OpenAI-compatible HTTP server as an `LLMBackend` (see the module doc)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 60,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        cache: CallCache | None = None,
        *,
        top_logprobs: int = 20,
        max_backoff_s: float = 30.0,
        name: str | None = None,
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be positive, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.top_logprobs = top_logprobs
        self.cache = cache
        self.name = name or f"{model}@{self.base_url}"
        self.identity = f"openai-compatible|{self.base_url}|{model}"
        self._client: httpx.Client | None = None

    def __repr__(self) -> str:
        return (f"OpenAICompatibleLLM(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, max_concurrency={self.max_concurrency})")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "OpenAICompatibleLLM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -----------------------------------------------------------------------------------------
    # The LLMBackend calls

    def complete(self, prompts: Sequence[str], settings: GenerationSettings) -> list[TextResult]:
        bodies = [{"model": self.model, "prompt": p, **_sampling(settings)} for p in prompts]
        return self._run("complete", "/completions", bodies, bodies, _completion_text)

    def chat(self, conversations: Sequence[list[Message]], settings: GenerationSettings) -> list[TextResult]:
        bodies = [{"model": self.model, "messages": list(c), **_sampling(settings)} for c in conversations]
        return self._run("chat", "/chat/completions", bodies, bodies, _chat_text)

    def next_token_logprobs(self, prompts: Sequence[str], candidates: Sequence[str]) -> list[LogprobResult]:
        candidates = check_candidates(candidates)
        bodies = [
            {"model": self.model, "prompt": p, "max_tokens": 1, "temperature": 0, "logprobs": self.top_logprobs}
            for p in prompts
        ]
        payloads = [{"request": body, "candidates": candidates} for body in bodies]
        top_n = self.top_logprobs

        def parse(data: Any) -> LogprobResult:
            return _candidate_logprobs(_first_top_logprobs(data), candidates, top_n)

        results = self._run("next_token_logprobs", "/completions", bodies, payloads, parse)
        missing = [i for i, r in enumerate(results) if isinstance(r, LLMError) and r.details.get("cause") == "missing_logprob"]
        if missing:  # a candidate outside the top alternatives: score it exactly by echoing the prompt
            scored = self._echo_logprobs([prompts[i] for i in missing], candidates)
            for i, value in zip(missing, scored):
                if isinstance(value, LLMError):
                    value = LLMError(f"{results[i].message}; scoring by echo failed too: {value.message}",
                                     attempts=results[i].attempts, details=results[i].details)
                results[i] = value
        return results

    def _echo_logprobs(self, prompts: Sequence[str], candidates: list[str]) -> list[LogprobResult]:
        """log p(candidate | prompt) from the server's log-probs of the prompt tokens themselves
        (`echo` with `max_tokens` 0: how vLLM and the legacy OpenAI API score a given text)."""
        pairs = [(p, c) for p in prompts for c in candidates]
        bodies = [{"model": self.model, "prompt": p + c, "max_tokens": 0, "echo": True, "logprobs": 0, "temperature": 0}
                  for p, c in pairs]
        values = self._run("echo_logprob", "/completions", bodies, bodies, _echoed_logprobs)
        out: list[LogprobResult] = []
        for start in range(0, len(pairs), len(candidates)):
            found: dict[str, float] | LLMError = {}
            for (prompt, candidate), data in zip(pairs[start : start + len(candidates)], values[start : start + len(candidates)]):
                value = data if isinstance(data, LLMError) else _echoed_suffix_logprob(data, len(prompt), candidate)
                if isinstance(value, LLMError):
                    found = value
                    break
                found[candidate] = value
            out.append(found)
        return out

    # -----------------------------------------------------------------------------------------

    def _run(self, method: str, path: str, bodies: list[dict], payloads: list[Any],
             parse: Callable[[Any], Any]) -> list[Any]:
        """Send each body not already cached, at most max_concurrency at a time; one result per item."""
        batch = CachedBatch(self.cache, self.identity, method, payloads)
        if not batch.todo:
            return batch.results()
        key = os.environ.get(self.api_key_env) if self.api_key_env else None  # read now, kept nowhere
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        workers = min(self.max_concurrency, len(batch.todo))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="alignlab-llm-http") as pool:
            futures = {pool.submit(self._call, path, bodies[i], headers, parse, key): i for i in batch.todo}
            for future in as_completed(futures):
                batch.record(futures[future], future.result())
        return batch.results()

    def _call(self, path: str, body: dict, headers: dict, parse: Callable[[Any], Any], key: str | None) -> Any:
        """One item: post, retrying what may succeed later; the parsed answer or an LLMError."""
        url = self.base_url + path
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                result = self._attempt(url, body, headers, parse)
            except _Retryable as failure:
                message = _redact(str(failure), key)
                if attempt == attempts:
                    return LLMError(f"{message} (gave up after {attempt} attempts)", attempts=attempt,
                                    details={"cause": failure.cause, **failure.details})
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(1.0, 1.25)
                if failure.retry_after is not None:
                    delay = max(delay, min(failure.retry_after, self.max_backoff_s))
                log.warning("%s; retrying in %.2f s (attempt %d of %d)", message, delay, attempt, attempts)
                time.sleep(delay)
                continue
            if isinstance(result, LLMError):
                result.attempts = attempt
                result.message = _redact(result.message, key)
            return result
        raise AssertionError("unreachable")

    def _attempt(self, url: str, body: dict, headers: dict, parse: Callable[[Any], Any]) -> Any:
        try:
            response = self._http().post(url, json=body, headers=headers)
        except httpx.TimeoutException as err:
            raise _Retryable(f"request to {url} timed out (timeout {self.timeout_s} s: {type(err).__name__})",
                             "timeout") from None
        except httpx.TransportError as err:
            raise _Retryable(f"connection error for {url}: {type(err).__name__}: {err}", "connection") from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status} from {url}: {_excerpt(response)}", "status",
                             retry_after=_retry_after(response), status=status)
        if status >= 400:  # the request itself is wrong (auth, unknown model, bad field): final
            return LLMError(f"HTTP {status} from {url}: {_excerpt(response)}", details={"cause": "status", "status": status})
        try:
            data = response.json()
        except ValueError as err:
            raise _Retryable(f"malformed JSON in the answer from {url} ({len(response.content)} bytes): {err}",
                             "malformed") from None
        try:
            return parse(data)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise _Retryable(f"malformed answer from {url}: {err}", "malformed") from None

    def _http(self) -> httpx.Client:
        if self._client is None:
            limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
            self._client = httpx.Client(timeout=httpx.Timeout(self.timeout_s), limits=limits)
        return self._client


# ---------------------------------------------------------------------------------------------
# Requests and answers


def _sampling(settings: GenerationSettings) -> dict:
    body: dict[str, Any] = {
        "max_tokens": settings.max_tokens, "temperature": settings.temperature, "top_p": settings.top_p,
        "seed": settings.seed,
    }
    if settings.stop:
        body["stop"] = list(settings.stop)
    return body


def _first_choice(data: Any) -> dict:
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise KeyError("no choices[0] in the answer")
    return choices[0]


def _completion_text(data: Any) -> str:
    text = _first_choice(data).get("text")
    if not isinstance(text, str):
        raise KeyError("choices[0].text is missing or not a string")
    return text


def _chat_text(data: Any) -> str:
    message = _first_choice(data).get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise KeyError("choices[0].message.content is missing or not a string")
    return content


def _first_top_logprobs(data: Any) -> dict[str, float]:
    """{token text: log-prob} of the first position: the legacy `top_logprobs[0]` map, or (as some
    llama.cpp versions answer) the chat-style `content[0].top_logprobs` list of {token, logprob}."""
    logprobs = _first_choice(data).get("logprobs")
    if not isinstance(logprobs, dict):
        raise KeyError("choices[0].logprobs is missing (does the server support logprobs on /completions?)")
    top = logprobs.get("top_logprobs")
    if isinstance(top, list) and top and isinstance(top[0], dict):
        return {str(token): float(value) for token, value in top[0].items()}
    content = logprobs.get("content")
    if isinstance(content, list) and content and isinstance(content[0], dict):
        listed = content[0].get("top_logprobs")
        if isinstance(listed, list):
            found: dict[str, float] = {}
            for entry in listed:
                found.setdefault(str(entry["token"]), float(entry["logprob"]))
            return found
    raise KeyError("choices[0].logprobs.top_logprobs[0] is missing (does the server support legacy logprobs?)")


def _candidate_logprobs(top: dict[str, float], candidates: list[str], top_n: int) -> LogprobResult:
    """Each candidate's log-prob: log-sum-exp over its spellings with and without a leading space
    that the server listed; an LLMError naming the first candidate with neither."""
    found: dict[str, float] = {}
    for candidate in candidates:
        bare = candidate.removeprefix(" ")
        values = [top[v] for v in dict.fromkeys((bare, " " + bare)) if v in top and math.isfinite(top[v])]
        if not values:
            return LLMError(
                f"no log-prob for candidate {candidate!r} in the top {top_n} alternatives the server returned "
                f"(neither {bare!r} nor {' ' + bare!r} is among {len(top)} listed)",
                details={"cause": "missing_logprob", "candidate": candidate, "found": found},
            )
        peak = max(values)
        found[candidate] = peak + math.log(sum(math.exp(v - peak) for v in values))
    return found


def _echoed_logprobs(data: Any) -> dict:
    """The echoed tokens, their character offsets and log-probs (a KeyError when absent: retried)."""
    logprobs = data["choices"][0]["logprobs"]
    offsets, values = logprobs["text_offset"], logprobs["token_logprobs"]
    tokens = logprobs.get("tokens") or [""] * len(offsets)
    if not (isinstance(offsets, list) and isinstance(values, list) and len(offsets) == len(values) == len(tokens)):
        raise KeyError("choices[0].logprobs.text_offset/token_logprobs of the echo answer")
    return {"text_offset": offsets, "token_logprobs": values, "tokens": tokens}


def _echoed_suffix_logprob(echoed: dict, prompt_chars: int, candidate: str) -> LogprobResult:
    """Sum of the echoed token log-probs from character `prompt_chars` on (the candidate's tokens)."""
    offsets, values, tokens = echoed["text_offset"], echoed["token_logprobs"], echoed["tokens"]
    total, seen = 0.0, False
    for offset, token, value in zip(offsets, tokens, values):
        if offset < prompt_chars < offset + len(token):
            return LLMError(f"candidate {candidate!r} shares a token with the end of the prompt; it cannot be "
                            "scored on its own", details={"cause": "missing_logprob", "candidate": candidate})
        if offset >= prompt_chars and value is not None:
            total, seen = total + float(value), True
    if not seen:
        return LLMError(f"the echo answer has no token for candidate {candidate!r}",
                        details={"cause": "missing_logprob", "candidate": candidate})
    return total


def _excerpt(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else "") if text else "(empty body)"


def _retry_after(response: httpx.Response) -> float | None:
    try:
        value = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _redact(text: str, key: str | None) -> str:
    """A server may echo what it was sent; the key must not reach an error or a log."""
    return text.replace(key, "[redacted]") if key else text
