"""Synthetic short movie reviews of mixed sentiment: the offline stand-in for IMDb.

Each review picks a mood (40% positive, 40% negative, 20% mixed), then an opening that says
nothing about the mood ("this movie", "i watched the last harbor last night", a title, ...), then
one or two sentences in that mood (about an aspect of the film, or a closing verdict). Because
the opening is drawn independently of the mood, a language model trained on these reviews
continues the same prefix both ways: that spread is what preference optimisation later moves.

Generation uses only a local `random.Random`, one review after another from a single stream, so
`generate_reviews(n, seed)[:m] == generate_reviews(m, seed)` and nothing depends on the global RNG.
"""

from __future__ import annotations

import itertools
import random
import re
from typing import Iterator

from alignlab.tasks import review_vocab as vocab

MOODS = ("positive", "negative", "mixed")
MOOD_WEIGHTS = (0.4, 0.4, 0.2)
MIN_WORDS, MAX_WORDS = 15, 45

# Where a body sentence comes from, per mood: (template list, weight).
_BODY_SOURCES = {
    "positive": [(vocab.POSITIVE_SENTENCES, 0.8), (vocab.CONTRAST_SENTENCES, 0.08),
                 (vocab.NEUTRAL_SENTENCES, 0.12)],
    "negative": [(vocab.NEGATIVE_SENTENCES, 0.8), (vocab.CONTRAST_SENTENCES, 0.08),
                 (vocab.NEUTRAL_SENTENCES, 0.12)],
    "mixed": [(vocab.CONTRAST_SENTENCES, 0.45), (vocab.NEUTRAL_SENTENCES, 0.25),
              (vocab.POSITIVE_SENTENCES, 0.15), (vocab.NEGATIVE_SENTENCES, 0.15)],
}
_PREDICATES = {"positive": vocab.POSITIVE_PREDICATES, "negative": vocab.NEGATIVE_PREDICATES,
               "mixed": vocab.MIXED_PREDICATES}
_CLAUSES = {"positive": vocab.POSITIVE_CLAUSES, "negative": vocab.NEGATIVE_CLAUSES,
            "mixed": vocab.MIXED_CLAUSES}
_VERDICTS = {"positive": vocab.POSITIVE_VERDICTS, "negative": vocab.NEGATIVE_VERDICTS,
             "mixed": vocab.MIXED_VERDICTS}

_SLOT = re.compile(r"\{(\w+)\}")
_ARTICLE_BEFORE_VOWEL = re.compile(r"\ba ([aeiou])")


def generate_reviews(n: int, seed: int) -> list[str]:
    """`n` reviews, the same for the same `seed`; each 15-45 words, 2-3 sentences, lower case."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return list(itertools.islice(iter_reviews(seed), n))


def iter_reviews(seed: int) -> Iterator[str]:
    """An endless, deterministic stream of reviews (the first n equal `generate_reviews(n, seed)`)."""
    rng = random.Random(seed)
    while True:
        yield _review(rng)


def _review(rng: random.Random) -> str:
    mood = rng.choices(MOODS, weights=MOOD_WEIGHTS)[0]
    while True:  # redraw the sentences (same mood) until the length fits
        words = " ".join(_sentences(rng, mood)).split()
        if MIN_WORDS <= len(words) <= MAX_WORDS:
            return " ".join(words)  # single spaces: prefixes cut cleanly at word boundaries


def _sentences(rng: random.Random, mood: str) -> list[str]:
    """Two or three sentences: an opening, then body sentences, the last one maybe a verdict."""
    opening, opening_has_mood = _opening(rng, mood)
    sentences = [opening]
    n_more = rng.choice((1, 2))
    for i in range(n_more):
        if i == 0 and not opening_has_mood:
            # A factual opening leaves the mood to the body, which must then state it.
            template = rng.choice(_mood_sentences(mood))
        elif i == n_more - 1 and rng.random() < 0.45:
            template = rng.choice(_VERDICTS[mood])
        else:
            template = rng.choice(_weighted_choice(rng, _BODY_SOURCES[mood]))
        sentences.append(_fill(rng, template))
    return [_end_sentence(rng, s, mood) for s in sentences]


def _opening(rng: random.Random, mood: str) -> tuple[str, bool]:
    """The first sentence, and whether it already expresses the mood."""
    if rng.random() < 0.5:
        subject = _fill(rng, rng.choice(vocab.SUBJECT_OPENINGS))
        if rng.random() < 0.65:
            return f"{subject} {_fill(rng, rng.choice(_PREDICATES[mood]))}", True
        return f"{subject} {_fill(rng, rng.choice(vocab.NEUTRAL_PREDICATES))}", False
    event = _fill(rng, rng.choice(vocab.EVENT_OPENINGS))
    if rng.random() < 0.6:
        return f"{event} and {_fill(rng, rng.choice(_CLAUSES[mood]))}", True
    return event, False


def _mood_sentences(mood: str) -> list[str]:
    if mood == "positive":
        return vocab.POSITIVE_SENTENCES
    if mood == "negative":
        return vocab.NEGATIVE_SENTENCES
    return vocab.CONTRAST_SENTENCES


def _weighted_choice(rng: random.Random, sources: list[tuple[list[str], float]]) -> list[str]:
    lists, weights = zip(*sources)
    return rng.choices(lists, weights=weights)[0]


def _end_sentence(rng: random.Random, sentence: str, mood: str) -> str:
    # An occasional exclamation mark, as excited or angry reviewers write.
    excited = mood != "mixed" and rng.random() < 0.08
    return sentence.rstrip(",") + ("!" if excited else ".")


def _fill(rng: random.Random, template: str) -> str:
    """Fill every {slot} of `template`, then fix "a" before a vowel.

    A slot named twice gets two different values ("the acting is good but the plot is weak",
    never "the plot is good but the plot is weak").
    """
    used: dict[str, set[str]] = {}

    def fill_one(match: re.Match) -> str:
        slot = match.group(1)
        seen = used.setdefault(slot, set())
        value = _slot_value(rng, slot)
        while value in seen:
            value = _slot_value(rng, slot)
        seen.add(value)
        return value

    return _ARTICLE_BEFORE_VOWEL.sub(r"an \1", _SLOT.sub(fill_one, template))


def _slot_value(rng: random.Random, slot: str) -> str:
    if slot == "title":
        return _fill(rng, rng.choice(vocab.TITLE_PATTERNS))
    if slot == "actor":
        return f"{rng.choice(vocab.FIRST_NAMES)} {rng.choice(vocab.LAST_NAMES)}"
    if slot == "genre":
        return rng.choice(vocab.GENRES)[0]
    if slot == "genres":
        return rng.choice(vocab.GENRES)[1]
    return rng.choice(vocab.SLOTS[slot])
