"""Reward sources for online RL: each source, the rule terms, weighted sums, fault handling, config."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
import torch
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from user_modules import importable_module

from alignlab.feedback.rewards import (
    CallableSource,
    GoldSource,
    LengthPenalty,
    MissingEOSPenalty,
    RewardError,
    RewardModelSource,
    RewardOutputError,
    RewardSource,
    RewardSpec,
    ScoringBatch,
    WeightedSum,
    build_reward,
    describe_reward,
    parse_reward_spec,
    score_safely,
)
from alignlab.models import load_reward_model, reward_scores
from alignlab.tasks import get_task

# A user's reward module, written to disk and imported by "module:function" like a real one.
USER_MODULE = "alignlab_test_user_rewards"
USER_CODE = '''
calls = []

def word_count(prompts, completions):
    calls.append(len(prompts))
    return [float(len(c.split())) for c in completions]

def nan_for_bad(prompts, completions):
    return [float("nan") if "bad" in c else 1.0 for c in completions]

def none_for_bad(prompts, completions):
    return [None if "bad" in c else 1.0 for c in completions]

def raise_on_boom(prompts, completions):
    for c in completions:
        if "boom" in c:
            raise RuntimeError(f"cannot score {c.strip()!r}")
    return [2.0] * len(completions)

def only_one_at_a_time(prompts, completions):
    if len(completions) > 1:
        raise MemoryError("batch too large")
    return [3.0]

def one_too_many(prompts, completions):
    return [0.0] * (len(completions) + 1)

def a_scalar(prompts, completions):
    return 1.0

NOT_A_FUNCTION = 3
'''


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    with importable_module(tmp_path_factory.mktemp("user_rewards"), USER_MODULE, USER_CODE) as name:
        yield name


def text_batch(completions, prompts=None, finished=None, completion_ids=None):
    n = len(completions)
    return ScoringBatch(
        prompts=prompts or [f"prompt {i}" for i in range(n)],
        completions=list(completions),
        prompt_ids=[[5, 6]] * n,
        completion_ids=completion_ids or [[7] * (i + 1) for i in range(n)],
        finished=finished or [True] * n,
    )


# --------------------------------------------------------------------------- the batch


def test_batch_fields_must_have_one_entry_per_sample():
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        ScoringBatch(["a", "b"], ["x"], [[1], [2]], [[3], [4]], [True, True])


def test_batch_from_sampled_decodes_and_marks_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    texts = [" the film was a delight", " dull and tedious"]
    ids = [tok(texts[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
           tok(texts[1], add_special_tokens=False)["input_ids"]]
    batch = ScoringBatch.from_sampled(["p", "q"], [[1], [2]], ids, tok)
    assert batch.finished == [True, False]
    assert [c.strip() for c in batch.completions] == [t.strip() for t in texts]
    assert "</s>" not in batch.completions[0]
    assert batch.select([1]).completion_ids == [ids[1]]


# --------------------------------------------------------------------------- reward model


@pytest.fixture(scope="module")
def tiny_reward_model(tiny_model_dir, tiny_tokenizer):
    return load_reward_model(tiny_model_dir, tiny_tokenizer)


def tokenized_batch(tok):
    prompts = ["the film was", "a dull", "i loved the soundtrack and", "hello"]
    completions = [" a delight", " and tedious movie with a plot", " the cast", " world this is"]
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    completion_ids = [tok(c, add_special_tokens=False)["input_ids"] for c in completions]
    completion_ids[0] = completion_ids[0] + [tok.eos_token_id]  # one finished, the rest cut off
    return ScoringBatch(prompts, completions, prompt_ids, completion_ids, [True, False, False, False])


def test_reward_model_source_matches_reward_scores_on_the_padded_batch(tiny_reward_model, tiny_model_dir, tiny_tokenizer):
    batch = tokenized_batch(tiny_tokenizer)
    rows = [p + c for p, c in zip(batch.prompt_ids, batch.completion_ids)]
    width = max(map(len, rows))
    pad = tiny_tokenizer.pad_token_id
    ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    tiny_reward_model.eval()
    with torch.no_grad():
        expected = reward_scores(tiny_reward_model, ids, mask)

    tiny_reward_model.train()
    for batch_size in (1, 2, 64):
        got = RewardModelSource(tiny_reward_model, tiny_tokenizer, batch_size=batch_size).score(batch)
        torch.testing.assert_close(torch.tensor(got), expected, atol=1e-5, rtol=1e-5)
    assert tiny_reward_model.training, "scoring must put the model back in the mode it was in"
    assert len({round(x, 6) for x in got}) == len(got)  # the rows really score differently

    # Loading by path gives the same model (the head is seeded), hence the same scores.
    by_path = RewardModelSource(tiny_model_dir, tiny_tokenizer)
    torch.testing.assert_close(torch.tensor(by_path.score(batch)), expected, atol=1e-5, rtol=1e-5)


def test_reward_model_source_refuses_a_model_with_another_pad_id(tiny_model_dir, tiny_tokenizer):
    model = load_reward_model(tiny_model_dir, tiny_tokenizer)
    model.config.pad_token_id = tiny_tokenizer.eos_token_id
    with pytest.raises(ValueError, match="pad_token_id"):
        RewardModelSource(model, tiny_tokenizer)


# --------------------------------------------------------------------------- gold and callable


def test_gold_source_is_the_task_gold_reward():
    prompts = ["the film", "this movie"]
    completions = [" was a wonderful delight, i loved it", " was awful and boring"]
    source = GoldSource("sentiment")
    got = source.score(text_batch(completions, prompts=prompts))
    assert got == get_task("sentiment").gold_reward(prompts, completions)
    assert got[0] > 0 > got[1]
    assert source.name == "gold:sentiment"
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        GoldSource("nope")


def test_callable_source_imports_and_calls_once_per_batch(user_module):
    source = CallableSource(f"{user_module}:word_count")
    module = sys.modules[user_module]
    module.calls.clear()
    assert source.score(text_batch([" one two", " three", ""])) == [2.0, 1.0, 0.0]
    assert module.calls == [3]
    assert source.name == f"callable:{user_module}:word_count"
    assert isinstance(source, RewardSource)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_colon_here", "expected 'package.module:function'"),
        ("alignlab_no_such_module_xyz:f", "no module named 'alignlab_no_such_module_xyz'"),
        ("{m}:missing_function", "has no attribute 'missing_function'"),
        ("{m}:NOT_A_FUNCTION", "is a int, not a function"),
    ],
)
def test_callable_source_bad_spec_errors_name_the_spec(user_module, spec, message):
    spec = spec.format(m=user_module)
    with pytest.raises(ValueError, match=message) as err:
        CallableSource(spec)
    assert repr(spec) in str(err.value)


# --------------------------------------------------------------------------- rule terms


def test_length_penalty_literal_values():
    batch = text_batch(["a", "b", "c", "d"], completion_ids=[[], [1, 2, 3], [1] * 5, [1] * 10])
    assert LengthPenalty(target_tokens=3, per_token=0.5).score(batch) == [0.0, 0.0, -1.0, -3.5]
    with pytest.raises(ValueError, match="per_token"):
        LengthPenalty(3, -1.0)


def test_missing_eos_penalty_literal_values():
    batch = text_batch(["a", "b", "c"], finished=[True, False, True])
    assert MissingEOSPenalty().score(batch) == [0.0, -1.0, 0.0]
    assert MissingEOSPenalty(penalty=-2.5).score(batch) == [0.0, -2.5, 0.0]


# --------------------------------------------------------------------------- weighted sum


def test_weighted_sum_is_the_hand_sum_and_reports_terms(user_module):
    batch = text_batch([" one two", " three four five", " six"], finished=[True, False, False],
                       completion_ids=[[1, 2], [1, 2, 3, 4], [1]])
    words = CallableSource(f"{user_module}:word_count")
    total = WeightedSum([(words, 0.5), (MissingEOSPenalty(-1.0), 2.0), (LengthPenalty(2, 1.0), 1.0)])
    hand = [0.5 * 2 + 0, 0.5 * 3 + 2 * -1 + -2, 0.5 * 1 + 2 * -1 + 0]
    assert total.score(batch) == pytest.approx(hand)

    result = score_safely(total, batch)
    assert result.scores.dtype == torch.float32 and result.valid.all()
    torch.testing.assert_close(result.scores, torch.tensor(hand, dtype=torch.float32))
    assert result.terms == {
        f"callable:{user_module}:word_count": [2.0, 3.0, 1.0],
        "missing_eos": [0.0, -1.0, -1.0],
        "length_penalty": [0.0, -2.0, 0.0],
    }
    assert result.problems == []
    assert describe_reward(total) == (
        f"0.5 * callable:{user_module}:word_count + 2 * missing_eos(penalty=-1) + "
        "1 * length_penalty(target_tokens=2, per_token=1)"
    )


def test_weighted_sum_names_repeated_terms_apart():
    total = WeightedSum([(MissingEOSPenalty(-1.0), 1.0), (MissingEOSPenalty(-2.0), 1.0)])
    result = score_safely(total, text_batch(["a"], finished=[False]))
    assert result.terms == {"missing_eos": [-1.0], "missing_eos#2": [-2.0]}
    assert result.scores.tolist() == [-3.0]


# --------------------------------------------------------------------------- faults


def test_nan_for_one_sample_drops_only_that_sample(user_module):
    batch = text_batch([" good", " bad", " fine"], prompts=["p0", "p1", "p2"])
    result = score_safely(CallableSource(f"{user_module}:nan_for_bad"), batch)
    assert result.valid.tolist() == [True, False, True]
    assert result.scores[0] == 1.0 and result.scores[2] == 1.0 and math.isnan(result.scores[1])
    assert result.num_invalid == 1
    assert len(result.problems) == 1
    assert "sample 1" in result.problems[0] and "'p1'" in result.problems[0]
    assert "not finite" in result.problems[0]


def test_a_value_that_is_not_a_number_drops_its_sample(user_module):
    result = score_safely(CallableSource(f"{user_module}:none_for_bad"), text_batch([" bad", " ok"]))
    assert result.valid.tolist() == [False, True]
    assert "sample 0" in result.problems[0] and "None is not a number" in result.problems[0]


def test_exception_on_one_completion_drops_only_that_sample(user_module):
    long_prompt = "a very long prompt " * 10
    batch = text_batch([" fine", " fine too", " boom here", " ok"], prompts=["p0", "p1", long_prompt, "p3"])
    result = score_safely(CallableSource(f"{user_module}:raise_on_boom"), batch)
    assert result.valid.tolist() == [True, True, False, True]
    assert result.scores[[0, 1, 3]].tolist() == [2.0, 2.0, 2.0]
    (problem,) = result.problems
    assert problem.startswith("sample 2 (prompt ")
    assert "RuntimeError: cannot score 'boom here'" in problem
    assert long_prompt not in problem and long_prompt[:50] in problem  # the prompt is shortened


def test_failure_of_the_batch_only_is_scored_one_by_one(user_module):
    result = score_safely(CallableSource(f"{user_module}:only_one_at_a_time"), text_batch(["a", "b", "c"]))
    assert result.valid.all() and result.scores.tolist() == [3.0, 3.0, 3.0]
    assert result.problems == []


def test_stop_raises_a_reward_error_naming_the_sample(user_module):
    batch = text_batch([" fine", " boom", " ok"], prompts=["p0", "the prompt of sample one", "p2"])
    with pytest.raises(RewardError, match=r"sample 1 \(prompt 'the prompt of sample one'\).*cannot score") as err:
        score_safely(CallableSource(f"{user_module}:raise_on_boom"), batch, on_error="stop")
    assert err.value.index == 1
    with pytest.raises(RewardError, match="sample 1 .*not finite"):
        score_safely(CallableSource(f"{user_module}:nan_for_bad"), text_batch([" ok", " bad"]), on_error="stop")


@pytest.mark.parametrize("on_error", ["drop", "stop"])
def test_wrong_number_of_scores_is_always_an_error(user_module, on_error):
    batch = text_batch(["a", "b"])
    with pytest.raises(RewardOutputError, match="returned 3 scores for 2 samples"):
        score_safely(CallableSource(f"{user_module}:one_too_many"), batch, on_error=on_error)
    with pytest.raises(RewardOutputError, match="returned a float"):
        score_safely(CallableSource(f"{user_module}:a_scalar"), batch, on_error=on_error)
    total = WeightedSum([(MissingEOSPenalty(), 1.0), (CallableSource(f"{user_module}:one_too_many"), 1.0)])
    with pytest.raises(RewardOutputError):
        score_safely(total, batch, on_error=on_error)


def test_weighted_sum_sample_invalid_in_any_term_is_invalid(user_module):
    batch = text_batch([" fine", " boom"], finished=[False, False])
    total = WeightedSum([(MissingEOSPenalty(-1.0), 1.0), (CallableSource(f"{user_module}:raise_on_boom"), 1.0)])
    result = score_safely(total, batch)
    assert result.valid.tolist() == [True, False]
    assert result.scores[0] == 1.0 and math.isnan(result.scores[1])
    assert result.terms["missing_eos"] == [-1.0, -1.0]  # the other term is still reported
    assert math.isnan(result.terms[f"callable:{user_module}:raise_on_boom"][1])
    assert len(result.problems) == 1 and "sample 1" in result.problems[0]


# --------------------------------------------------------------------------- config


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reward: RewardSpec


def test_config_single_term_and_list(user_module):
    single = Recipe.model_validate(yaml.safe_load("reward: {type: missing_eos, penalty: -0.5}"))
    source = build_reward(single.reward)
    assert isinstance(source, MissingEOSPenalty) and source.penalty == -0.5

    weighted = build_reward({"type": "length_penalty", "target_tokens": 4, "per_token": 0.1, "weight": 3})
    assert isinstance(weighted, WeightedSum) and weighted.terms[0][2] == 3.0

    listed = Recipe.model_validate(yaml.safe_load(textwrap.dedent(f"""
        reward:
          - {{type: gold, task: sentiment, weight: 2.0}}
          - {{type: callable, function: "{user_module}:word_count"}}
          - {{type: missing_eos}}
    """)))
    source = build_reward(listed.reward)
    assert isinstance(source, WeightedSum)
    assert [(name, weight) for name, _, weight in source.terms] == [
        ("gold:sentiment", 2.0), (f"callable:{user_module}:word_count", 1.0), ("missing_eos", 1.0)
    ]
    batch = text_batch([" a wonderful film", " awful"], finished=[True, False])
    gold = get_task("sentiment").gold_reward(batch.prompts, batch.completions)
    assert source.score(batch) == pytest.approx([2 * gold[0] + 3, 2 * gold[1] + 1 - 1])


def test_config_reward_model_term(tiny_model_dir, tiny_tokenizer, tiny_reward_model):
    spec = parse_reward_spec({"type": "reward_model", "path": str(tiny_model_dir), "batch_size": 2})
    with pytest.raises(ValueError, match="needs the policy's tokenizer"):
        build_reward(spec)
    source = build_reward(spec, tiny_tokenizer, device="cpu")
    batch = tokenized_batch(tiny_tokenizer)
    expected = RewardModelSource(tiny_reward_model, tiny_tokenizer).score(batch)
    assert source.score(batch) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    "value, where, message",
    [
        ({"type": "magic"}, ("reward", "term"), "does not match any of the expected tags"),
        ({"type": "gold", "task": "sentiment", "bogus": 1}, ("reward", "term", "gold", "bogus"), "Extra inputs"),
        ([{"type": "missing_eos", "penalty": -1, "extra": 0}], ("reward", "terms", 0, "missing_eos", "extra"), "Extra"),
        ({"type": "gold", "task": "poetry"}, ("reward", "term", "gold", "task"), "unknown task 'poetry'"),
        ({"type": "callable", "function": "no_colon"}, ("reward", "term", "callable", "function"), "'no_colon'"),
        ({"type": "length_penalty", "target_tokens": 4}, ("reward", "term", "length_penalty", "per_token"), "required"),
        ([], ("reward", "terms"), "at least 1 item"),
    ],
)
def test_config_errors_name_the_key(value, where, message):
    with pytest.raises(ValidationError) as err:
        Recipe(reward=value)
    (error,) = err.value.errors()
    assert error["loc"] == where
    assert message in error["msg"]


def test_config_callable_errors_at_build_name_the_spec(user_module):
    with pytest.raises(ValueError, match=rf"'{user_module}:missing_function'.*has no attribute"):
        build_reward({"type": "callable", "function": f"{user_module}:missing_function"})


# --------------------------------------------------------------------------- process reward model


def test_a_prm_term_scores_a_completions_lines_and_shapes_a_sum(tmp_path, tiny_model_dir, tiny_tokenizer, user_module):
    from alignlab.models.value import load_critic

    # a token classifier with a fresh zero head: every step is scored σ(0) = 0.5
    prm_dir = tmp_path / "prm"
    load_critic(tiny_model_dir, pad_token_id=tiny_tokenizer.pad_token_id).save_pretrained(prm_dir)
    tiny_tokenizer.save_pretrained(prm_dir)
    batch = text_batch(["the film\nwas a delight", "", "hello\n\nworld\nagain"])
    prod = build_reward({"type": "prm", "path": str(prm_dir)})
    assert prod.score(batch) == pytest.approx([0.25, 0.0, 0.125])  # 2 steps, none, 3 (blank lines skipped)
    last = build_reward({"type": "prm", "path": str(prm_dir), "aggregate": "last"})
    assert last.score(batch) == pytest.approx([0.5, 0.0, 0.5])
    # shaping a verifier-like reward: the PRM term with a weight, summed with another source
    shaped = build_reward([{"type": "prm", "path": str(prm_dir), "weight": 0.2},
                           {"type": "callable", "function": f"{user_module}:word_count"}])
    result = score_safely(shaped, batch)
    lengths = [float(len(c.split())) for c in batch.completions]
    assert result.scores.tolist() == pytest.approx([0.2 * p + n for p, n in zip([0.25, 0.0, 0.125], lengths)])
    with pytest.raises(ValidationError):
        build_reward({"type": "prm", "path": str(prm_dir), "aggregate": "mean"})
