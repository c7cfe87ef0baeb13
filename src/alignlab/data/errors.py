"""Errors about users' data that say exactly where the problem is.

Every problem found in a data file is reported as a `DataError` that names the file, the line (or
row) and the field, e.g.::

    data/train.jsonl: line 7: field 'chosen': must be a non-empty string (got int)

so a user can open the file at that spot instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """Where a record came from.

    `line` is the 1-based line of a .jsonl file (`kind="line"`) or the 1-based row number of a
    .json list, a parquet file or a `datasets` dataset (`kind="row"`); None for the file as a whole.
    """

    path: str
    line: int | None = None
    kind: str = "line"

    def __str__(self) -> str:
        if self.line is None:
            return self.path
        return f"{self.path}: {self.kind} {self.line}"


class DataError(ValueError):
    """A problem in users' data, located by file, line and field."""

    def __init__(self, source: Source | None, field: str | None, message: str):
        self.source = source
        self.field = field
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.source is not None:
            parts.append(str(self.source))
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        parts.append(self.message)
        return ": ".join(parts)

    def __reduce__(self):
        # Keep the error picklable (it may cross process boundaries, e.g. from DataLoader workers):
        # the default reduce would call __init__ with the rendered string only.
        return (type(self), (self.source, self.field, self.message))


class DataFileNotFoundError(DataError, FileNotFoundError):
    """The data file or directory does not exist (also a FileNotFoundError, for callers that expect one)."""

    def __init__(self, source: Source | None, field: str | None, message: str):
        DataError.__init__(self, source, field, message)
