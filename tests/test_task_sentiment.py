"""The built-in `sentiment` task: reviews, prompts, SFT records and the VADER gold reward."""

from __future__ import annotations

import random
import re
import statistics

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from alignlab.tasks import TASKS, Task, get_task
from alignlab.tasks import review_vocab
from alignlab.tasks.review_generator import MAX_WORDS, MIN_WORDS, generate_reviews
from alignlab.tasks.sentiment import SentimentTask, derive_seed, prompt_split, split_at_word


@pytest.fixture(scope="module")
def task() -> SentimentTask:
    return SentimentTask()


@pytest.fixture(scope="module")
def reviews_5000() -> list[str]:
    return generate_reviews(5000, seed=0)


@pytest.fixture(scope="module")
def vader() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


# --- the review generator --------------------------------------------------------------------


def test_reviews_are_deterministic_per_seed_and_differ_across_seeds():
    first = generate_reviews(300, seed=7)
    assert generate_reviews(300, seed=7) == first
    other = generate_reviews(300, seed=8)
    assert len(set(first) & set(other)) < 10
    # One stream per seed: asking for fewer gives the start of the same list.
    assert generate_reviews(50, seed=7) == first[:50]


def test_generator_leaves_the_global_rng_alone():
    random.seed(123)
    state = random.getstate()
    generate_reviews(100, seed=1)
    assert random.getstate() == state


def test_reviews_are_many_distinct_strings(reviews_5000):
    assert len(set(reviews_5000)) >= 4500


def test_vocabulary_is_modest(reviews_5000):
    word_types = {w for review in reviews_5000 for w in re.findall(r"[a-z']+", review)}
    assert 600 <= len(word_types) <= 1500, len(word_types)


def test_reviews_have_the_stated_shape(reviews_5000):
    for review in reviews_5000[:1000]:
        assert MIN_WORDS <= len(review.split()) <= MAX_WORDS
        assert review == " ".join(review.split())  # single spaces, nothing at either end
        assert 1 <= len(re.findall(r"[.!](?: |$)", review)) <= 3, review
    assert any("!" in review for review in reviews_5000)


def test_reviews_mix_sentiment(reviews_5000, vader):
    scores = [vader.polarity_scores(r)["compound"] for r in reviews_5000[:1000]]
    positive = sum(s > 0.3 for s in scores) / len(scores)
    negative = sum(s < -0.3 for s in scores) / len(scores)
    assert 0.3 < positive < 0.6 and 0.3 < negative < 0.6, (positive, negative)


def test_neutral_vocabulary_carries_no_vader_valence(vader):
    valenced = {w for w in review_vocab.neutral_words() if w in vader.lexicon}
    assert valenced <= review_vocab.VALENCED_OPENING_WORDS, valenced


# --- prompts and SFT records -------------------------------------------------------------------


def test_train_and_test_prompts_are_disjoint_and_2_to_8_words(task):
    train = task.prompts("train", 3000, seed=0)
    test = task.prompts("test", 600, seed=0)
    assert len(train) == 3000 and len(test) == 600
    assert not set(train) & set(test)
    # Disjoint whatever size either side asks for: a bigger train set still misses every test prompt.
    assert not set(task.prompts("train", 6000, seed=0)) & set(task.prompts("test", 50, seed=0))
    for prompt in train + test:
        assert 2 <= len(prompt.split(" ")) <= 8
        assert prompt == prompt.strip() and "  " not in prompt
    assert {prompt_split(p, 0) for p in test} == {"test"}
    # Test prompts still look like train prompts: both start the same common ways.
    assert {" ".join(p.split()[:2]) for p in test} & {" ".join(p.split()[:2]) for p in train}


def test_prompts_are_deterministic_and_seeded(task):
    assert task.prompts("test", 100, seed=3) == task.prompts("test", 100, seed=3)
    assert task.prompts("train", 100, seed=3) != task.prompts("train", 100, seed=4)


def test_prompts_reject_an_unknown_split(task):
    with pytest.raises(ValueError, match="train, test"):
        task.prompts("validation", 10, seed=0)


def test_sft_examples_reassemble_reviews(task):
    examples = task.sft_examples(400, seed=2)
    assert examples == task.sft_examples(400, seed=2)
    reviews = set(generate_reviews(400, seed=derive_seed(2, "sft")))
    for example in examples:
        assert set(example) == {"prompt", "completion"}
        prompt, completion = example["prompt"], example["completion"]
        assert 2 <= len(prompt.split(" ")) <= 8 and not prompt.endswith(" ")
        assert completion.startswith(" ") and not completion.startswith("  ")
        assert prompt + completion in reviews


def test_split_at_word_cuts_at_a_word_boundary():
    assert split_at_word("the film is great.", 2) == ("the film", " is great.")


def test_corpus_is_whole_reviews(task):
    corpus = task.corpus(200, seed=0)
    assert corpus == task.corpus(200, seed=0) and len(corpus) == 200
    assert all(MIN_WORDS <= len(text.split()) <= MAX_WORDS for text in corpus)
    assert corpus != task.corpus(200, seed=1)


# --- the gold reward --------------------------------------------------------------------------


def test_gold_reward_is_vader_compound_of_the_completion_alone(task, vader):
    completions = [" is absolutely wonderful!", " is a waste of time.", " runs about two hours.", ""]
    prompts = ["this movie is terrible and"] * len(completions)  # the prompt must not count
    got = task.gold_reward(prompts, completions)
    assert got == [vader.polarity_scores(c)["compound"] for c in completions]
    assert got[0] > 0.5 and got[1] < -0.2 and got[2] == 0.0 and got[3] == 0.0


def test_gold_reward_ranks_a_positive_and_a_negative_review(task):
    good = "this movie is truly wonderful. the acting is superb and i loved the soundtrack!"
    bad = "this movie is a disaster. the plot is boring and the acting is awful. avoid it."
    good_score, bad_score = task.gold_reward(["", ""], [good, bad])
    assert good_score > 0.5 and bad_score < -0.5


def test_gold_reward_stays_in_range(task):
    texts = generate_reviews(300, seed=5) + [" great!!!! GREAT AMAZING", " awful!!! WORST EVER"]
    scores = task.gold_reward([""] * len(texts), texts)
    assert all(-1.0 <= s <= 1.0 for s in scores)


def test_gold_reward_needs_one_completion_per_prompt(task):
    with pytest.raises(ValueError, match="2 prompts and 1 completions"):
        task.gold_reward(["a", "b"], [" c"])


def test_continuations_are_balanced(task):
    examples = task.sft_examples(3000, seed=0)
    scores = task.gold_reward([e["prompt"] for e in examples], [e["completion"] for e in examples])
    assert abs(statistics.mean(scores)) < 0.15
    assert 0.35 < statistics.pstdev(scores) < 0.75


def test_the_same_prefix_continues_both_ways(task):
    corpus = task.corpus(3000, seed=0)
    for prefix in ("this movie", "i watched", "the film", "my friends and i"):
        cut = len(prefix.split())
        pairs = [split_at_word(r, cut) for r in corpus if r.startswith(prefix + " ")]
        assert len(pairs) >= 30, prefix
        scores = task.gold_reward(*map(list, zip(*pairs)))
        assert abs(statistics.mean(scores)) < 0.3, prefix
        assert sum(s > 0.3 for s in scores) >= 5 and sum(s < -0.3 for s in scores) >= 5, prefix


# --- the registry ------------------------------------------------------------------------------


def test_get_task_returns_the_sentiment_task():
    task = get_task("sentiment")
    assert isinstance(task, SentimentTask) and isinstance(task, Task)
    assert task.name == "sentiment" and "sentiment" in TASKS


def test_get_task_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="known tasks: arithmetic, sentiment"):
        get_task("sentimental")

