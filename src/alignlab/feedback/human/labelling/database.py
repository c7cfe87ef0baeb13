"""The SQLite connection under the labelling store: WAL mode, the tables, one writer at a time."""

from __future__ import annotations

import secrets
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SCHEMA_VERSION = "1"

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS items (
        id TEXT PRIMARY KEY,
        position INTEGER NOT NULL UNIQUE,
        k INTEGER NOT NULL CHECK (k >= 2),
        payload TEXT NOT NULL,
        source TEXT,
        n_labels INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS items_by_need ON items (n_labels, position)",
    """CREATE TABLE IF NOT EXISTS labellers (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        token_hash TEXT UNIQUE,
        created_at REAL NOT NULL,
        revoked_at REAL)""",
    """CREATE TABLE IF NOT EXISTS labels (
        id INTEGER PRIMARY KEY,
        item_id TEXT NOT NULL REFERENCES items(id),
        labeller_id INTEGER NOT NULL REFERENCES labellers(id),
        outcome TEXT NOT NULL CHECK (outcome IN ('ranked', 'tie', 'skip')),
        ranking TEXT,
        shown_order TEXT NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (item_id, labeller_id))""",
    "CREATE INDEX IF NOT EXISTS labels_by_labeller ON labels (labeller_id)",
]


class LabelDatabase:
    """One connection guarded by a lock, opened in WAL mode with the tables created when missing.

    One connection is enough: SQLite allows one writer at a time anyway, every operation of the
    store takes well under a millisecond, and people label at a few answers a second at most.

    Raises RuntimeError for a file that is not a labelling database, or one of another schema version.
    """

    def __init__(self, path: Path, synchronous: str):
        self.path = path
        self._lock = threading.RLock()
        self._connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                           timeout=30.0)
        try:
            version = self._set_up(synchronous)
        except BaseException as exc:
            self._connection.close()
            if isinstance(exc, sqlite3.DatabaseError):  # e.g. the DATA file given as the database
                raise RuntimeError(f"{self.path}: not a usable labelling database ({exc})") from None
            raise
        if version != SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: labelling database version {version}, expected {SCHEMA_VERSION}")

    def _set_up(self, synchronous: str) -> str:
        """Settings of the connection, and the tables (created when missing); returns the schema version."""
        mode = self._connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"{self.path}: SQLite could not switch to WAL mode (got {mode!r})")
        self._connection.execute(f"PRAGMA synchronous={synchronous}")
        self._connection.execute("PRAGMA foreign_keys=ON")
        self._connection.execute("PRAGMA busy_timeout=30000")
        with self.write() as db:
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('salt', ?)", (secrets.token_hex(16),))
            return db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock up front (no upgrade deadlocks)."""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def read(self, sql: str, args: tuple = ()) -> list[tuple]:
        """One statement, one consistent snapshot."""
        with self._lock:
            return self._connection.execute(sql, args).fetchall()
