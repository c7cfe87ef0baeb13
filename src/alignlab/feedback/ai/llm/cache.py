"""A cache of finished LLM calls in one SQLite file, so a re-run pays nothing for items it has.

An item's key is the sha256 of the canonical JSON of

    {"backend": <identity>, "method": "complete" | "chat" | "next_token_logprobs", "payload": ...}

where the identity names what computes the answer (an HTTP backend's base URL and model name; a
local model's weight fingerprint and dtype) and the payload is everything the answer depends on:
the prompt or conversation, the generation settings (seed included), the candidates. Only
successful answers are stored: an `LLMError` is retried on the next run. Credentials are never part
of a key or a stored row (backends keep them out of the payload).

The file uses WAL journaling, so readers do not block the writer and several processes may share
it; one connection per `CallCache`, guarded by a lock, makes it safe to use from worker threads.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from alignlab.feedback.ai.llm.base import LLMError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    answer TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def canonical_json(obj: Any) -> str:
    """One JSON text per value: sorted keys, no whitespace, NaN refused (it has no JSON form)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def call_key(identity: str, method: str, payload: Any) -> str:
    """sha256 (hex) naming one call: which backend, which method, what was asked."""
    text = canonical_json({"backend": identity, "method": method, "payload": payload})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CallCache:
    """Successful answers of LLM calls, keyed by `call_key`, in a SQLite file at `path`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # check_same_thread=False: the lock serialises use from the backends' worker threads.
        self._db = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses at most the last commits
        self._db.execute(_SCHEMA)
        self._db.commit()
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The stored answers among `keys` (absent keys are simply missing from the result)."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        with self._lock:
            for start in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, answer in self._db.execute(f"SELECT key, answer FROM calls WHERE key IN ({marks})", chunk):
                    found[key] = json.loads(answer)
            self.hits += sum(1 for key in keys if key in found)
            self.misses += sum(1 for key in keys if key not in found)
        return found

    def put(self, key: str, method: str, answer: Any) -> None:
        """Store one successful answer (a string or a JSON object); errors are never stored."""
        if isinstance(answer, LLMError):
            raise TypeError("CallCache stores successful answers only, not LLMError")
        text = canonical_json(answer)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO calls (key, method, answer, created) VALUES (?, ?, ?, ?)",
                (key, method, text, time.time()),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "CallCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CallCache({str(self.path)!r})"


class CachedBatch:
    """One batched call's items: which still need computing, and the answers so far.

    Usage in a backend::

        batch = CachedBatch(cache, identity, "complete", payloads)
        for i in batch.todo: ...compute...; batch.record(i, result)
        return batch.results()

    With `cache=None` every item is to do. With a cache, items already stored are answered from
    it, and identical items within the batch are computed once. `record` stores a successful
    answer at once (so work finished before a crash is kept) and may be called from any thread.
    """

    def __init__(self, cache: CallCache | None, identity: str, method: str, payloads: Sequence[Any]):
        self.cache, self.method = cache, method
        self._slots: list[Any] = [None] * len(payloads)
        self._done = [False] * len(payloads)
        self._copies: dict[int, list[int]] = {}  # first index of a key -> later indices with that key
        if cache is None:
            self.todo = list(range(len(payloads)))
            self._keys: list[str] = []
            return
        self._keys = [call_key(identity, method, payload) for payload in payloads]
        stored = cache.get_many(self._keys)
        first_of: dict[str, int] = {}
        self.todo = []
        for i, key in enumerate(self._keys):
            if key in stored:
                self._slots[i], self._done[i] = stored[key], True
            elif key in first_of:
                self._copies[first_of[key]].append(i)
            else:
                first_of[key] = i
                self._copies[i] = []
                self.todo.append(i)

    def record(self, index: int, result: Any) -> None:
        for i in [index, *self._copies.get(index, [])]:
            self._slots[i], self._done[i] = result, True
        if self.cache is not None and not isinstance(result, LLMError):
            self.cache.put(self._keys[index], self.method, result)

    def results(self) -> list[Any]:
        missing = [i for i, done in enumerate(self._done) if not done]
        if missing:  # a backend bug, not a bad item: say so loudly
            raise RuntimeError(f"items {missing[:10]} of a {self.method} batch were never answered")
        return list(self._slots)
