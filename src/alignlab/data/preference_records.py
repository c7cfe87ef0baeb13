"""Preference records parsed into pairs: explicit or implicit prompts, K-way rankings, labels and margins."""

from __future__ import annotations

import math

from alignlab.data.errors import DataError, Source
from alignlab.data.examples import PreferenceExample, PromptLike
from alignlab.data.fields import (
    check_nonempty_response,
    check_response,
    describe_value,
    is_number,
    messages_field,
    missing_fields_error,
    has_field,
    prompt_field,
    response_field,
    shown_value,
    text_field,
)


def parse_preference_record(record: dict, source: Source, allow_empty_responses: bool = False) -> list[PreferenceExample]:
    """Preference pairs from one record: one pair, or K(K-1)/2 pairs for a K-way ranking."""
    if has_field(record, "responses") or has_field(record, "ranking"):
        return _ranking_pairs(record, source)
    for name in ("chosen", "rejected"):
        if not has_field(record, name):
            raise missing_fields_error(record, source, (name,),
                           "missing field: expected 'chosen' and 'rejected' (or 'responses' and 'ranking')")
    label = _label(record, source)
    margin = _margin(record, source)
    if "prompt" in record and record["prompt"] is None:  # not the same as leaving it out (an implicit prompt)
        raise DataError(source, "prompt", "is null")
    if _should_extract_prompt(record):
        prompt, chosen, rejected = _implicit_prompt(record, source)
    else:
        prompt = prompt_field(record, source)
        chosen = response_field(record, "chosen", source, like=prompt, allow_empty=allow_empty_responses)
        rejected = response_field(record, "rejected", source, like=prompt, allow_empty=allow_empty_responses)
        if chosen == rejected:
            raise DataError(source, "rejected", "chosen and rejected are identical")
    return [PreferenceExample(prompt, chosen, rejected, source, label, margin)]


def _should_extract_prompt(record: dict) -> bool:
    """No prompt, or a text prompt next to full conversations (as in e.g. UltraFeedback-binarized,
    whose conversations repeat the prompt): then the prompt is the conversations' shared start."""
    if not has_field(record, "prompt"):
        return True
    return isinstance(record["prompt"], str) and isinstance(record["chosen"], list)


def _implicit_prompt(record: dict, source: Source) -> tuple[PromptLike, PromptLike, PromptLike]:
    chosen, rejected = record["chosen"], record["rejected"]
    if isinstance(chosen, str) or isinstance(rejected, str):
        text_field(record, "chosen", source, allow_empty=False)
        text_field(record, "rejected", source, allow_empty=False)
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
    chosen = messages_field(record, "chosen", source)
    rejected = messages_field(record, "rejected", source)
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
        check_nonempty_response(rest, source, name)
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
        if not has_field(record, name):
            raise missing_fields_error(record, source, (name,), "missing field: a ranking needs both 'responses' and 'ranking'")
    for name in ("label", "margin"):
        if has_field(record, name):
            raise DataError(source, name, "not supported together with 'ranking'")
    prompt = prompt_field(record, source)
    responses = record["responses"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise DataError(source, "responses", f"must be a list of at least 2 responses (got {describe_value(responses)})")
    checked = [
        check_response(value, f"responses[{i}]", source, like=prompt, field_name="responses")
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
    if not has_field(record, "label"):
        return 1.0
    value = record["label"]
    if not is_number(value):
        raise DataError(source, "label", f"must be a number in [0, 1] (got {describe_value(value)})")
    if not 0.0 <= value <= 1.0:
        raise DataError(source, "label", f"must be in [0, 1] (got {shown_value(value)})")
    return float(value)


def _margin(record: dict, source: Source) -> float | None:
    if not has_field(record, "margin"):
        return None
    value = record["margin"]
    if not is_number(value) or not math.isfinite(value):
        raise DataError(source, "margin", f"must be a finite number (got {describe_value(value)})")
    return float(value)
