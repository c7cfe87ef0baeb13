"""Field checks shared by the record parsers: required fields, text, prompts, responses and messages."""

from __future__ import annotations

import math
from typing import Any

from alignlab.data.errors import DataError, Source
from alignlab.data.examples import ROLES, Messages, PromptLike


def has_field(record: dict, name: str) -> bool:
    return record.get(name) is not None


def missing_fields_error(record: dict, source: Source, names: tuple[str, ...], message: str) -> DataError:
    """The error for required fields that are absent (reported on the first of `names`), or the first
    of them that is there as null, which says so."""
    null = next((name for name in names if name in record), None)
    return DataError(source, null, "is null") if null else DataError(source, names[0], message)


def required_field(record: dict, name: str, source: Source) -> Any:
    if name not in record:
        raise DataError(source, name, "missing field")
    if record[name] is None:
        raise DataError(source, name, "is null")
    return record[name]


def text_field(record: dict, name: str, source: Source, allow_empty: bool) -> str:
    value = required_field(record, name, source)
    if not isinstance(value, str):
        kind = "a string" if allow_empty else "a non-empty string"
        raise DataError(source, name, f"must be {kind} (got {describe_value(value)})")
    if not allow_empty and not value.strip():
        raise DataError(source, name, "empty response" if name != "prompt" else "empty prompt")
    return value


def prompt_field(record: dict, source: Source, allow_empty: bool = True) -> PromptLike:
    value = required_field(record, "prompt", source)
    if isinstance(value, list):
        return messages_field(record, "prompt", source)
    if not isinstance(value, str):
        raise DataError(
            source, "prompt", f"must be a string or a list of messages (got {describe_value(value)})"
        )
    if not allow_empty and not value.strip():
        raise DataError(source, "prompt", "empty prompt")
    return value


def response_field(record: dict, name: str, source: Source, like: PromptLike, allow_empty: bool = False) -> PromptLike:
    return check_response(required_field(record, name, source), name, source, like, field_name=name,
                           allow_empty=allow_empty)


def check_response(value: Any, label: str, source: Source, like: PromptLike, field_name: str,
                    allow_empty: bool = False) -> PromptLike:
    """A response must be of the prompt's kind (text or conversational) and, unless `allow_empty`,
    not empty: no text, or messages whose contents are all blank (a list of no messages at all is
    refused either way)."""
    where = "" if label == field_name else f"{label}: "
    if isinstance(like, str):
        if not isinstance(value, str):
            raise DataError(
                source, field_name,
                f"{where}must be a non-empty string (got {describe_value(value)})",
            )
        if not value.strip() and not allow_empty:
            raise DataError(source, field_name, f"{where}empty response")
        return value
    if not isinstance(value, list):
        raise DataError(
            source, field_name,
            f"{where}must be a list of messages, as the prompt is (got {describe_value(value)})",
        )
    messages = _validate_messages(value, source, field_name, where)
    if not messages:
        raise DataError(source, field_name, f"{where}empty response (no messages)")
    if not allow_empty:
        check_nonempty_response(messages, source, field_name, where)
    return messages


def check_nonempty_response(messages: Messages, source: Source, name: str, where: str = "") -> None:
    if not any(m["content"].strip() for m in messages):
        raise DataError(source, name, f"{where}empty response")


def messages_field(record: dict, name: str, source: Source) -> Messages:
    value = required_field(record, name, source)
    if not isinstance(value, list):
        raise DataError(source, name, f"must be a list of messages (got {describe_value(value)})")
    if not value:
        raise DataError(source, name, "must contain at least one message (got an empty list)")
    return _validate_messages(value, source, name, "")


def _validate_messages(value: list, source: Source, name: str, where: str) -> Messages:
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(source, name, f"{where}message {i} must be an object (got {describe_value(message)})")
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
                source, name, f"{where}message {i}: content must be a string (got {describe_value(content)})"
            )
        # Arrow-backed sources add every key seen in any row, as null; drop those.
        messages.append({k: v for k, v in message.items() if v is not None})
    return messages


def last_assistant_index(messages: Messages) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return i
    return None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def describe_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return f"list of {len(value)}"
    return type(value).__name__


def shown_value(value: Any) -> str:
    """A value as an error message shows it: a finite number itself, anything else described."""
    finite = is_number(value) and math.isfinite(value)
    return repr(value) if finite or isinstance(value, bool) else describe_value(value)
