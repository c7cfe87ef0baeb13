"""Pairwise judges, win-rate statistics and the winrate stage, on a tiny model.

Statistics are checked against closed forms and independent computations; the reward-model judge
against σ(r_a − r_b) computed by hand; the LLM judge's order averaging by swapping A and B; the
human-labels judge by lookups in both orders; the stage end to end (a model against itself).
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from alignlab.data.readers import write_jsonl
from alignlab.data.tokenize import tokenize_example
from alignlab.eval.winrate import (
    bootstrap_mean_interval,
    wilson_interval,
    win_rate,
    z_value,
)
from alignlab.feedback.ai.constitution import load_constitution
from alignlab.feedback.ai.judges import LLMJudge, RewardModelJudge
from alignlab.feedback.human.labels_judge import HumanLabelsJudge
from alignlab.feedback.judgement import JudgeError, Judgement, PairwiseJudge
from alignlab.feedback.ai.llm.base import LLMError
from alignlab.models import load_reward_model, load_tokenizer, reward_scores

# --------------------------------------------------------------------------- statistics


def test_wilson_interval_for_7_of_10_matches_the_closed_form():
    # By hand, z = 1.959964: centre (0.7 + z²/20) / (1 + z²/10) = 0.644498,
    # half width z/(1 + z²/10) · √(0.7·0.3/10 + z²/400) = 0.247720.
    low, high = wilson_interval(7, 10)
    assert low == pytest.approx(0.396778, abs=1e-5)
    assert high == pytest.approx(0.892209, abs=1e-5)


def test_wilson_bounds_are_where_the_score_test_is_exactly_significant():
    """An independent route: the Wilson bounds solve |p̂ − p| = z·√(p(1 − p)/n); find them by bisection."""
    z = z_value(0.95)
    for successes, n in [(7, 10), (1, 20), (37.5, 50)]:
        phat = successes / n

        def excess(p, phat=phat, n=n):
            return abs(phat - p) - z * math.sqrt(p * (1 - p) / n)

        def root(lo, hi, excess=excess):  # excess(lo) and excess(hi) differ in sign
            for _ in range(100):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if (excess(mid) > 0) == (excess(lo) > 0) else (lo, mid)
            return (lo + hi) / 2

        low, high = wilson_interval(successes, n)
        assert low == pytest.approx(root(1e-12, phat), abs=1e-9)
        assert high == pytest.approx(root(phat, 1 - 1e-12), abs=1e-9)


def test_wilson_interval_edges():
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert 0 < wilson_interval(0, 10)[1] < 0.35  # not the degenerate [0, 0] of p̂ ± z·se
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_bootstrap_interval_contains_the_mean_shrinks_with_n_and_matches_the_normal_interval():
    rng = random.Random(0)
    small = [float(rng.random() < 0.3) for _ in range(20)]
    large = [float(rng.random() < 0.3) for _ in range(1000)]
    widths = []
    for values in (small, large):
        mean = sum(values) / len(values)
        low, high = bootstrap_mean_interval(values, resamples=2000, seed=1)
        assert low <= mean <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 4  # ~ 1/√n: √(1000/20) ≈ 7
    # For a large sample the percentile bootstrap agrees with mean ± z·sd/√n.
    mean = sum(large) / len(large)
    se = math.sqrt(sum((v - mean) ** 2 for v in large) / (len(large) - 1) / len(large))
    low, high = bootstrap_mean_interval(large, resamples=4000, seed=2)
    assert low == pytest.approx(mean - 1.96 * se, abs=0.006)
    assert high == pytest.approx(mean + 1.96 * se, abs=0.006)
    assert bootstrap_mean_interval(large, seed=3) == bootstrap_mean_interval(large, seed=3)  # seeded


def test_win_rate_weighs_prompts_equally_and_counts_ties_as_half():
    # prompt 0: two samples, A wins one (p 1) and loses one (p 0): mean 0.5; prompt 1: p 1.0; prompt 2: nothing judged.
    summary = win_rate([[1.0, 0.0], [1.0], []], outcomes=[1.0, 0.0, 0.5], resamples=500)
    assert summary.win_rate == pytest.approx(0.75)  # (0.5 + 1.0) / 2, not (1 + 0 + 1) / 3
    assert summary.n_prompts == 2 and summary.n == 3
    assert (summary.wins, summary.losses, summary.ties) == (1, 1, 1)
    assert summary.hard_win_rate == pytest.approx(0.5)  # (1 + 0.5) / 3
    assert (summary.wilson_low, summary.wilson_high) == pytest.approx(wilson_interval(1.5, 3))
    assert summary.ci_low <= summary.win_rate <= summary.ci_high


# --------------------------------------------------------------------------- reward-model judge

PROMPTS = ["the film was", "hello", "i loved"]
A = [" a delight from start to finish", " world this is a tiny corpus", " the soundtrack"]
B = [" dull and tedious", " world", " the soundtrack"]  # the third pair is identical


def test_reward_model_judge_is_sigmoid_of_the_reward_difference(tiny_model_dir):
    judge = RewardModelJudge(tiny_model_dir)
    assert isinstance(judge, PairwiseJudge)
    results = judge.judge(PROMPTS, A, B)

    tokenizer = load_tokenizer(tiny_model_dir)
    rm = load_reward_model(tiny_model_dir, tokenizer).eval()

    def reward(prompt, response):
        row, _ = tokenize_example(tokenizer, prompt, response, max_length=1024, max_prompt_length=512)
        ids = torch.tensor([row.input_ids])
        with torch.no_grad():
            return reward_scores(rm, ids, torch.ones_like(ids)).item()

    for i in range(2):
        r_a, r_b = reward(PROMPTS[i], A[i]), reward(PROMPTS[i], B[i])
        assert results[i].p_a == pytest.approx(1 / (1 + math.exp(-(r_a - r_b))), abs=1e-5)
        assert results[i].winner == ("a" if r_a > r_b else "b")
        assert results[i].details["reward_a"] == pytest.approx(r_a, abs=1e-5)
    assert results[2].p_a == 0.5 and results[2].winner == "tie"
    # Swapping the responses gives 1 − p_a.
    swapped = judge.judge(PROMPTS, B, A)
    for r, s in zip(results, swapped):
        assert s.p_a == pytest.approx(1 - r.p_a, abs=1e-6)


def test_reward_model_judge_reports_a_too_long_prompt_as_that_items_error(tiny_model_dir):
    judge = RewardModelJudge(tiny_model_dir, max_prompt_length=8)
    results = judge.judge(["the film was " * 10, "hello"], [" good", " good"], [" bad", " bad"])
    assert isinstance(results[0], JudgeError) and "max_prompt_length" in results[0].message
    assert isinstance(results[1], Judgement)


# --------------------------------------------------------------------------- LLM judge


@pytest.fixture(scope="module")
def tiny_llm(tiny_model_dir):
    from alignlab.feedback.ai.llm.local import LocalLLM

    return LocalLLM(tiny_model_dir, device="cpu", batch_size=4)


def test_llm_judge_on_a_local_model_averages_both_orders(tiny_llm):
    judge = LLMJudge(tiny_llm)
    results = judge.judge(PROMPTS, A, B)
    swapped = judge.judge(PROMPTS, B, A)
    for r, s in zip(results[:2], swapped[:2]):
        assert 0.0 < r.p_a < 1.0
        assert s.p_a == pytest.approx(1 - r.p_a, abs=1e-5)
        # the two orders' estimates are kept, and averaging them is p_a
        assert r.p_a == pytest.approx((r.details["p_a_when_first"] + r.details["p_a_when_second"]) / 2)
    assert results[2].p_a == 0.5 and results[2].winner == "tie"  # identical responses: not asked


class ScriptedLLM:
    """A backend answering next_token_logprobs from a function of the prompt (or an LLMError)."""

    name = "scripted"

    def __init__(self, answer):
        self.answer, self.prompts = answer, []

    def complete(self, prompts, settings):
        raise NotImplementedError

    def chat(self, conversations, settings):
        raise NotImplementedError

    def next_token_logprobs(self, prompts, candidates):
        assert list(candidates) == ["A", "B"]
        self.prompts += list(prompts)
        return [self.answer(p) for p in prompts]


def test_a_judge_that_always_picks_the_first_option_gives_one_half():
    """Pure position bias cancels: P(A) = 0.8 in both orders gives p_a = (0.8 + 0.2) / 2."""
    backend = ScriptedLLM(lambda p: {"A": math.log(0.8), "B": math.log(0.2)})
    (result,) = LLMJudge(backend).judge(["q"], ["x"], ["y"])
    assert result.p_a == pytest.approx(0.5)
    assert result.details == pytest.approx({"p_a_when_first": 0.8, "p_a_when_second": 0.2})
    assert len(backend.prompts) == 2
    assert backend.prompts[0].endswith("The answer is: (") and "(A) x\n(B) y" in backend.prompts[0]
    assert "(A) y\n(B) x" in backend.prompts[1]
    (one_order,) = LLMJudge(backend, both_orders=False).judge(["q"], ["x"], ["y"])
    assert one_order.p_a == pytest.approx(0.8)


def test_llm_judge_normalises_over_a_and_b_and_asks_the_principles_question():
    # Content-aware judge: P("the option showing 'good' is better") = 0.9, not normalised logits.
    def answer(prompt):
        good_first = "(A) good" in prompt
        return {"A": math.log(0.09 if good_first else 0.01), "B": math.log(0.01 if good_first else 0.09)}

    principle = load_constitution("default").principles[0]
    backend = ScriptedLLM(answer)
    (result,) = LLMJudge(backend, principle).judge(["q"], ["good"], ["bad"])
    assert result.p_a == pytest.approx(0.9) and result.winner == "a" and result.outcome == 1.0
    assert principle.comparison in backend.prompts[0]


def test_llm_errors_stay_with_their_item():
    def answer(prompt):
        return LLMError("server said 500", attempts=3) if "broken" in prompt else {"A": -1.0, "B": -1.0}

    results = LLMJudge(ScriptedLLM(answer)).judge(["q", "q"], ["broken", "fine"], ["other", "other2"])
    assert isinstance(results[0], JudgeError) and "server said 500" in results[0].message
    assert isinstance(results[1], Judgement) and results[1].p_a == pytest.approx(0.5)


# --------------------------------------------------------------------------- human labels


def test_human_labels_judge_looks_pairs_up_in_either_order(tmp_path):
    path = tmp_path / "labels.jsonl"
    write_jsonl(path, [
        {"prompt": "p1", "chosen": "good", "rejected": "bad"},
        {"prompt": "p2", "chosen": "x", "rejected": "y", "label": 0.7},
        {"prompt": "p3", "chosen": "u", "rejected": "v", "label": 1.0},
        {"prompt": "p3", "chosen": "v", "rejected": "u", "label": 1.0},  # two people disagree: a tie
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "go away"}]},
    ])
    judge = HumanLabelsJudge(path)
    results = judge.judge(
        ["p1", "p1", "p2", "p3", "p1", "p1", [{"role": "user", "content": "hi"}]],
        ["good", "bad", "y", "u", "good", "same", [{"role": "assistant", "content": "go away"}]],
        ["bad", "good", "x", "v", "other", "same", [{"role": "assistant", "content": "hello"}]],
    )
    assert (results[0].p_a, results[0].winner) == (1.0, "a")
    assert (results[1].p_a, results[1].winner) == (0.0, "b")  # stored the other way round
    assert results[2].p_a == pytest.approx(0.3)
    assert (results[3].p_a, results[3].winner, results[3].details["labels"]) == (0.5, "tie", 2)
    assert isinstance(results[4], JudgeError) and "no human label" in results[4].message
    assert results[5].winner == "tie"  # identical responses
    assert results[6].p_a == 0.0  # conversations match too


def test_human_labels_may_compare_an_empty_answer_which_training_data_may_not(tmp_path):
    from alignlab.data.errors import DataError
    from alignlab.data.formats import load_preferences

    path = tmp_path / "labels.jsonl"
    write_jsonl(path, [{"prompt": "p1", "chosen": "a real answer", "rejected": ""}])
    with pytest.raises(DataError, match="line 1: field 'rejected': empty response"):
        load_preferences(path)  # as training data: refused
    (result,) = HumanLabelsJudge(path).judge(["p1"], [""], ["a real answer"])
    assert (result.p_a, result.winner) == (0.0, "b")
    # the same for conversations: an assistant message with no content is an answer to judge
    chat = tmp_path / "chat_labels.jsonl"
    prompt = [{"role": "user", "content": "hi"}]
    empty, real = [{"role": "assistant", "content": ""}], [{"role": "assistant", "content": "hello"}]
    write_jsonl(chat, [{"prompt": prompt, "chosen": empty, "rejected": real}])
    with pytest.raises(DataError, match="line 1: field 'chosen': empty response"):
        load_preferences(chat)
    (result,) = HumanLabelsJudge(chat).judge([prompt], [empty], [real])
    assert (result.p_a, result.winner) == (1.0, "a")


def test_judgement_validates_its_probability():
    with pytest.raises(ValueError):
        Judgement(1.5)
    with pytest.raises(ValueError):
        Judgement(float("nan"))
    assert Judgement(0.7).outcome == 1.0 and Judgement(0.5).outcome == 0.5 and Judgement(0.7, "b").outcome == 0.0


# --------------------------------------------------------------------------- the stage


def test_winrate_stage_model_against_itself(tiny_model_dir, tmp_path):
    from alignlab.stages.evaluation.winrate import WinRateConfig, run

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": p} for p in ["the film was", "hello", "i loved", "the acting was",
                                                 "not the worst", "a dull", "the cast", "i think"]])
    settings = {"model_a": str(tiny_model_dir), "model_b": str(tiny_model_dir), "prompts": str(prompts),
                    "judge": {"type": "reward_model", "path": str(tiny_model_dir)}, "samples_per_prompt": 2,
                    "sampling": {"max_new_tokens": 8}, "resamples": 500,
                    "seed": 3}  # one of its 32 samples is empty: people may label that too
    out = tmp_path / "winrate"
    metrics = run(WinRateConfig.model_validate(settings), out)

    assert metrics["n"] == 16 and metrics["errors"] == 0 and metrics["n_prompts"] == 8
    assert metrics["ci_low"] < 0.5 < metrics["ci_high"]
    assert metrics["wilson_low"] < 0.5 < metrics["wilson_high"]
    assert metrics["mean_length_a"] > 0 and metrics["mean_length_b"] > 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["win_rate"] == pytest.approx(metrics["win_rate"]) and (out / "done.json").exists()
    lines = [json.loads(x) for x in (out / "data" / "judgements.jsonl").read_text().splitlines()]
    assert len(lines) == 16
    assert metrics["win_rate"] == pytest.approx(
        sum(sum(x["p_a"] for x in lines if x["prompt_index"] == i) / 2 for i in range(8)) / 8)
    assert any(x["response_a"] != x["response_b"] for x in lines)  # A and B draw from their own seeds

    # People label the queue (always the first response shown): a human-judged run on the same seeds.
    queue = [json.loads(x) for x in (out / "data" / "label_queue.jsonl").read_text().splitlines()]
    labels = tmp_path / "labels.jsonl"
    write_jsonl(labels, [{"prompt": q["prompt"], "chosen": q["responses"][0], "rejected": q["responses"][1]}
                         for q in queue])
    human = run(WinRateConfig.model_validate({**settings, "judge": {"type": "human", "labels": str(labels)}}),
                tmp_path / "human")
    assert human["errors"] == 0 and human["n"] == 16
    assert human["wins"] + human["losses"] == len(queue)  # every distinct pair labelled; the rest identical ties


def test_winrate_config_rejects_an_unknown_judge_type():
    from pydantic import ValidationError

    from alignlab.stages.evaluation.winrate import WinRateConfig

    with pytest.raises(ValidationError):
        WinRateConfig.model_validate({"model_a": "a", "model_b": "b", "prompts": "p", "judge": {"type": "oracle"}})
    with pytest.raises(ValidationError):
        WinRateConfig.model_validate({"model_a": "a", "model_b": "b", "prompts": "p",
                                      "judge": {"type": "llm", "llm": {"type": "local", "path": "m"},
                                                "question": "Which?", "principle": "honesty"}})


def test_winrate_stage_with_a_local_llm_judge_asking_a_principle(tiny_model_dir, tmp_path):
    from alignlab.stages.evaluation.winrate import WinRateConfig, run

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": p} for p in ["the film was", "hello", "i loved"]])
    principle = load_constitution("default").principles[0].name
    cfg = WinRateConfig.model_validate({
        "model_a": str(tiny_model_dir), "model_b": str(tiny_model_dir), "prompts": str(prompts),
        "judge": {"type": "llm", "llm": {"type": "local", "path": str(tiny_model_dir), "device": "cpu"},
                  "principle": principle},
        "sampling": {"max_new_tokens": 6}, "resamples": 200,
    })
    metrics = run(cfg, tmp_path / "out")
    assert metrics["n"] + metrics["errors"] == 3 and metrics["errors"] == 0
    assert 0.0 < metrics["win_rate"] < 1.0 and 0.0 < metrics["llm_first_option_rate"] < 1.0
    assert metrics["judge"].startswith("llm:local:")
