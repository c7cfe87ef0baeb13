"""Labelled classifier data: prompts (input classifier) and prompt + completion (output classifier),
each with a boolean `harmful` label, in the ecosystem's `prompt` / `completion` shapes.

    {"prompt": [{"role": "user", "content": "..."}], "harmful": true, "category": "weapons"}
    {"prompt": [...], "completion": [{"role": "assistant", "content": "..."}], "harmful": false}

Other fields (category, origin, ...) are kept as `meta`. A bad record is a DataError naming the
file, the line and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from alignlab.data.errors import DataError, Source
from alignlab.data.examples import PromptLike
from alignlab.data.fields import describe_value, prompt_field, required_field, response_field
from alignlab.data.readers import read_records


@dataclass
class Labelled:
    prompt: PromptLike
    harmful: bool
    source: Source
    completion: PromptLike | None = None
    meta: dict = field(default_factory=dict)


def _harmful(record: dict, source: Source) -> bool:
    value = required_field(record, "harmful", source)
    if not isinstance(value, bool):
        raise DataError(source, "harmful", f"must be true or false (got {describe_value(value)})")
    return value


def load_labelled(path: str | Path, with_completion: bool) -> list[Labelled]:
    """Labelled prompts, or (with_completion) labelled prompt + completion pairs, from a data file."""
    examples = []
    for record, source in read_records(path):
        prompt = prompt_field(record, source, allow_empty=False)
        completion = response_field(record, "completion", source, like=prompt) if with_completion else None
        meta = {k: v for k, v in record.items() if k not in ("prompt", "completion", "harmful")}
        examples.append(Labelled(prompt, _harmful(record, source), source, completion, meta))
    if not examples:
        raise DataError(Source(str(path)), None, "no records")
    return examples
