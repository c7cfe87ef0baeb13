"""Normalised training examples, parsed and validated from the formats the ecosystem uses.

A prompt or response is either *text* (a string) or *conversational* (a list of messages, each a
dict with a ``role`` in system/user/assistant/tool and a string ``content``). Within one example
the prompt and its responses are of the same kind.

Accepted records
----------------
SFT (`load_sft`):
    ``prompt`` + ``completion``;  ``messages`` (the last assistant message is the completion, the
    messages before it the prompt);  ``text`` (language modelling: empty prompt, the text is the
    completion).
Preferences (`load_preferences`):
    ``prompt`` + ``chosen`` + ``rejected``;  ``chosen`` + ``rejected`` without a prompt (the prompt
    is their shared beginning: the longest common message prefix, or for text the longest common
    prefix cut back to the start of a whitespace run);  ``prompt`` + ``responses`` + ``ranking``
    (best first), expanded into every ordered pair.  Optional ``label`` (probability that chosen is
    preferred, in [0, 1]) and ``margin`` (a float).
Prompts (`load_prompts`):
    ``prompt``, or ``messages`` (all of them form the prompt); the other fields are kept in `meta`.

Validation stops at the first problem and raises one DataError naming file, line and field.
A required field that is absent is reported as "missing field", one that is there as null as "is
null". An optional field (label, margin) that is null counts as absent, because Arrow-backed
sources (parquet, datasets) fill absent fields with null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

from alignlab.data.errors import DataError, Source
from alignlab.data.readers import read_records

ROLES = ("system", "user", "assistant", "tool")
Messages = list[dict]
PromptLike = Union[str, Messages]


@dataclass
class SFTExample:
    """A prompt and the completion to learn (loss on the completion only)."""

    prompt: PromptLike
    completion: PromptLike
    source: Source


@dataclass
class PreferenceExample:
    """A prompt with a preferred (`chosen`) and a dispreferred (`rejected`) response."""

    prompt: PromptLike
    chosen: PromptLike
    rejected: PromptLike
    source: Source
    label: float = 1.0  # probability that chosen ≻ rejected (soft labels in [0, 1])
    margin: float | None = None  # how much better chosen is, for margin losses


@dataclass
class PromptExample:
    """A prompt to generate from; `meta` holds the record's other fields (e.g. a task's answer)."""

    prompt: PromptLike
    source: Source
    meta: dict = field(default_factory=dict)


# --- loaders ----------------------------------------------------------------------------------


def load_sft(path: str | Path, split: str | None = None) -> list[SFTExample]:
    """SFT examples from a data file or dataset directory (see the module docstring for formats)."""
    return sft_from_records(read_records(path, split))


def load_preferences(path: str | Path, split: str | None = None, *,
                     allow_empty_responses: bool = False) -> list[PreferenceExample]:
    """Preference pairs from a data file or dataset directory; rankings become all ordered pairs.

    `allow_empty_responses` accepts an empty chosen or rejected text next to an explicit prompt: a
    file of people's labels may compare a model's empty answer; training data may not."""
    return preferences_from_records(read_records(path, split), allow_empty_responses)


def load_prompts(path: str | Path, split: str | None = None) -> list[PromptExample]:
    """Prompts (with their other fields as `meta`) from a data file or dataset directory."""
    return prompts_from_records(read_records(path, split))


def sft_from_records(records: Iterable[tuple[dict, Source]]) -> list[SFTExample]:
    return [parse_sft_record(record, source) for record, source in records]


def preferences_from_records(records: Iterable[tuple[dict, Source]],
                             allow_empty_responses: bool = False) -> list[PreferenceExample]:
    examples: list[PreferenceExample] = []
    for record, source in records:
        examples.extend(parse_preference_record(record, source, allow_empty_responses))
    return examples


def prompts_from_records(records: Iterable[tuple[dict, Source]]) -> list[PromptExample]:
    return [parse_prompt_record(record, source) for record, source in records]


# --- SFT --------------------------------------------------------------------------------------


def parse_sft_record(record: dict, source: Source) -> SFTExample:
    """One SFT example from a `prompt`/`completion`, `messages` or `text` record."""
    if _present(record, "messages"):
        messages = _messages(record, "messages", source)
        last = _last_assistant_index(messages)
        if last is None:
            raise DataError(source, "messages", "no assistant message to learn from")
        if last == 0:
            raise DataError(source, "messages", "no prompt: the first message is the assistant's")
        completion = [messages[last]]
        _check_nonempty_response(completion, source, "messages")
        return SFTExample(messages[:last], completion, source)
    if _present(record, "prompt") or _present(record, "completion"):
        prompt = _prompt(record, source)
        completion = _response(record, "completion", source, like=prompt)
        return SFTExample(prompt, completion, source)
    if _present(record, "text"):
        text = _text(record, "text", source, allow_empty=False)
        return SFTExample("", text, source)
    raise _missing(
        record, source, ("completion", "prompt", "messages", "text"),
        "missing field: expected 'prompt' and 'completion', 'messages', or 'text'",
    )


# --- preferences ------------------------------------------------------------------------------


def parse_preference_record(record: dict, source: Source, allow_empty_responses: bool = False) -> list[PreferenceExample]:
    """Preference pairs from one record: one pair, or K(K-1)/2 pairs for a K-way ranking."""
    if _present(record, "responses") or _present(record, "ranking"):
        return _ranking_pairs(record, source)
    for name in ("chosen", "rejected"):
        if not _present(record, name):
            raise _missing(record, source, (name,),
                           "missing field: expected 'chosen' and 'rejected' (or 'responses' and 'ranking')")
    label = _label(record, source)
    margin = _margin(record, source)
    if "prompt" in record and record["prompt"] is None:  # not the same as leaving it out (an implicit prompt)
        raise DataError(source, "prompt", "is null")
    if _should_extract_prompt(record):
        prompt, chosen, rejected = _implicit_prompt(record, source)
    else:
        prompt = _prompt(record, source)
        chosen = _response(record, "chosen", source, like=prompt, allow_empty=allow_empty_responses)
        rejected = _response(record, "rejected", source, like=prompt, allow_empty=allow_empty_responses)
        if chosen == rejected:
            raise DataError(source, "rejected", "chosen and rejected are identical")
    return [PreferenceExample(prompt, chosen, rejected, source, label, margin)]


def _should_extract_prompt(record: dict) -> bool:
    """No prompt, or a text prompt next to full conversations (as in e.g. UltraFeedback-binarized,
    whose conversations repeat the prompt): then the prompt is the conversations' shared start."""
    if not _present(record, "prompt"):
        return True
    return isinstance(record["prompt"], str) and isinstance(record["chosen"], list)


def _implicit_prompt(record: dict, source: Source) -> tuple[PromptLike, PromptLike, PromptLike]:
    chosen, rejected = record["chosen"], record["rejected"]
    if isinstance(chosen, str) or isinstance(rejected, str):
        _text(record, "chosen", source, allow_empty=False)
        _text(record, "rejected", source, allow_empty=False)
        if chosen == rejected:
            raise DataError(source, "rejected", "chosen and rejected are identical")
        cut = _text_prompt_boundary(chosen, rejected)
        if cut == 0:
            raise DataError(
                source, "prompt",
                "missing field: chosen and rejected share no prompt (no common beginning ending "
                "before whitespace); give a 'prompt' field",
            )
        return chosen[:cut], chosen[cut:], rejected[cut:]
    chosen = _messages(record, "chosen", source)
    rejected = _messages(record, "rejected", source)
    if chosen == rejected:
        raise DataError(source, "rejected", "chosen and rejected are identical")
    cut = _common_prefix_length(chosen, rejected)
    if cut == 0:
        raise DataError(
            source, "prompt",
            "missing field: chosen and rejected share no leading messages; give a 'prompt' field",
        )
    for name, conversation in (("chosen", chosen), ("rejected", rejected)):
        rest = conversation[cut:]
        if not rest:
            raise DataError(source, name, "has nothing after the prompt shared with the other response")
        if rest[0]["role"] != "assistant":
            raise DataError(
                source, name,
                f"after the shared prompt the response must start with an assistant message "
                f"(got {rest[0]['role']!r})",
            )
        _check_nonempty_response(rest, source, name)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _text_prompt_boundary(a: str, b: str) -> int:
    """Length of the shared prompt of two texts: their common prefix, cut back to where its last
    whitespace run starts, so the responses begin with that whitespace (as BPE tokenizers attach
    a leading space to the next word)."""
    common = _common_prefix_length(a, b)
    cut = common
    while cut > 0 and not a[cut - 1].isspace():
        cut -= 1  # back over a partly shared word
    while cut > 0 and a[cut - 1].isspace():
        cut -= 1  # back over the whitespace before it
    return cut


def _common_prefix_length(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _ranking_pairs(record: dict, source: Source) -> list[PreferenceExample]:
    for name in ("responses", "ranking"):
        if not _present(record, name):
            raise _missing(record, source, (name,), "missing field: a ranking needs both 'responses' and 'ranking'")
    for name in ("label", "margin"):
        if _present(record, name):
            raise DataError(source, name, "not supported together with 'ranking'")
    prompt = _prompt(record, source)
    responses = record["responses"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise DataError(source, "responses", f"must be a list of at least 2 responses (got {_describe(responses)})")
    checked = [
        _check_response(value, f"responses[{i}]", source, like=prompt, field_name="responses")
        for i, value in enumerate(responses)
    ]
    ranking = record["ranking"]
    k = len(responses)
    if (
        not isinstance(ranking, list)
        or any(not isinstance(i, int) or isinstance(i, bool) for i in ranking)
        or sorted(ranking) != list(range(k))
    ):
        raise DataError(
            source, "ranking",
            f"must be a permutation of 0..{k - 1} listing response indices best first (got {ranking!r})",
        )
    pairs = []
    for better in range(k):
        for worse in range(better + 1, k):
            chosen, rejected = checked[ranking[better]], checked[ranking[worse]]
            if chosen == rejected:
                raise DataError(
                    source, "responses",
                    f"responses {ranking[better]} and {ranking[worse]} are identical",
                )
            pairs.append(PreferenceExample(prompt, chosen, rejected, source))
    return pairs


def _label(record: dict, source: Source) -> float:
    if not _present(record, "label"):
        return 1.0
    value = record["label"]
    if not _is_number(value):
        raise DataError(source, "label", f"must be a number in [0, 1] (got {_describe(value)})")
    if not 0.0 <= value <= 1.0:
        raise DataError(source, "label", f"must be in [0, 1] (got {_shown(value)})")
    return float(value)


def _margin(record: dict, source: Source) -> float | None:
    if not _present(record, "margin"):
        return None
    value = record["margin"]
    if not _is_number(value) or not math.isfinite(value):
        raise DataError(source, "margin", f"must be a finite number (got {_describe(value)})")
    return float(value)


# --- prompts ----------------------------------------------------------------------------------


def parse_prompt_record(record: dict, source: Source) -> PromptExample:
    """A prompt from `prompt` or `messages`; every other field goes to `meta`."""
    if _present(record, "prompt"):
        prompt = _prompt(record, source, allow_empty=False)
        key = "prompt"
    elif _present(record, "messages"):
        prompt = _messages(record, "messages", source)
        key = "messages"
    else:
        raise _missing(record, source, ("prompt", "messages"), "missing field: expected 'prompt' or 'messages'")
    meta = {k: v for k, v in record.items() if k != key}
    return PromptExample(prompt, source, meta)


# --- field checks -----------------------------------------------------------------------------


def _present(record: dict, name: str) -> bool:
    return record.get(name) is not None


def _missing(record: dict, source: Source, names: tuple[str, ...], message: str) -> DataError:
    """The error for required fields that are absent (reported on the first of `names`), or the first
    of them that is there as null, which says so."""
    null = next((name for name in names if name in record), None)
    return DataError(source, null, "is null") if null else DataError(source, names[0], message)


def _require(record: dict, name: str, source: Source) -> Any:
    if name not in record:
        raise DataError(source, name, "missing field")
    if record[name] is None:
        raise DataError(source, name, "is null")
    return record[name]


def _text(record: dict, name: str, source: Source, allow_empty: bool) -> str:
    value = _require(record, name, source)
    if not isinstance(value, str):
        kind = "a string" if allow_empty else "a non-empty string"
        raise DataError(source, name, f"must be {kind} (got {_describe(value)})")
    if not allow_empty and not value.strip():
        raise DataError(source, name, "empty response" if name != "prompt" else "empty prompt")
    return value


def _prompt(record: dict, source: Source, allow_empty: bool = True) -> PromptLike:
    value = _require(record, "prompt", source)
    if isinstance(value, list):
        return _messages(record, "prompt", source)
    if not isinstance(value, str):
        raise DataError(
            source, "prompt", f"must be a string or a list of messages (got {_describe(value)})"
        )
    if not allow_empty and not value.strip():
        raise DataError(source, "prompt", "empty prompt")
    return value


def _response(record: dict, name: str, source: Source, like: PromptLike, allow_empty: bool = False) -> PromptLike:
    return _check_response(_require(record, name, source), name, source, like, field_name=name,
                           allow_empty=allow_empty)


def _check_response(value: Any, label: str, source: Source, like: PromptLike, field_name: str,
                    allow_empty: bool = False) -> PromptLike:
    """A response must be of the prompt's kind (text or conversational) and, unless `allow_empty`,
    not empty: no text, or messages whose contents are all blank (a list of no messages at all is
    refused either way)."""
    where = "" if label == field_name else f"{label}: "
    if isinstance(like, str):
        if not isinstance(value, str):
            raise DataError(
                source, field_name,
                f"{where}must be a non-empty string (got {_describe(value)})",
            )
        if not value.strip() and not allow_empty:
            raise DataError(source, field_name, f"{where}empty response")
        return value
    if not isinstance(value, list):
        raise DataError(
            source, field_name,
            f"{where}must be a list of messages, as the prompt is (got {_describe(value)})",
        )
    messages = _validate_messages(value, source, field_name, where)
    if not messages:
        raise DataError(source, field_name, f"{where}empty response (no messages)")
    if not allow_empty:
        _check_nonempty_response(messages, source, field_name, where)
    return messages


def _check_nonempty_response(messages: Messages, source: Source, name: str, where: str = "") -> None:
    if not any(m["content"].strip() for m in messages):
        raise DataError(source, name, f"{where}empty response")


def _messages(record: dict, name: str, source: Source) -> Messages:
    value = _require(record, name, source)
    if not isinstance(value, list):
        raise DataError(source, name, f"must be a list of messages (got {_describe(value)})")
    if not value:
        raise DataError(source, name, "must contain at least one message (got an empty list)")
    return _validate_messages(value, source, name, "")


def _validate_messages(value: list, source: Source, name: str, where: str) -> Messages:
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(source, name, f"{where}message {i} must be an object (got {_describe(message)})")
        for key in ("role", "content"):
            if message.get(key) is None:
                problem = f"{key} is null" if key in message else f"missing {key!r}"
                raise DataError(source, name, f"{where}message {i}: {problem}")
        role = message["role"]
        if role not in ROLES:
            raise DataError(
                source, name,
                f"{where}message {i}: role {role!r} is not one of {', '.join(ROLES)}",
            )
        content = message.get("content")
        if not isinstance(content, str):
            raise DataError(
                source, name, f"{where}message {i}: content must be a string (got {_describe(content)})"
            )
        # Arrow-backed sources add every key seen in any row, as null; drop those.
        messages.append({k: v for k, v in message.items() if v is not None})
    return messages


def _last_assistant_index(messages: Messages) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return i
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return f"list of {len(value)}"
    return type(value).__name__


def _shown(value: Any) -> str:
    """A value as an error message shows it: a finite number itself, anything else described."""
    finite = _is_number(value) and math.isfinite(value)
    return repr(value) if finite or isinstance(value, bool) else _describe(value)
