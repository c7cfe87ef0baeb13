"""A labeller's answer, and the per-labeller shuffle that hides the file's response order.

Responses are shown in an order shuffled for each (labeller, item), so that a position bias (a
habit of picking the left one) does not line up with the order of the data file. The shuffle is
seeded by a secret salt kept in the database, the labeller and the item, so a page reload shows
the same order; the order shown is also stored with each label.

The browser answers in *display* positions; `answer_from_display` maps them back to the indices
of the file's ``responses`` (what the store keeps and the export uses).

Answers in the API (JSON body of ``POST /api/label``)::

    pair:     {"item_id": ID, "choice": "A" | "B" | "tie" | "skip"}
    ranking:  {"item_id": ID, "ranking": [p1, p2, ...]}   display positions (0-based), best first
              {"item_id": ID, "choice": "skip"}
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Literal

Outcome = Literal["ranked", "tie", "skip"]


@dataclass(frozen=True)
class Answer:
    """`ranking` holds response indices (file order), best first, for outcome "ranked"; else None."""

    outcome: Outcome
    ranking: tuple[int, ...] | None = None

    def __post_init__(self):
        if (self.outcome == "ranked") != (self.ranking is not None):
            raise ValueError("a ranking is given exactly when the outcome is 'ranked'")


def display_order(salt: str, labeller_id: int, item_id: str, k: int) -> list[int]:
    """Response indices in the order this labeller sees them (position 0 is "A" or "1")."""
    seed = hashlib.sha256(f"{salt}\0{labeller_id}\0{item_id}".encode("utf-8")).digest()
    order = list(range(k))
    random.Random(seed).shuffle(order)
    return order


def answer_from_display(body: dict[str, Any], shown: list[int]) -> Answer:
    """The answer in file indices from the browser's answer in display positions.

    Raises ValueError with a message fit for a 400 response when the body does not fit the item.
    """
    k = len(shown)
    choice, ranking = body.get("choice"), body.get("ranking")
    if choice is not None and ranking is not None:
        raise ValueError("give either 'choice' or 'ranking', not both")
    if choice == "skip":
        return Answer("skip")
    if k == 2:
        if choice == "tie":
            return Answer("tie")
        if choice in ("A", "B"):
            winner = 0 if choice == "A" else 1
            return Answer("ranked", (shown[winner], shown[1 - winner]))
        raise ValueError("for a pair, 'choice' must be one of 'A', 'B', 'tie', 'skip'")
    if choice is not None:
        raise ValueError("for a ranking item, 'choice' may only be 'skip'; send 'ranking' otherwise")
    if (
        not isinstance(ranking, list)
        or any(not isinstance(p, int) or isinstance(p, bool) for p in ranking)
        or sorted(ranking) != list(range(k))
    ):
        raise ValueError(f"'ranking' must list every display position 0..{k - 1} once, best first")
    return Answer("ranked", tuple(shown[p] for p in ranking))
