"""Unpaired feedback for KTO: `prompt`, `completion` and a boolean `label` (desirable or not).

Paired data (`chosen`/`rejected`) is refused with a message saying what to do, unless the caller
asks to unpair it: each pair then gives a desirable (chosen) and an undesirable (rejected) example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignlab.data.errors import DataError, Source
from alignlab.data.examples import PromptLike
from alignlab.data.fields import describe_value, prompt_field, required_field, response_field
from alignlab.data.preference_records import parse_preference_record
from alignlab.data.readers import read_records


@dataclass
class UnpairedExample:
    prompt: PromptLike
    completion: PromptLike
    desirable: bool
    source: Source


def parse_unpaired_record(record: dict, source: Source, unpair: bool = False) -> list[UnpairedExample]:
    if "chosen" in record or "rejected" in record or "ranking" in record:
        if not unpair:
            raise DataError(source, "chosen" if "chosen" in record else "ranking",
                            "KTO takes unpaired prompt/completion/label records, and this is paired "
                            "preference data: use the dpo stage, or set `unpair: true` to split each pair")
        out = []
        for pair in parse_preference_record(record, source):
            out += [UnpairedExample(pair.prompt, pair.chosen, True, source),
                    UnpairedExample(pair.prompt, pair.rejected, False, source)]
        return out
    prompt = prompt_field(record, source)
    completion = response_field(record, "completion", source, prompt)
    label = required_field(record, "label", source)
    if not isinstance(label, bool):
        raise DataError(source, "label", f"must be true (desirable) or false (undesirable) (got {describe_value(label)})")
    return [UnpairedExample(prompt, completion, label, source)]


def load_unpaired(path: str | Path, split: str | None = None, unpair: bool = False) -> list[UnpairedExample]:
    examples: list[UnpairedExample] = []
    for record, source in read_records(path, split):
        examples += parse_unpaired_record(record, source, unpair)
    return examples
