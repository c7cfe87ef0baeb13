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

Here: the loaders and the SFT and prompt parsers. The example types are in `examples`, the checks
of single fields in `fields`, and the preference parser (pairs, implicit prompts, rankings) in
`preference_records`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from alignlab.data.errors import DataError, Source
from alignlab.data.examples import PreferenceExample, PromptExample, SFTExample
from alignlab.data.fields import (
    check_nonempty_response,
    last_assistant_index,
    messages_field,
    missing_fields_error,
    has_field,
    prompt_field,
    response_field,
    text_field,
)
from alignlab.data.preference_records import parse_preference_record
from alignlab.data.readers import read_records


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
    if has_field(record, "messages"):
        messages = messages_field(record, "messages", source)
        last = last_assistant_index(messages)
        if last is None:
            raise DataError(source, "messages", "no assistant message to learn from")
        if last == 0:
            raise DataError(source, "messages", "no prompt: the first message is the assistant's")
        completion = [messages[last]]
        check_nonempty_response(completion, source, "messages")
        return SFTExample(messages[:last], completion, source)
    if has_field(record, "prompt") or has_field(record, "completion"):
        prompt = prompt_field(record, source)
        completion = response_field(record, "completion", source, like=prompt)
        return SFTExample(prompt, completion, source)
    if has_field(record, "text"):
        text = text_field(record, "text", source, allow_empty=False)
        return SFTExample("", text, source)
    raise missing_fields_error(
        record, source, ("completion", "prompt", "messages", "text"),
        "missing field: expected 'prompt' and 'completion', 'messages', or 'text'",
    )


# --- prompts ----------------------------------------------------------------------------------


def parse_prompt_record(record: dict, source: Source) -> PromptExample:
    """A prompt from `prompt` or `messages`; every other field goes to `meta`."""
    if has_field(record, "prompt"):
        prompt = prompt_field(record, source, allow_empty=False)
        key = "prompt"
    elif has_field(record, "messages"):
        prompt = messages_field(record, "messages", source)
        key = "messages"
    else:
        raise missing_fields_error(record, source, ("prompt", "messages"), "missing field: expected 'prompt' or 'messages'")
    meta = {k: v for k, v in record.items() if k != key}
    return PromptExample(prompt, source, meta)

