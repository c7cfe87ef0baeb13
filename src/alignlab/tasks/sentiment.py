"""Controlled sentiment generation: the DPO paper's IMDb experiment, scaled down to a CPU.

Rafailov et al. (2023, section 6.1) fine-tune GPT-2 on IMDb reviews, prompt it with review
prefixes of 2-8 tokens and score its continuations with a sentiment classifier. Here the reviews
come from `review_generator` (short, synthetic, 40% positive, 40% negative, 20% mixed, openings
that do not fix the sentiment), prefixes are 2-8 whole words, and the gold reward is VADER's
compound score of the continuation alone, in [-1, 1].

Prompt/completion convention: a prompt is the first k words joined by single spaces (no trailing
space) and its completion is " " + the remaining words, so prompt + completion is the review.

Every product draws from its own seed, derived from the caller's seed and a purpose name, so the
corpus, the SFT examples and the two prompt splits are independent streams of reviews.
"""

from __future__ import annotations

import functools
import hashlib
import random

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from alignlab.tasks.base import check_split
from alignlab.tasks.review_generator import generate_reviews, iter_reviews

MIN_PREFIX_WORDS, MAX_PREFIX_WORDS = 2, 8
# Share of distinct prompt strings that belong to the test split (see `prompt_split`).
TEST_FRACTION = 0.25


class SentimentTask:
    """Write movie-review continuations that VADER scores as positive."""

    name = "sentiment"

    def corpus(self, n: int, seed: int) -> list[str]:
        """`n` whole reviews for pretraining."""
        return generate_reviews(n, derive_seed(seed, "corpus"))

    def sft_examples(self, n: int, seed: int) -> list[dict]:
        """`n` reviews cut after 2-8 words: {"prompt": first words, "completion": " " + rest}."""
        reviews = generate_reviews(n, derive_seed(seed, "sft"))
        lengths = random.Random(derive_seed(seed, "sft-prefix-lengths"))
        examples = []
        for review in reviews:
            prompt, completion = split_at_word(review, _prefix_length(lengths))
            examples.append({"prompt": prompt, "completion": completion})
        return examples

    def prompts(self, split: str, n: int, seed: int) -> list[str]:
        """`n` review prefixes of 2-8 words for `split` ("train" or "test").

        Each split reads reviews generated with its own derived seed, and keeps only the prefixes
        that `prompt_split` assigns to it, so no test prompt string is ever a train prompt for the
        same seed, whatever `n` either side asks for. A prompt may repeat within a split, as
        common openings ("this movie") repeat across IMDb reviews.
        """
        check_split(split)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        reviews = iter_reviews(derive_seed(seed, f"prompts-{split}"))
        lengths = random.Random(derive_seed(seed, f"prompt-lengths-{split}"))
        chosen: list[str] = []
        while len(chosen) < n:
            prompt, _ = split_at_word(next(reviews), _prefix_length(lengths))
            if prompt_split(prompt, seed) == split:
                chosen.append(prompt)
        return chosen

    def gold_reward(self, prompts: list[str], completions: list[str]) -> list[float]:
        """VADER compound score of each completion alone (the prompt is not scored), in [-1, 1]."""
        if len(prompts) != len(completions):
            raise ValueError(
                f"gold_reward needs one completion per prompt: got {len(prompts)} prompts "
                f"and {len(completions)} completions"
            )
        analyzer = _vader()
        return [float(analyzer.polarity_scores(text)["compound"]) for text in completions]


def split_at_word(text: str, k: int) -> tuple[str, str]:
    """(first k words joined by spaces, " " + the rest); assumes single spaces between words."""
    words = text.split(" ")
    return " ".join(words[:k]), " " + " ".join(words[k:])


def prompt_split(prompt: str, seed: int) -> str:
    """The split ("train" or "test") that owns this prompt string for this seed.

    A stable hash of (seed, prompt) decides, so the same string always lands on the same side:
    held-out prompts drawn from other reviews can never collide with training prompts.
    """
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION else "train"


def derive_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose, independent of the others and stable across Python runs."""
    digest = hashlib.sha256(f"alignlab/sentiment/{purpose}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _prefix_length(rng: random.Random) -> int:
    return rng.randint(MIN_PREFIX_WORDS, MAX_PREFIX_WORDS)


@functools.cache
def _vader() -> SentimentIntensityAnalyzer:
    # Loading the lexicon takes a while; one analyzer serves every call and every task instance.
    return SentimentIntensityAnalyzer()
