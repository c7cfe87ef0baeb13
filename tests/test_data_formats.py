"""Formats: each accepted record shape normalises correctly; each bad record names file, line, field."""

from __future__ import annotations

import json
from itertools import combinations

import pytest

from alignlab.data import (
    DataError,
    PreferenceExample,
    Source,
    load_preferences,
    load_prompts,
    load_sft,
)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


# --- SFT --------------------------------------------------------------------------------------


def test_sft_prompt_completion_text_and_conversational(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"prompt": "2+2=", "completion": " 4"},
        {"prompt": [user("hi")], "completion": [assistant("hello")]},
    ])
    text, chat = load_sft(path)
    assert (text.prompt, text.completion) == ("2+2=", " 4")
    assert chat.prompt == [user("hi")] and chat.completion == [assistant("hello")]
    assert chat.source == Source(path, 2, "line")


def test_sft_messages_form_learns_the_last_assistant_message(tmp_path):
    system = {"role": "system", "content": "be brief"}
    messages = [system, user("a"), assistant("b"), user("c"), assistant("d"), user("ignored follow-up")]
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": messages}])
    (ex,) = load_sft(path)
    assert ex.prompt == messages[:4]
    assert ex.completion == [assistant("d")]


def test_sft_text_form_is_language_modelling(tmp_path):
    (ex,) = load_sft(write_jsonl(tmp_path / "lm.jsonl", [{"text": "once upon a time"}]))
    assert ex.prompt == "" and ex.completion == "once upon a time"


def test_sft_messages_without_assistant_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [user("hi")]}])
    with pytest.raises(DataError, match=r"sft.jsonl: line 1: field 'messages': no assistant message") as info:
        load_sft(path)
    assert info.value.field == "messages"


def test_sft_mixing_text_prompt_and_conversational_completion_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "hi", "completion": [assistant("x")]}])
    with pytest.raises(DataError, match=r"line 1: field 'completion': must be a non-empty string \(got list"):
        load_sft(path)


def test_sft_split_argument_reaches_the_reader(tmp_path):
    import datasets

    datasets.DatasetDict(
        train=datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}]),
        test=datasets.Dataset.from_list([{"prompt": "c", "completion": "d"}]),
    ).save_to_disk(str(tmp_path / "dd"))
    (ex,) = load_sft(tmp_path / "dd", split="test")
    assert ex.prompt == "c" and str(ex.source) == f"{tmp_path / 'dd'}::test: row 1"


# --- preferences ------------------------------------------------------------------------------


def test_explicit_preferences_with_label_and_margin(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "q", "chosen": " good", "rejected": " bad"},
        {"prompt": "q", "chosen": " good", "rejected": " bad", "label": 0.7, "margin": 2},
    ])
    plain, soft = load_preferences(path)
    assert (plain.prompt, plain.chosen, plain.rejected, plain.label, plain.margin) == ("q", " good", " bad", 1.0, None)
    assert (soft.label, soft.margin) == (0.7, 2.0)


def test_implicit_prompt_text_splits_before_the_last_shared_whitespace(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"chosen": "Human: rate the film\n\nAssistant: great", "rejected": "Human: rate the film\n\nAssistant: bad"},
        # a partly shared word ("gr") stays in the responses
        {"chosen": "Human: rate it\n\nAssistant: a great movie", "rejected": "Human: rate it\n\nAssistant: a grim movie"},
    ])
    whole_word, partial_word = load_preferences(path)
    assert whole_word.prompt == "Human: rate the film\n\nAssistant:"
    assert (whole_word.chosen, whole_word.rejected) == (" great", " bad")
    assert partial_word.prompt == "Human: rate it\n\nAssistant: a"
    assert (partial_word.chosen, partial_word.rejected) == (" great movie", " grim movie")


def test_implicit_prompt_conversational_is_the_common_message_prefix(tmp_path):
    history = [user("hi"), assistant("hello"), user("tell a joke")]
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"chosen": history + [assistant("a funny one")], "rejected": history + [assistant("no")]},
        # a text prompt beside full conversations (UltraFeedback-binarized style) is re-derived too
        {"prompt": "tell a joke", "chosen": history + [assistant("a funny one")], "rejected": history + [assistant("no")]},
    ])
    for ex in load_preferences(path):
        assert ex.prompt == history
        assert ex.chosen == [assistant("a funny one")] and ex.rejected == [assistant("no")]


@pytest.mark.parametrize("k", [2, 3, 4])
def test_ranking_expands_to_all_ordered_pairs(tmp_path, k):
    responses = [f"response {i}" for i in range(k)]
    ranking = list(reversed(range(k)))  # the last response is the best
    path = write_jsonl(tmp_path / "rank.jsonl", [{"prompt": "p", "responses": responses, "ranking": ranking}])
    pairs = load_preferences(path)
    assert len(pairs) == k * (k - 1) // 2
    rank_of = {responses[index]: position for position, index in enumerate(ranking)}
    for pair in pairs:
        assert rank_of[pair.chosen] < rank_of[pair.rejected]  # the better one is chosen
        assert pair.prompt == "p" and pair.source.line == 1
    assert {(p.chosen, p.rejected) for p in pairs} == {
        (responses[ranking[i]], responses[ranking[j]]) for i, j in combinations(range(k), 2)
    }
    assert (pairs[0].chosen, pairs[0].rejected) == (responses[k - 1], responses[k - 2])


def test_nulls_from_arrow_sources_mean_absent(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"prompt": "a", "chosen": " x", "rejected": " y", "label": 0.25},
        {"prompt": "b", "chosen": " x", "rejected": " y"},  # arrow stores label as null here
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "prefs.parquet")
    first, second = load_preferences(tmp_path / "prefs.parquet")
    assert first.label == 0.25 and second.label == 1.0


GOOD = {"prompt": "q", "chosen": " yes", "rejected": " no"}

BAD_PREFERENCES = [
    # (record, field, message fragment)
    ({"prompt": "q", "rejected": " no"}, "chosen", "missing field"),
    ({"prompt": "q", "chosen": 3, "rejected": " no"}, "chosen", "must be a non-empty string (got int)"),
    ({"prompt": "q", "chosen": " yes", "rejected": "  "}, "rejected", "empty response"),
    ({"prompt": "q", "chosen": " yes", "rejected": " yes"}, "rejected", "chosen and rejected are identical"),
    ({**GOOD, "label": 1.5}, "label", "must be in [0, 1] (got 1.5)"),
    ({**GOOD, "label": True}, "label", "must be a number in [0, 1]"),
    ({**GOOD, "margin": "big"}, "margin", "must be a finite number"),
    ({"prompt": 5, "chosen": " a", "rejected": " b"}, "prompt", "must be a string or a list of messages"),
    ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 0, 1]}, "ranking", "must be a permutation of 0..2"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 2]}, "ranking", "must be a permutation of 0..1"),
    ({"prompt": "p", "responses": ["a"], "ranking": [0]}, "responses", "at least 2 responses"),
    ({"prompt": "p", "responses": ["a", ""], "ranking": [0, 1]}, "responses", "responses[1]: empty response"),
    ({"prompt": "p", "responses": ["a", "b"]}, "ranking", "missing field"),
    ({"prompt": [user("q")], "chosen": [{"role": "bot", "content": "x"}], "rejected": [assistant("y")]},
     "chosen", "role 'bot' is not one of system, user, assistant, tool"),
    ({"prompt": [user("q")], "chosen": [assistant(7)], "rejected": [assistant("y")]},
     "chosen", "content must be a string (got int)"),
    ({"chosen": "abc", "rejected": "abd"}, "prompt", "share no prompt"),
]


@pytest.mark.parametrize("record,field,fragment", BAD_PREFERENCES)
def test_bad_preference_records_name_file_line_and_field(tmp_path, record, field, fragment):
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, GOOD, record])
    with pytest.raises(DataError) as info:
        load_preferences(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line 3: field '{field}': ")
    assert fragment in message
    assert info.value.field == field and info.value.source.line == 3


def test_the_first_error_is_the_one_reported(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, {"prompt": "q", "chosen": 1, "rejected": " no"}, {"prompt": "q"}])
    with pytest.raises(DataError, match=r"line 2: field 'chosen'"):
        load_preferences(path)


def test_preference_rows_report_row_numbers(tmp_path):
    (tmp_path / "prefs.json").write_text(json.dumps([GOOD, {**GOOD, "label": -0.1}]))
    with pytest.raises(DataError, match=r"prefs.json: row 2: field 'label': must be in \[0, 1\]"):
        load_preferences(tmp_path / "prefs.json")


def test_preference_example_defaults():
    ex = PreferenceExample("p", "a", "b", Source("x.jsonl", 1))
    assert ex.label == 1.0 and ex.margin is None


# --- prompts ----------------------------------------------------------------------------------


def test_prompts_keep_other_fields_as_meta(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": "The movie", "target": "positive"},
        {"messages": [user("hi")], "id": 7},
    ])
    text, chat = load_prompts(path)
    assert text.prompt == "The movie" and text.meta == {"target": "positive"}
    assert chat.prompt == [user("hi")] and chat.meta == {"id": 7}


def test_prompt_missing_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "ok"}, {"question": "?"}])
    with pytest.raises(DataError, match=r"prompts.jsonl: line 2: field 'prompt': missing field"):
        load_prompts(path)
