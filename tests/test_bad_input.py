"""Input that used to crash deep inside training, or worse, train to the end on nothing: each is now
one `error:` line naming the file, directory or setting, before anything is written."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from alignlab.cli import app
from alignlab.data.errors import DataError
from alignlab.data.formats import parse_sft_record
from alignlab.data.preference_records import parse_preference_record
from alignlab.data.errors import Source


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args, env={"CI": "true"})


def _one_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip() and not x.startswith("Loading weights")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _refused(stage: str, model, data: str, out, *extra: str) -> str:
    """`stage` run on `data` fails with one error line and leaves no `out` behind; the line."""
    message = _one_error(_invoke([stage, "--model", str(model), "--data", data, "--out", str(out), *extra]))
    assert not out.exists()
    return message


def _write(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _pairs(n: int, prompts: int) -> list[dict]:
    return [{"prompt": f"prompt {i % prompts}", "chosen": f" good answer {i}", "rejected": f" bad answer {i}"}
            for i in range(n)]


# --- 5: a directory with a config but no tokenizer -----------------------------------------------


def test_a_model_directory_without_tokenizer_files_is_refused(tiny_model_dir, tmp_path):
    model = tmp_path / "no-tokenizer"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, model / name)
    data = _write(tmp_path / "sft.jsonl", [{"prompt": "the film", "completion": f" was fine {i}"} for i in range(4)])
    out = tmp_path / "out"
    message = _refused("sft", model, data, out)
    assert str(model) in message and "tokenizer" in message


def test_a_config_only_directory_whose_tokenizer_cannot_be_built_is_one_line(tmp_path):
    from transformers import LlamaConfig

    from alignlab.models import load_tokenizer

    LlamaConfig().save_pretrained(tmp_path)  # transformers' own message for this runs over 5 lines
    with pytest.raises(ValueError) as info:
        load_tokenizer(tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and "no tokenizer files" in message


def _byte_level(**options):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if options.get("lowercase"):
        tok.normalizer = normalizers.Lowercase()
    if options.get("decoder", True):
        tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")


def _llama_like(add_prefix_space: bool):
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ("\u2581", "\u2581The", "\u2581film", "\u2581was", ",", "!"):  # as in Llama's, "\u2581" is a piece
        vocab[piece] = len(vocab)
    return LlamaTokenizer(vocab=vocab, merges=[], add_prefix_space=add_prefix_space)


def test_real_tokenizers_pass_the_check(tiny_tokenizer):
    from transformers import GPT2Tokenizer
    from tokenizers import pre_tokenizers

    from alignlab.models.load import check_tokenizer

    check_tokenizer(tiny_tokenizer, "tiny")  # the project's byte-level BPE, as every built-in task's
    gpt2 = GPT2Tokenizer(vocab={c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}, merges=[])
    check_tokenizer(gpt2, "gpt2-like")  # GPT-2's pipeline, with its byte alphabet as the whole vocabulary
    # Llama's sentencepiece-style pipeline (a leading space added on encoding, stripped on decoding)
    check_tokenizer(_llama_like(add_prefix_space=True), "llama-like")
    check_tokenizer(_llama_like(add_prefix_space=False), "llama-like, no prefix space")
    check_tokenizer(_byte_level(lowercase=True), "lowercasing")  # loses case, still carries text


def test_a_tokenizer_that_does_not_give_text_back_is_refused():
    from alignlab.models.load import check_tokenizer

    with pytest.raises(ValueError, match="does not give text back") as info:
        check_tokenizer(_byte_level(decoder=False), "no-decoder")  # decodes to 'ĠThe Ġfilm ...'
    assert str(info.value).startswith("no-decoder: ") and "\n" not in str(info.value)


# --- 6: max_length past the model's positions ------------------------------------------------------


@pytest.mark.parametrize("stage", ["sft", "reward-model", "dpo", "kto"])
def test_max_length_past_the_models_positions_is_refused_before_any_work(stage, tiny_model_dir, tmp_path):
    if stage == "sft":
        data = _write(tmp_path / "d.jsonl", [{"prompt": "the film", "completion": " was fine"}] * 4)
    elif stage == "kto":
        data = _write(tmp_path / "d.jsonl", [{"prompt": "the film", "completion": f" was {i}", "label": i % 2 == 0}
                                             for i in range(4)])
    else:
        data = _write(tmp_path / "d.jsonl", _pairs(8, 4))
    out = tmp_path / "out"
    # the tiny GPT-2 has 256 positions (n_positions)
    message = _refused(stage, tiny_model_dir, data, out, "--max_length", "300")
    assert "max_length 300" in message and "256" in message and "n_positions" in message


def test_an_unset_max_length_fits_the_model(tiny_model_dir):
    from alignlab.models import resolve_max_length

    assert resolve_max_length(tiny_model_dir, None) == 256  # 512 by default, the model holds 256
    assert resolve_max_length(tiny_model_dir, 100) == 100


def test_rows_longer_than_the_positions_train_with_an_unset_max_length(tiny_model_dir, tmp_path):
    # a completion of ~400 tokens: with the old default (512) this crashed with an IndexError
    long = " ".join(["the film was good"] * 100)
    data = _write(tmp_path / "long.jsonl", [{"prompt": "the film", "completion": " " + long}] * 2)
    out = tmp_path / "out"
    result = _invoke(["sft", "--model", str(tiny_model_dir), "--data", data, "--out", str(out),
                      "--train.max_steps", "1", "--train.device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["data"]["truncated"] == 2


def test_the_dpo_reference_cache_is_keyed_by_the_length_used(tiny_model_dir, tmp_path):
    from safetensors import safe_open

    data = _write(tmp_path / "d.jsonl", _pairs(4, 2))
    out = tmp_path / "out"
    result = _invoke(["dpo", "--model", str(tiny_model_dir), "--data", data, "--out", str(out),
                      "--eval_fraction", "0", "--train.max_steps", "1", "--train.device", "cpu"])
    assert result.exit_code == 0, result.output
    (cache,) = (out / "cache").glob("*.safetensors")
    with safe_open(str(cache), "pt") as handle:
        key = json.loads(next(iter(handle.metadata().values())))
    assert key["max_length"] == 256  # unset: the model's 256 positions, which the rows were cut to


def test_online_lengths_past_the_positions_are_refused(tiny_model_dir, tmp_path):
    prompts = _write(tmp_path / "p.jsonl", [{"prompt": "the film"}] * 2)
    message = _one_error(_invoke(["grpo", "--model", str(tiny_model_dir), "--prompts", prompts,
                                  "--out", str(tmp_path / "out"), "--reward", "{type: gold, task: sentiment}",
                                  "--sampling.max_new_tokens", "300"]))
    assert "the longest prompt (5 tokens) + sampling.max_new_tokens (300) = 305 exceeds the 256 positions" in message
    assert "lower sampling.max_new_tokens" in message


# --- 7: every pair shares one prompt --------------------------------------------------------------


@pytest.mark.parametrize("stage", ["reward-model", "dpo"])
def test_pairs_of_one_prompt_with_a_held_out_fraction_are_refused(stage, tiny_model_dir, tmp_path):
    data = _write(tmp_path / "one-prompt.jsonl", _pairs(6, 1))
    out = tmp_path / "out"
    message = _refused(stage, tiny_model_dir, data, out, "--max_length", "64")
    assert "one-prompt.jsonl" in message and "share one prompt" in message and "eval_fraction 0" in message


def test_a_large_held_out_fraction_still_leaves_a_prompt_to_train_on(tiny_tokenizer, tmp_path):
    from alignlab.stages.offline.pairs import load_pair_splits

    data = _write(tmp_path / "two-prompts.jsonl", _pairs(6, 2))
    train_ex, eval_ex, *_ = load_pair_splits(data, None, 0.9, 0, tiny_tokenizer, 64, 32)
    assert len({e.prompt for e in train_ex}) == 1 and len({e.prompt for e in eval_ex}) == 1


# --- 9: KTO with one side only; null and NaN fields -----------------------------------------------


@pytest.mark.parametrize("label", [True, False])
def test_kto_with_one_label_only_is_refused_unless_allowed(label, tiny_model_dir, tmp_path):
    data = _write(tmp_path / "kto.jsonl", [{"prompt": "the film", "completion": f" was {i}", "label": label}
                                           for i in range(4)])
    out = tmp_path / "out"
    args = ["kto", "--model", str(tiny_model_dir), "--data", data, "--out", str(out), "--max_length", "64"]
    message = _one_error(_invoke(args))
    assert "kto.jsonl" in message and ("all 4 examples are " + ("desirable" if label else "undesirable")) in message
    assert "allow_one_sided" in message and not out.exists()
    result = _invoke(args + ["--allow_one_sided", "true", "--train.max_steps", "1", "--train.device", "cpu"])
    assert result.exit_code == 0, result.output


def _error(parse, record) -> str:
    with pytest.raises(DataError) as info:
        parse(record, Source("data.jsonl", 3))
    return str(info.value)


def test_a_null_field_says_null_and_a_missing_one_says_missing():
    assert "'prompt': is null" in _error(parse_sft_record, {"prompt": None, "completion": "x"})
    assert "'completion': is null" in _error(parse_sft_record, {"prompt": "p", "completion": None})
    assert "'prompt': is null" in _error(parse_preference_record, {"prompt": None, "chosen": "a", "rejected": "b"})
    assert "'chosen': is null" in _error(parse_preference_record, {"prompt": "p", "chosen": None, "rejected": "b"})
    assert "missing field" in _error(parse_preference_record, {"prompt": "p", "rejected": "b"})


def test_null_is_named_wherever_a_record_holds_it():
    from alignlab.data.formats import parse_prompt_record
    from alignlab.data.stepwise import parse_stepwise_record

    assert "'messages': is null" in _error(parse_sft_record, {"messages": None})
    assert "'text': is null" in _error(parse_sft_record, {"text": None})
    assert "'completion': missing field" in _error(parse_sft_record, {})
    assert "'messages': is null" in _error(parse_prompt_record, {"messages": None})
    assert "'ranking': is null" in _error(parse_preference_record,
                                          {"prompt": "p", "responses": ["a", "b"], "ranking": None})
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]
    assert "message 1: content is null" in _error(parse_sft_record, {"messages": messages})
    assert "message 0: role is null" in _error(parse_sft_record, {"messages": [{"role": None, "content": "x"}]})
    assert "message 0: missing 'role'" in _error(parse_sft_record, {"messages": [{"content": "x"}]})
    steps = {"prompt": "p", "completions": ["a", "b"]}
    assert "labels[1]: must be true/false (or 0/1) (got null)" in _error(
        parse_stepwise_record, {**steps, "labels": [True, None]})
    assert "(got NaN)" in _error(parse_stepwise_record, {**steps, "labels": [True, math.nan]})
    assert "(got 2)" in _error(parse_stepwise_record, {**steps, "labels": [True, 2]})


@pytest.mark.parametrize("value,shown", [(math.nan, "NaN"), (math.inf, "inf"), (-math.inf, "-inf")])
def test_non_finite_numbers_say_what_they_are(value, shown):
    record = {"prompt": "p", "chosen": "a", "rejected": "b"}
    assert f"(got {shown})" in _error(parse_preference_record, {**record, "margin": value})
    assert f"(got {shown})" in _error(parse_preference_record, {**record, "label": value})
