"""Templates and tokenization: exact rendering, exact loss masks, the truncation policy."""

from __future__ import annotations

import copy
import time

import pytest

from alignlab.data import (
    DEFAULT_CHAT_TEMPLATE,
    DataError,
    PreferenceExample,
    PromptExample,
    SFTExample,
    Source,
    render_completion,
    render_prompt,
    tokenize_example,
    tokenize_preferences,
    tokenize_prompts,
    tokenize_sft,
)

# ChatML-like: the end of every message is written as the EOS token plus a newline.
OWN_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '[' + m['role'] + ']' + m['content'] + eos_token + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '[assistant]' }}{% endif %}"
)
SRC = Source("data/train.jsonl", 4)
CHAT_PROMPT = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hello world"}]
CHAT_ANSWER = [{"role": "assistant", "content": "the film was a delight"}]


@pytest.fixture
def templated_tokenizer(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = OWN_TEMPLATE
    return tok


def masked_ids(row):
    return [t for t, m in zip(row.input_ids, row.loss_mask) if m]


# --- templates --------------------------------------------------------------------------------


def test_default_template_renders_roles_and_generation_prompt(tiny_tokenizer):
    assert tiny_tokenizer.chat_template is None
    assert render_prompt(tiny_tokenizer, CHAT_PROMPT) == "<|system|>\nbe kind\n<|user|>\nhello world\n<|assistant|>\n"
    assert render_completion(tiny_tokenizer, CHAT_PROMPT, CHAT_ANSWER) == "the film was a delight\n"
    assert "eos" not in DEFAULT_CHAT_TEMPLATE


def test_text_is_passed_through(tiny_tokenizer):
    assert render_prompt(tiny_tokenizer, "The movie") == "The movie"
    assert render_completion(tiny_tokenizer, "The movie", " was fine") == " was fine"


def test_tokenizer_own_template_is_used_and_its_eos_stripped(templated_tokenizer):
    assert render_prompt(templated_tokenizer, CHAT_PROMPT) == "<s>[system]be kind</s>\n[user]hello world</s>\n[assistant]"
    # the template's trailing "</s>\n" goes: tokenization appends EOS exactly once
    assert render_completion(templated_tokenizer, CHAT_PROMPT, CHAT_ANSWER) == "the film was a delight"
    row, _ = tokenize_example(templated_tokenizer, CHAT_PROMPT, CHAT_ANSWER, 128, 64)
    eos, bos = templated_tokenizer.eos_token_id, templated_tokenizer.bos_token_id
    assert row.input_ids.count(bos) == 1 and row.input_ids[0] == bos  # the template's BOS, not doubled
    assert masked_ids(row)[-1] == eos and masked_ids(row).count(eos) == 1


def test_template_whose_prompt_is_not_a_prefix_is_rejected(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}{{ 'ANSWER:' }}{% endif %}"
    )
    with pytest.raises(ValueError, match="not render the prompt as a prefix"):
        render_completion(tok, CHAT_PROMPT, CHAT_ANSWER)
    with pytest.raises(DataError, match=r"data/train.jsonl: line 4: field 'chosen': cannot render"):
        tokenize_example(tok, CHAT_PROMPT, CHAT_ANSWER, 64, 32, SRC, field="chosen")


# --- loss masks -------------------------------------------------------------------------------


def test_loss_mask_covers_exactly_the_completion_and_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    row, truncated = tokenize_example(tok, "the film was", " a delight", 64, 32)
    prompt_ids = tok("the film was", add_special_tokens=False)["input_ids"]
    completion_ids = tok(" a delight", add_special_tokens=False)["input_ids"]
    assert not truncated
    assert row.input_ids == [tok.bos_token_id, *prompt_ids, *completion_ids, tok.eos_token_id]
    assert row.loss_mask == [0] * (1 + len(prompt_ids)) + [1] * (len(completion_ids) + 1)
    assert len(row) == len(row.input_ids) == len(row.loss_mask)
    assert tok.decode(masked_ids(row)) == " a delight</s>"
    assert tok.decode(masked_ids(row), skip_special_tokens=True) == " a delight"


def test_conversational_mask_decodes_to_the_rendered_completion(tiny_tokenizer):
    row, _ = tokenize_example(tiny_tokenizer, CHAT_PROMPT, CHAT_ANSWER, 128, 64)
    unmasked = [t for t, m in zip(row.input_ids, row.loss_mask) if not m]
    assert tiny_tokenizer.decode(unmasked) == "<s>" + render_prompt(tiny_tokenizer, CHAT_PROMPT)
    assert tiny_tokenizer.decode(masked_ids(row)) == "the film was a delight\n</s>"


def test_batch_tokenization_equals_one_by_one(tiny_tokenizer):
    examples = [
        SFTExample("the film", " was a delight", Source("f", 1)),
        SFTExample(CHAT_PROMPT, CHAT_ANSWER, Source("f", 2)),
        SFTExample("", "hello world", Source("f", 3)),  # language modelling: BOS only as prompt
    ]
    rows, stats = tokenize_sft(examples, tiny_tokenizer, max_length=128, max_prompt_length=64)
    for ex, row in zip(examples, rows):
        assert row == tokenize_example(tiny_tokenizer, ex.prompt, ex.completion, 128, 64)[0]
    assert rows[2].loss_mask[0] == 0 and sum(rows[2].loss_mask) == len(rows[2]) - 1
    assert stats == {"examples": 3, "truncated": 0, "truncated_fraction": 0.0, "tokens": sum(map(len, rows))}


def test_direct_rust_encoding_matches_the_transformers_wrapper(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    texts = ["<s>the film</s> was", "", "héllo ✓ \n\n  x", " a delight"]
    examples = [SFTExample(t, " ok", Source("f", i)) for i, t in enumerate(texts)]
    rows, _ = tokenize_sft(examples, tok, 64, 32)
    for text, row in zip(texts, rows):
        expected = tok(text, add_special_tokens=False)["input_ids"]
        if not text.startswith("<s>"):
            expected = [tok.bos_token_id, *expected]
        assert row.input_ids[: row.loss_mask.index(1)] == expected
    tok(["leaves truncation set on the backend"], truncation=True, max_length=2)
    assert tokenize_sft(examples, tok, 64, 32)[0] == rows  # not cut to 2 tokens by that leftover state


# --- truncation -------------------------------------------------------------------------------


def test_long_completion_is_cut_and_counted(tiny_tokenizer):
    examples = [
        SFTExample("the film", " was a delight from start to finish and the cast shines", Source("f", 1)),
        SFTExample("the film", " was dull", Source("f", 2)),
    ]
    rows, stats = tokenize_sft(examples, tiny_tokenizer, max_length=12, max_prompt_length=8)
    assert len(rows[0]) == 12 and rows[0].input_ids[-1] != tiny_tokenizer.eos_token_id  # EOS lost
    assert rows[1].input_ids[-1] == tiny_tokenizer.eos_token_id
    assert stats["truncated"] == 1 and stats["truncated_fraction"] == 0.5


def test_prompt_longer_than_limit_is_an_error(tiny_tokenizer):
    prompt = "the film was a delight from start to finish"
    n = 1 + len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    examples = [SFTExample(prompt, " yes", SRC)]
    with pytest.raises(DataError) as info:
        tokenize_sft(examples, tiny_tokenizer, max_length=64, max_prompt_length=5)
    assert str(info.value) == (
        f"data/train.jsonl: line 4: field 'prompt': prompt is {n} tokens, longer than max_prompt_length=5"
    )
    with pytest.raises(DataError, match="field 'prompt': prompt is"):
        tokenize_prompts([PromptExample(prompt, SRC, {})], tiny_tokenizer, max_prompt_length=5)


def test_no_room_left_for_the_completion_is_an_error(tiny_tokenizer):
    prompt = "the film was a delight"
    n = 1 + len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    pairs = [PreferenceExample(prompt, " yes", " no", SRC)]
    with pytest.raises(DataError, match=r"line 4: field 'chosen': no chosen tokens left"):
        tokenize_preferences(pairs, tiny_tokenizer, max_length=n, max_prompt_length=n)


# --- preferences and prompts ------------------------------------------------------------------


def test_preference_pairs_share_the_prompt_and_count_truncation_once(tiny_tokenizer):
    long = " was a delight from start to finish and the cast shines" * 3
    examples = [
        PreferenceExample("the film", long, long + " again", Source("f", 1)),
        PreferenceExample(CHAT_PROMPT, CHAT_ANSWER, [{"role": "assistant", "content": "dull"}], Source("f", 2)),
    ]
    pairs, stats = tokenize_preferences(examples, tiny_tokenizer, max_length=80, max_prompt_length=60)
    assert stats["examples"] == 2 and stats["truncated"] == 1  # first pair: both sides cut, counted once
    assert stats["tokens"] == sum(len(c) + len(r) for c, r in pairs)
    for chosen, rejected in pairs:
        n_prompt = chosen.loss_mask.index(1)
        assert rejected.loss_mask.index(1) == n_prompt
        assert chosen.input_ids[:n_prompt] == rejected.input_ids[:n_prompt]
    assert tiny_tokenizer.decode(masked_ids(pairs[1][1])) == "dull\n</s>"


def test_tokenize_prompts_ends_with_the_generation_prompt(tiny_tokenizer):
    ids = tokenize_prompts([PromptExample(CHAT_PROMPT, SRC, {}), "the film"], tiny_tokenizer, max_prompt_length=64)
    assert tiny_tokenizer.decode(ids[0]) == "<s>" + render_prompt(tiny_tokenizer, CHAT_PROMPT)
    assert tiny_tokenizer.decode(ids[0]).endswith("<|assistant|>\n")
    assert ids[1] == [tiny_tokenizer.bos_token_id, *tiny_tokenizer("the film", add_special_tokens=False)["input_ids"]]


def test_tokenization_is_fast_enough(tiny_tokenizer):
    examples = [SFTExample(f"the film {i} was", " a delight from start to finish", Source("f", i)) for i in range(2000)]
    start = time.perf_counter()
    rows, stats = tokenize_sft(examples, tiny_tokenizer, max_length=64, max_prompt_length=32)
    elapsed = time.perf_counter() - start
    assert stats["examples"] == 2000
    assert elapsed < 4.0, f"{2000 / elapsed:.0f} examples/s"  # typically several thousand per second
