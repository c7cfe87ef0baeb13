"""Turn stored labels into datasets that the rest of alignlab (and TRL-style tools) read.

Preference export (``prompt``/``chosen``/``rejected``; loads with
`alignlab.data.formats.load_preferences` and trains with the ``dpo`` stage). Every label becomes
pairwise comparisons: an A/B choice is one, a K-way ranking is all K(K-1)/2 ordered pairs of it,
a skip is none. Then:

- ``aggregate="none"`` (default): one row per comparison per labeller, with ``item_id`` and
  ``labeller`` columns. Items that several people judged appear once per person, so agreement
  weighs more, and disagreement shows up as rows in both directions (their gradients cancel in
  DPO), which is the honest reading of split votes without inventing a rule;
- ``aggregate="mean"``: one row per item and response pair, ``chosen`` = the side most labellers
  preferred, ``label`` = the fraction who preferred it (a soft label in [0.5, 1]), ``n_labels``.

Ties (``ties``): ``"drop"`` (default) leaves ties out, and with ``aggregate="mean"`` also an exact
split vote; ``"soft"`` keeps a tie as a row with ``label`` 0.5 (and counts it as half a win for
each side when aggregating). A ``label`` column is written in every row whenever the export can
hold soft labels (``ties="soft"`` or ``aggregate="mean"``). Soft labels train with the ``sigmoid``
objective (DPO), which is the only one that reads them.

Ranking export (``prompt``/``responses``/``ranking``, ``ranking`` = indices into ``responses``,
best first; loads with `load_preferences`, which expands it into pairs): one row per labeller and
answered item, pairs included as two-way rankings; ties and skips are left out (a ranking has no
ties). Responses keep the order of the DATA file: the shuffled order each labeller saw is mapped
back when the label is stored.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Literal

from alignlab.data.readers import write_jsonl
from alignlab.feedback.human.labelling.store import LabelRecord, LabelStore

Ties = Literal["drop", "soft"]
Aggregate = Literal["none", "mean"]


def comparisons(record: LabelRecord) -> list[tuple[int, int, float]]:
    """(i, j, score of i over j) for one label: 1.0 = i preferred, 0.5 = tie (i < j then)."""
    answer = record.answer
    if answer.outcome == "tie":
        return [(0, 1, 0.5)]
    if answer.outcome == "skip":
        return []
    order = answer.ranking
    return [(order[a], order[b], 1.0) for a in range(len(order)) for b in range(a + 1, len(order))]


def preference_rows(labels: Iterable[LabelRecord], ties: Ties = "drop", aggregate: Aggregate = "none") -> list[dict]:
    """Preference records from labels (see the module docstring for the rules)."""
    if ties not in ("drop", "soft"):
        raise ValueError(f"ties must be 'drop' or 'soft' (got {ties!r})")
    if aggregate not in ("none", "mean"):
        raise ValueError(f"aggregate must be 'none' or 'mean' (got {aggregate!r})")
    soft = ties == "soft"
    if aggregate == "none":
        rows = []
        for record in labels:
            for i, j, score in comparisons(record):
                if score == 0.5 and not soft:
                    continue
                row = _pair_row(record.item, i, j, score if soft else None)
                rows.append({**row, "item_id": record.item.id, "labeller": record.labeller})
        return rows
    return _mean_rows(labels, soft)


def _mean_rows(labels: Iterable[LabelRecord], soft: bool) -> list[dict]:
    wins: dict[tuple[str, int, int], list[float]] = defaultdict(list)  # (item, i<j) -> scores of i
    items = {}
    for record in labels:
        items[record.item.id] = record.item
        for i, j, score in comparisons(record):
            if score == 0.5 and not soft:
                continue
            key, value = ((record.item.id, i, j), score) if i < j else ((record.item.id, j, i), 1.0 - score)
            wins[key].append(value)
    rows = []
    for (item_id, i, j), scores in wins.items():  # insertion order: file order of the items
        p = sum(scores) / len(scores)
        if p == 0.5 and not soft:
            continue  # a split vote says nothing about which is better
        better, worse, label = (i, j, p) if p >= 0.5 else (j, i, 1.0 - p)
        rows.append({**_pair_row(items[item_id], better, worse, label), "item_id": item_id, "n_labels": len(scores)})
    return rows


def ranking_rows(labels: Iterable[LabelRecord]) -> list[dict]:
    """Ranking records, one per ranked label (ties and skips are left out)."""
    return [
        {"prompt": r.item.prompt, "responses": list(r.item.responses), "ranking": list(r.answer.ranking),
         "item_id": r.item.id, "labeller": r.labeller}
        for r in labels
        if r.answer.outcome == "ranked"
    ]


def export_preferences(store: LabelStore, out: str | Path, ties: Ties = "drop", aggregate: Aggregate = "none") -> int:
    """Write the preference dataset as JSON Lines (atomically); returns the number of rows."""
    return _write(out, preference_rows(store.labels(), ties, aggregate), store)


def export_rankings(store: LabelStore, out: str | Path) -> int:
    """Write the ranking dataset as JSON Lines (atomically); returns the number of rows."""
    return _write(out, ranking_rows(store.labels()), store)


def _pair_row(item, better: int, worse: int, label: float | None) -> dict:
    row = {"prompt": item.prompt, "chosen": item.responses[better], "rejected": item.responses[worse]}
    if label is not None:
        row["label"] = label
    return row


def _write(out: str | Path, rows: list[dict], store: LabelStore) -> int:
    if not rows:
        raise ValueError(f"{store.path}: no labels to export yet (skips and dropped ties do not count)")
    write_jsonl(out, rows)
    return len(rows)
