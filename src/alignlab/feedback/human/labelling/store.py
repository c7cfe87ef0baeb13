"""The labelling database: items, labellers (hashed tokens) and their labels, in SQLite.

Guarantees:

- no label is lost: each submission is one transaction, committed in WAL mode before the app
  acknowledges it, so an acknowledged label survives a kill of the server at any moment, and the
  file is never corrupted. By default (``synchronous="NORMAL"``) a power cut or OS crash may
  still roll back the last moments of labels; ``synchronous="FULL"`` (``alignlab label serve
  --fsync``) makes every label durable against that too, at one disk flush (~ms) per label;
- no label is duplicated: ``UNIQUE (item_id, labeller_id)`` allows one label per labeller and
  item. Sending the same answer again is harmless (`submit` returns ``"duplicate"``); a different
  answer raises `LabelConflict` (the app answers 409). A label is never changed in place: a
  labeller may only take back their own last answer (`undo_last`), which deletes it;
- reads (export, progress) see a consistent snapshot while labels are being written, also from
  another process (WAL readers do not block the writer).

Which item comes next for a labeller: among the items this labeller has not answered (a skip
counts as an answer: a skipped item is not shown to them again), the one with the fewest labels
(skips not counted), then the earliest in the file.

A database belongs to one labelling job: serving a DATA file adds its items; an item whose id is
already there with different content is an error (its labels would otherwise be misread).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from alignlab.data.errors import DataError, Source
from alignlab.feedback.human.labelling.answers import Answer, display_order
from alignlab.feedback.human.labelling.database import LabelDatabase
from alignlab.feedback.human.labelling.items import LabelItem
from alignlab.feedback.human.labelling.tokens import (
    check_name,
    check_token,
    hash_token,
    new_token,
    read_token_file,
)


@dataclass(frozen=True)
class Labeller:
    id: int
    name: str


@dataclass(frozen=True)
class LabellerInfo:
    name: str
    active: bool
    answered: int


@dataclass(frozen=True)
class Progress:
    """`done` counts this labeller's real answers (skips are not done: they are counted in
    `skipped`); `total` the items."""

    done: int
    skipped: int
    total: int

    def as_dict(self) -> dict[str, int]:
        return {"done": self.done, "skipped": self.skipped, "total": self.total}


@dataclass(frozen=True)
class LabelRecord:
    """One stored label with its item, for exports."""

    item: LabelItem
    labeller: str
    answer: Answer
    shown_order: tuple[int, ...]
    created_at: float


class LabelConflict(Exception):
    """The labeller already answered this item differently (labels are never overwritten)."""

    def __init__(self, item_id: str, existing: Answer):
        self.item_id, self.existing = item_id, existing
        super().__init__(f"item {item_id!r} already has a different answer from this labeller")


class UnknownItem(KeyError):
    """No item with this id in the database."""


class LabelStore:
    """The SQLite database of one labelling job. Safe to share between threads (see `LabelDatabase`).

    Other processes (e.g. `alignlab label tokens` or an export while serving) may open the same
    file at the same time. Items never change once stored, so they are also kept in memory.
    """

    def __init__(self, path: str | Path, synchronous: str = "NORMAL"):
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL' (got {synchronous!r})")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._items: dict[str, LabelItem] = {}
        self._db = LabelDatabase(self.path, synchronous)
        self.salt = self._db.read("SELECT value FROM meta WHERE key='salt'")[0][0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "LabelStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- items ----------------------------------------------------------------------------

    def add_items(self, items: Iterable[LabelItem]) -> int:
        """Add new items (in one transaction); returns how many were new.

        An item already stored with the same content is left as it is; with different content it
        is a DataError naming the item's line.
        """
        added = 0
        with self._db.write() as db:
            (next_position,) = db.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM items").fetchone()
            for item in items:
                payload = _dumps(item.payload())
                row = db.execute("SELECT payload, source FROM items WHERE id=?", (item.id,)).fetchone()
                if row is not None:
                    if row[0] != payload:
                        raise DataError(
                            item.source, "id",
                            f"item {item.id!r} is already in {self.path} with different content (added "
                            f"from {row[1]}); give this item a new id or use another database",
                        )
                    continue
                db.execute(
                    "INSERT INTO items (id, position, k, payload, source) VALUES (?, ?, ?, ?, ?)",
                    (item.id, next_position, len(item.responses), payload, str(item.source or "")),
                )
                next_position += 1
                added += 1
        return added

    def item(self, item_id: str) -> LabelItem | None:
        item = self._items.get(item_id)
        if item is None:
            rows = self._db.read("SELECT id, payload FROM items WHERE id=?", (item_id,))
            if not rows:
                return None
            item = self._items[item_id] = _item(*rows[0])
        return item

    def count_items(self) -> int:
        return self._db.read("SELECT COUNT(*) FROM items")[0][0]

    def next_item(self, labeller: Labeller) -> LabelItem | None:
        """The item this labeller should see next (see the module docstring), or None when done."""
        rows = self._db.read(
            """SELECT i.id FROM items i
               WHERE NOT EXISTS (SELECT 1 FROM labels l WHERE l.item_id = i.id AND l.labeller_id = ?)
               ORDER BY i.n_labels, i.position LIMIT 1""",
            (labeller.id,),
        )
        return self.item(rows[0][0]) if rows else None

    def shown_order(self, labeller: Labeller, item: LabelItem) -> list[int]:
        """Response indices in the order `labeller` sees them (stable across reloads)."""
        return display_order(self.salt, labeller.id, item.id, len(item.responses))

    # --- labellers ------------------------------------------------------------------------

    def add_labeller(self, name: str, token: str | None = None) -> str:
        """Register a labeller; returns the token (a new random one unless given). Only its hash is kept."""
        check_name(name)
        token = new_token() if token is None else check_token(token)
        with self._db.write() as db:
            self._insert_labeller(db, name, token)
        return token

    def add_labellers_from_file(self, path: str | Path) -> list[str]:
        """Register the labellers of a token file (see `tokens.read_token_file`); returns the new names.

        A name already registered with the same token is left alone; with another token it is a
        DataError naming the line (rotate or revoke it with `alignlab label tokens` first).
        """
        entries = read_token_file(path)
        added = []
        with self._db.write() as db:
            for name, token, source in entries:
                row = db.execute("SELECT token_hash FROM labellers WHERE name=?", (name,)).fetchone()
                if row is not None:
                    if row[0] != hash_token(token):
                        raise DataError(source, "token", f"labeller {name!r} already has a different token")
                    continue
                self._insert_labeller(db, name, token, source)
                added.append(name)
        return added

    def _insert_labeller(self, db, name: str, token: str, source: Source | None = None) -> None:
        digest = hash_token(token)
        if db.execute("SELECT 1 FROM labellers WHERE name=?", (name,)).fetchone():
            raise ValueError(f"labeller {name!r} already exists (use --rotate to give them a new token)")
        if db.execute("SELECT 1 FROM labellers WHERE token_hash=?", (digest,)).fetchone():
            message = "this token is already used by another labeller"
            raise DataError(source, "token", message) if source else ValueError(message)
        db.execute("INSERT INTO labellers (name, token_hash, created_at) VALUES (?, ?, ?)",
                   (name, digest, time.time()))

    def rotate_token(self, name: str) -> str:
        """A new token for an existing labeller (the old one stops working; labels are kept)."""
        token = new_token()
        with self._db.write() as db:
            cursor = db.execute("UPDATE labellers SET token_hash=?, revoked_at=NULL WHERE name=?",
                                (hash_token(token), name))
            if cursor.rowcount == 0:
                raise ValueError(f"no labeller named {name!r}")
        return token

    def revoke(self, name: str) -> None:
        """Stop a labeller's token from working; their labels stay in the database and the export."""
        with self._db.write() as db:
            cursor = db.execute("UPDATE labellers SET token_hash=NULL, revoked_at=? WHERE name=?",
                                (time.time(), name))
            if cursor.rowcount == 0:
                raise ValueError(f"no labeller named {name!r}")

    def labeller_for_token(self, token: str | None) -> Labeller | None:
        """The active labeller holding `token`, or None."""
        if not token:
            return None
        rows = self._db.read("SELECT id, name FROM labellers WHERE token_hash=? AND revoked_at IS NULL",
                             (hash_token(token),))
        return Labeller(*rows[0]) if rows else None

    def labellers(self) -> list[LabellerInfo]:
        rows = self._db.read(
            """SELECT p.name, p.revoked_at IS NULL, COUNT(l.id) FROM labellers p
               LEFT JOIN labels l ON l.labeller_id = p.id GROUP BY p.id ORDER BY p.name"""
        )
        return [LabellerInfo(name, bool(active), n) for name, active, n in rows]

    # --- labels ---------------------------------------------------------------------------

    def submit(self, labeller: Labeller, item_id: str, answer: Answer, shown: list[int] | None = None) -> str:
        """Store one label in one transaction; returns "created", or "duplicate" for a repeat.

        Raises UnknownItem, ValueError (the answer does not fit the item) or LabelConflict.
        `shown` is the display order the labeller saw (default: their order for this item).
        """
        with self._db.write() as db:
            row = db.execute("SELECT k FROM items WHERE id=?", (item_id,)).fetchone()
            if row is None:
                raise UnknownItem(item_id)
            k = row[0]
            _check_answer(answer, k)
            shown = list(shown) if shown is not None else display_order(self.salt, labeller.id, item_id, k)
            existing = db.execute("SELECT outcome, ranking FROM labels WHERE item_id=? AND labeller_id=?",
                                  (item_id, labeller.id)).fetchone()
            if existing is not None:
                previous = _answer(*existing)
                if previous != answer:
                    raise LabelConflict(item_id, previous)
                return "duplicate"
            db.execute(
                """INSERT INTO labels (item_id, labeller_id, outcome, ranking, shown_order, created_at)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (item_id, labeller.id, answer.outcome,
                 None if answer.ranking is None else _dumps(list(answer.ranking)), _dumps(shown), time.time()),
            )
            if answer.outcome != "skip":
                db.execute("UPDATE items SET n_labels = n_labels + 1 WHERE id=?", (item_id,))
        return "created"

    def undo_last(self, labeller: Labeller) -> str | None:
        """Delete this labeller's most recent label (one transaction); returns its item id, or None
        when they have none. The item becomes unanswered for them, so it is shown again."""
        with self._db.write() as db:
            row = db.execute(  # labels.id grows with each insert: the largest is the latest
                "SELECT id, item_id, outcome FROM labels WHERE labeller_id=? ORDER BY id DESC LIMIT 1",
                (labeller.id,),
            ).fetchone()
            if row is None:
                return None
            label_id, item_id, outcome = row
            db.execute("DELETE FROM labels WHERE id=?", (label_id,))
            if outcome != "skip":  # skips were never counted in n_labels
                db.execute("UPDATE items SET n_labels = n_labels - 1 WHERE id=?", (item_id,))
        return item_id

    def progress(self, labeller: Labeller) -> Progress:
        done, skipped, total = self._db.read(
            """SELECT COALESCE(SUM(outcome != 'skip'), 0), COALESCE(SUM(outcome = 'skip'), 0),
                      (SELECT COUNT(*) FROM items)
               FROM labels WHERE labeller_id = ?""",
            (labeller.id,),
        )[0]
        return Progress(done, skipped, total)

    def count_labels(self) -> int:
        return self._db.read("SELECT COUNT(*) FROM labels")[0][0]

    def labels(self) -> list[LabelRecord]:
        """Every stored label with its item, in file order of the items, then in order of arrival."""
        rows = self._db.read(
            """SELECT i.id, i.payload, p.name, l.outcome, l.ranking, l.shown_order, l.created_at
               FROM labels l JOIN items i ON i.id = l.item_id JOIN labellers p ON p.id = l.labeller_id
               ORDER BY i.position, l.id"""
        )
        return [
            LabelRecord(_item(item_id, payload), name, _answer(outcome, ranking), tuple(json.loads(shown)), at)
            for item_id, payload, name, outcome, ranking, shown, at in rows
        ]


def _check_answer(answer: Answer, k: int) -> None:
    if answer.outcome == "tie" and k != 2:
        raise ValueError("a tie is only possible between two responses; rank them instead")
    if answer.ranking is not None and sorted(answer.ranking) != list(range(k)):
        raise ValueError(f"a ranking must list every response index 0..{k - 1} once")


def _item(item_id: str, payload: str) -> LabelItem:
    data = json.loads(payload)
    return LabelItem(item_id, data["prompt"], tuple(data["responses"]))


def _answer(outcome: str, ranking: str | None) -> Answer:
    return Answer(outcome, None if ranking is None else tuple(json.loads(ranking)))


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
