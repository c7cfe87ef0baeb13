"""The items a person labels, read and validated from a DATA file.

Accepted records (one per line of a .jsonl file, or any file `read_records` reads):

- ``{"prompt": ..., "responses": [a, b]}``: a pair, judged A/B (or tie, or skipped);
- ``{"prompt": ..., "chosen": a, "rejected": b}``: an unlabelled pair; the names are ignored and
  the pair is judged like the one above (without ``prompt`` the prompt is the shared beginning of
  the two, as `alignlab.data.formats` reads preference records);
- ``{"prompt": ..., "responses": [r1, ..., rK]}`` with K > 2: a K-way ranking item.

Prompts and responses are text or conversations (lists of ``{"role", "content"}`` messages) by
the same rules as the rest of alignlab. An optional ``id`` (a string or an integer) names the item;
without one, the id is a hash of its prompt and responses, so the same item gets the same id when
the file is served again. Any ``ranking``, ``label`` or ``margin`` fields are ignored: the app
collects new judgements. Two items with the same id (or the same content) are an error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignlab.data.errors import DataError, Source
from alignlab.data.examples import PromptLike
from alignlab.data.fields import has_field
from alignlab.data.preference_records import parse_preference_record
from alignlab.data.readers import read_records


@dataclass(frozen=True)
class LabelItem:
    """One thing to judge: a prompt and two (pair) or more (ranking) responses, in file order."""

    id: str
    prompt: PromptLike
    responses: tuple[PromptLike, ...]
    source: Source | None = None

    @property
    def kind(self) -> str:
        return "pair" if len(self.responses) == 2 else "ranking"

    def payload(self) -> dict[str, Any]:
        """The JSON-able content (what the store keeps and the export writes)."""
        return {"prompt": self.prompt, "responses": list(self.responses)}


def load_label_items(path: str | Path) -> list[LabelItem]:
    """The items of a DATA file; raises DataError naming file, line and field for a bad record."""
    items: list[LabelItem] = []
    seen: dict[str, Source] = {}
    for record, source in read_records(path):
        item = item_from_record(record, source)
        if item.id in seen:
            what = "id" if has_field(record, "id") else "responses"
            detail = "the same id" if what == "id" else "the same prompt and responses"
            raise DataError(source, what, f"duplicate item: {detail} as {seen[item.id]}")
        seen[item.id] = source
        items.append(item)
    return items


def item_from_record(record: dict, source: Source) -> LabelItem:
    """One item from one record, validated with alignlab's preference-record rules."""
    if has_field(record, "responses"):
        responses = record["responses"]
        k = len(responses) if isinstance(responses, list) else 0
        # An identity ranking makes the preference parser check prompt and responses for us.
        clean = {"prompt": record.get("prompt"), "responses": responses, "ranking": list(range(k))}
        if "prompt" not in record:
            clean.pop("prompt")
        example = parse_preference_record(clean, source)[0]
        prompt, texts = example.prompt, tuple(responses)
    elif has_field(record, "chosen") or has_field(record, "rejected"):
        clean = {k: record[k] for k in ("prompt", "chosen", "rejected") if k in record}
        example = parse_preference_record(clean, source)[0]
        prompt, texts = example.prompt, (example.chosen, example.rejected)
    else:
        raise DataError(
            source, "responses",
            "missing field: expected 'prompt' with 'responses' (2 or more), or 'chosen' and 'rejected'",
        )
    return LabelItem(_item_id(record, source, prompt, texts), prompt, texts, source)


def content_id(prompt: PromptLike, responses: tuple[PromptLike, ...]) -> str:
    """A stable id from the content: the same prompt and responses always give the same id."""
    text = json.dumps([prompt, list(responses)], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _item_id(record: dict, source: Source, prompt: PromptLike, responses: tuple) -> str:
    if not has_field(record, "id"):
        return content_id(prompt, responses)
    value = record["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(source, "id", f"must be a string or an integer (got {type(value).__name__})")
    text = str(value)
    if not text.strip():
        raise DataError(source, "id", "must not be empty")
    return text
