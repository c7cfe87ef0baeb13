"""Labellers' access tokens: made at random, shown once, kept only as a hash.

A token is 32 random bytes (URL-safe base64), so a plain SHA-256 of it cannot be reversed or
guessed: no slow password hash is needed. Tokens given in a file must be at least
`MIN_TOKEN_LENGTH` characters of URL-safe text.

Token file format: one labeller per line, ``NAME TOKEN`` separated by whitespace; blank lines and
lines starting with ``#`` are ignored.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path

from alignlab.data.errors import DataError, DataFileNotFoundError, Source

MIN_TOKEN_LENGTH = 16
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9_\-.~]+$")  # safe to paste into a URL unquoted
_NAME_CHARS = re.compile(r"^[\w.@+\-]{1,64}$")


def new_token() -> str:
    """A fresh random token (43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What the database keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    """A labeller's name: 1-64 letters, digits or . _ - @ + (it appears in exports and URLs)."""
    if not _NAME_CHARS.match(name):
        raise ValueError(f"labeller name {name!r}: use 1-64 letters, digits or . _ - @ +")
    return name


def check_token(token: str) -> str:
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"a token must be at least {MIN_TOKEN_LENGTH} characters long")
    if not _TOKEN_CHARS.match(token):
        raise ValueError("a token may contain only letters, digits and - _ . ~")
    return token


def read_token_file(path: str | Path) -> list[tuple[str, str, Source]]:
    """(name, token, where) for each labeller in a token file; DataError names a bad line."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(Source(str(path)), None, "no such file")
    entries: list[tuple[str, str, Source]] = []
    names: dict[str, Source] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        source = Source(str(path), number)
        parts = text.split()
        if len(parts) != 2:
            raise DataError(source, None, "expected 'NAME TOKEN' (two fields separated by whitespace)")
        name, token = parts
        for field, check, value in (("name", check_name, name), ("token", check_token, token)):
            try:
                check(value)
            except ValueError as exc:
                raise DataError(source, field, str(exc)) from None
        if name in names:
            raise DataError(source, "name", f"{name!r} is listed twice (first at {names[name]})")
        names[name] = source
        entries.append((name, token, source))
    return entries
