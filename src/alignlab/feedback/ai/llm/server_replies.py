"""Shaping generated answers into OpenAI's reply fields: usage, log-probs and streamed events."""

from __future__ import annotations

import json

from starlette.responses import StreamingResponse

from alignlab.feedback.ai.llm.generation import Generation
from alignlab.feedback.ai.llm.local import LocalLLM
from alignlab.feedback.ai.llm.token_text import TokenTexts, clip_to


def usage(generations: list[Generation], n: int = 1) -> dict:
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


def legacy_logprobs(texts: TokenTexts, generation: Generation) -> dict:
    """A legacy completion choice's `logprobs`: tokens, their log-probs, alternatives and offsets."""
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


def echo_logprobs(llm: LocalLLM, texts: TokenTexts, text: str) -> dict:
    """The `logprobs` of an echoed (scored) prompt: each token's log-prob given those before it."""
    ids, logps = llm.prompt_logprobs(text)
    pieces, _ = texts.pieces(ids)
    return {"tokens": pieces, "token_logprobs": logps, "top_logprobs": None, "text_offset": _offsets(pieces)}


def chat_logprobs(texts: TokenTexts, generation: Generation) -> dict:
    return {"content": [_chat_entry(step) for step in _steps(texts, generation)]}


def _chat_entry(step: dict) -> dict:
    """One token of a chat answer's `logprobs.content`, with its alternatives."""
    def entry(text: str, data: bytes, logp: float) -> dict:
        return {"token": text, "logprob": logp, "bytes": list(data)}

    return {**entry(*step["own"]), "top_logprobs": [entry(*alt) for alt in step["top"]]}


def event_stream(reply: dict, answers: list[Generation], texts: TokenTexts, top: int | None, chat: bool,
                 include_usage: bool, n: int) -> StreamingResponse:
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
            if not steps and generation.text:  # a message with no generated tokens (a guard's): one chunk
                whole = {"delta": {"content": generation.text}} if chat else {"text": generation.text}
                yield _event(reply, {"index": index, **whole, "logprobs": None, "finish_reason": None})
            last = {"index": index, "finish_reason": generation.finish_reason, "logprobs": None}
            yield _event(reply, {**last, "delta": {}} if chat else {**last, "text": ""})
        if include_usage:
            yield f"data: {json.dumps({**reply, 'choices': [], 'usage': usage(answers, n)})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _event(reply: dict, choice: dict) -> str:
    return f"data: {json.dumps({**reply, 'choices': [choice]})}\n\n"
