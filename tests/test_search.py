"""Search over reasoning steps: majority vote, step scoring by a token classifier, step sampling,
and beam search on toy scorers whose best path is known."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForTokenClassification

from alignlab.models.build import new_causal_lm, train_bpe_tokenizer
from alignlab.rollout import SamplingSettings
from alignlab.search import (
    StepSampler,
    StepScorer,
    aggregate,
    beam_search,
    majority_vote,
    newline_token_ids,
    weighted_vote,
)
from alignlab.tasks.arithmetic import ArithmeticTask

# --- majority vote ----------------------------------------------------------------------------


def test_majority_vote_picks_the_most_frequent_answer_and_breaks_ties_by_first_sample():
    assert majority_vote(["3", "5", "5", "3", "5"]) == 1  # "5" wins 3-2; its first sample is 1
    assert majority_vote(["7", "8", "8", "7"]) == 0  # 2-2 tie: "7" came first
    assert majority_vote([None, "4", None, "9", "9"]) == 3  # unanswered samples do not vote
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_weighted_vote_sums_each_answers_weights():
    # "5" has two votes but less weight in total than the single confident "3"
    assert weighted_vote(["5", "3", "5"], [0.2, 0.9, 0.3]) == 1
    assert weighted_vote(["5", "3", "5"], [0.5, 0.9, 0.5]) == 0  # 1.0 > 0.9
    assert weighted_vote(["4", "9"], [0.5, 0.5]) == 0  # tie: the earlier answer
    assert weighted_vote(["4", None, "9"], [float("nan"), 5.0, 0.1]) == 2  # NaN counts 0; None never votes
    assert weighted_vote([None], [1.0]) is None
    with pytest.raises(ValueError, match="weights"):
        weighted_vote(["1"], [])


# --- beam search on toy trees -----------------------------------------------------------------


def _tree_search(tree, values, **kwargs):
    """Beam search over `tree` (prefix -> children), scoring a prefix by values[its last step]
    and calling a step final when it has no children."""

    def expand(prefixes, k):
        options = []
        for _, steps in prefixes:
            children = tree[steps[-1] if steps else "root"]
            assert len(children) == k
            options.append([(child, child not in tree) for child in children])
        return options

    def score(prefixes):
        return [values[steps[-1]] for _, steps in prefixes]

    return beam_search(1, expand, score, **kwargs)


# A deceptive tree: "a" looks best after one step, but every path through it ends badly;
# the best finished solution is b -> b2 (0.9).
TREE = {"root": ["a", "b"], "a": ["a1", "a2"], "b": ["b1", "b2"]}
VALUES = {"a": 0.8, "b": 0.6, "a1": 0.1, "a2": 0.2, "b1": 0.3, "b2": 0.9}


def test_greedy_search_is_misled_and_a_wider_beam_finds_the_best_path():
    greedy = _tree_search(TREE, VALUES, beam_width=1, expansions=2, max_steps=5)
    assert greedy.best[0].steps == ("a", "a2") and greedy.best[0].done
    wide = _tree_search(TREE, VALUES, beam_width=2, expansions=2, max_steps=5, keep_history=True)
    assert wide.best[0].steps == ("b", "b2") and wide.best[0].score == pytest.approx(0.9)
    # round 1 keeps both first steps; round 2 keeps the two best of the four leaves
    assert [b.steps for b in wide.history[0][0]] == [("a",), ("b",)]
    assert [b.steps for b in wide.history[1][0]] == [("b", "b2"), ("b", "b1")]
    # the budget: 2 root expansions, then 2 per surviving beam
    assert (greedy.sampled_steps, wide.sampled_steps) == (4, 6)
    assert wide.rounds == 2


def test_finished_beams_compete_with_open_ones_and_max_steps_ends_every_beam():
    # "stop" is final at once with 0.5; "go" continues to a final 0.7 or 0.4
    tree = {"root": ["stop", "go"], "go": ["go-good", "go-bad"]}
    values = {"stop": 0.5, "go": 0.6, "go-good": 0.7, "go-bad": 0.4}
    result = _tree_search(tree, values, beam_width=2, expansions=2, max_steps=5)
    assert result.best[0].steps == ("go", "go-good")
    # the finished "stop" was kept next to the open beam, ranked by score
    assert [b.steps for b in result.final_beams[0]] == [("go", "go-good"), ("stop",)]
    # with one round only, nothing may continue: the best finished (here: cut) beam is "go"
    cut = _tree_search(tree, values, beam_width=2, expansions=2, max_steps=1)
    assert cut.best[0].steps == ("go",) and cut.best[0].done and cut.rounds == 1


def test_many_prompts_are_searched_in_one_call_per_round_and_nan_scores_rank_last():
    calls = []

    def expand(prefixes, k):
        calls.append(len(prefixes))
        return [[(f"{p}:{len(steps)}:{j}", len(steps) == 1) for j in range(k)] for p, steps in prefixes]

    def score(prefixes):
        # prompt 0 prefers the last option, prompt 1 the first; option 1 of prompt 1 is NaN
        out = []
        for p, steps in prefixes:
            j = int(steps[-1].rsplit(":", 1)[1])
            out.append(math.nan if (p, j) == (1, 1) else (j if p == 0 else -j))
        return out

    result = beam_search(2, expand, score, beam_width=2, expansions=3, max_steps=4)
    assert calls == [2, 4]  # one batched expand per round over every open beam of every prompt
    assert result.best[0].steps[-1] == "0:1:2"
    assert result.best[1].steps[-1] == "1:1:0"
    # prompt 1: the NaN option never survives; both beams end in their best option
    assert [b.steps for b in result.final_beams[1]] == [("1:0:0", "1:1:0"), ("1:0:2", "1:1:0")]


def test_beam_search_rejects_bad_settings_and_callables():
    with pytest.raises(ValueError, match="beam_width"):
        _tree_search(TREE, VALUES, beam_width=0, expansions=2, max_steps=3)
    with pytest.raises(ValueError, match="expand returned"):
        beam_search(2, lambda prefixes, k: [[("x", True)]], lambda p: [0.0], beam_width=1, expansions=1, max_steps=1)
    with pytest.raises(ValueError, match="score returned"):
        beam_search(1, lambda prefixes, k: [[("x", True)]], lambda p: [], beam_width=1, expansions=1, max_steps=1)


# --- scoring steps with a token classifier ----------------------------------------------------


@pytest.fixture(scope="module")
def arithmetic_models():
    """A tokenizer trained on arithmetic solutions, a tiny LM and a tiny token classifier on it."""
    texts = ArithmeticTask().corpus(300, seed=0)
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    lm = new_causal_lm(tokenizer, arch="gpt2", hidden_size=32, num_layers=2, num_heads=2, seed=0)
    torch.manual_seed(0)
    classifier = AutoModelForTokenClassification.from_config(lm.config.__class__(**{**lm.config.to_dict(), "num_labels": 1}))
    return tokenizer, lm.eval(), classifier.eval()


def test_step_scorer_reads_each_step_at_the_end_of_its_newline(arithmetic_models):
    tokenizer, _, classifier = arithmetic_models
    prompt = "Q: 2 + 3 * 4\n"
    steps = ["2 + 3 = 5", "5 * 4 = 21", "A: 21"]
    scorer = StepScorer(classifier, tokenizer, batch_size=2)
    probs = scorer.step_probs([prompt, prompt, prompt], [steps, steps[:1], []])

    # independently: tokenize prompt and each "step\n" separately, read σ(logit) at each end
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids += tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ends = []
    for step in steps:
        ids += tokenizer(step, add_special_tokens=False)["input_ids"] + tokenizer("\n", add_special_tokens=False)["input_ids"]
        ends.append(len(ids) - 1)
    with torch.no_grad():
        logits = classifier(input_ids=torch.tensor([ids])).logits[0, :, 0]
    expected = logits[ends].sigmoid().tolist()
    assert probs[0] == pytest.approx(expected, abs=1e-6)
    assert probs[1] == pytest.approx(expected[:1], abs=1e-6)  # a prefix scores its steps alike
    assert probs[2] == []

    # aggregations: product, weakest step, last step; nothing to aggregate is NaN
    assert aggregate(probs[0], "prod") == pytest.approx(math.prod(expected))
    assert aggregate(probs[0], "min") == pytest.approx(min(expected))
    assert aggregate(probs[0], "last") == pytest.approx(expected[-1])
    assert math.isnan(aggregate([], "prod"))
    with pytest.raises(ValueError, match="unknown step aggregation"):
        aggregate([0.5], "mean")

    # an ORM reads the steps joined by newlines as a single step
    orm = scorer.outcome_scores([prompt], [steps])
    assert orm[0] == pytest.approx(scorer.step_probs([prompt], [["\n".join(steps)]])[0][-1])


def test_step_sampler_draws_one_line_per_sample_reproducibly(arithmetic_models):
    tokenizer, lm, _ = arithmetic_models
    stops = newline_token_ids(tokenizer)
    assert stops and all("\n" in tokenizer.decode([i]) for i in stops)
    prompt_ids = [tokenizer("Q: 2 + 3 * 4\n", add_special_tokens=False)["input_ids"]]
    settings = SamplingSettings(max_new_tokens=12, batch_size=8)
    sampler = StepSampler(lm, tokenizer, prompt_ids, settings, seed=5, is_final=lambda s: s.startswith("A:"))
    prefixes = [(0, ()), (0, ("2 + 3 = 5",))]
    first = sampler.sample_steps(prefixes, 4)
    assert [len(options) for options in first] == [4, 4]
    assert all("\n" not in s.text for options in first for s in options)
    again = StepSampler(lm, tokenizer, prompt_ids, settings, seed=5).sample_steps(prefixes, 4)
    assert [[s.text for s in o] for o in first] == [[s.text for s in o] for o in again]
    # a later call draws fresh samples (the seed advances per call)
    assert [[s.text for s in o] for o in sampler.sample_steps(prefixes, 4)] != [[s.text for s in o] for o in first]
    # the prefix is the prompt's ids followed by each step and its newline
    assert sampler.prefix_ids(0, ["2 + 3 = 5"]) == prompt_ids[0] + tokenizer("2 + 3 = 5\n", add_special_tokens=False)["input_ids"]
