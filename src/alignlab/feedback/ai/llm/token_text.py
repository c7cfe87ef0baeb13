"""Each generated token as OpenAI reports it: its raw bytes, and a piece of text such that the
pieces of a completion join back into the completion's text.

A byte-level BPE token can hold part of a UTF-8 character (GPT-2 splits "é" into two tokens), so a
token decoded alone is "\ufffd". Here the bytes are the token's own (undone from the byte-level
alphabet, or a sentencepiece `<0xE2>` byte token), and the text pieces come from one incremental
UTF-8 decoder run over the tokens in order: a character split over tokens appears on the token that
completes it, and the tokens before it show "".
"""

from __future__ import annotations

import codecs
import re
from typing import Any

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """The printable stand-in of each byte in GPT-2-style byte-level BPE, mapped back to the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


_ALPHABET = _byte_level_alphabet()


class TokenTexts:
    """Bytes and text pieces of a tokenizer's tokens."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = decoder is not None and "ByteLevel" in str(decoder)
        self.special = set(tokenizer.all_special_ids)
        self._bytes: dict[int, bytes] = {}

    def token_bytes(self, token_id: int) -> bytes:
        if token_id not in self._bytes:
            self._bytes[token_id] = self._compute_bytes(token_id)
        return self._bytes[token_id]

    def _compute_bytes(self, token_id: int) -> bytes:
        if token_id in self.special:
            return b""  # special tokens are not part of the answer's text
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        byte = _BYTE_TOKEN.fullmatch(piece)
        if byte:
            return bytes([int(byte.group(1), 16)])
        if self.byte_level and all(ch in _ALPHABET for ch in piece):
            return bytes(_ALPHABET[ch] for ch in piece)
        if "▁" in piece:  # sentencepiece marks a leading space with U+2581
            return piece.replace("▁", " ").encode("utf-8")
        return self.tokenizer.decode([token_id]).encode("utf-8")

    def pieces(self, token_ids: list[int], alternatives: list[list[int]] | None = None
               ) -> tuple[list[str], list[list[str]]]:
        """Text pieces of `token_ids` (joined: their text), and of each step's alternative tokens
        as if that one had been drawn instead."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        texts, others = [], []
        for step, token_id in enumerate(token_ids):
            state = decoder.getstate()
            if alternatives is not None:
                others.append([_decode_from(state, self.token_bytes(t)) for t in alternatives[step]])
            texts.append(decoder.decode(self.token_bytes(token_id)))
        if texts:
            texts[-1] += decoder.decode(b"", final=True)  # a character left unfinished shows as U+FFFD
        return texts, others


def _decode_from(state: tuple, data: bytes) -> str:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    decoder.setstate(state)
    return decoder.decode(data)


def clip_to(pieces: list[str], text: str) -> list[str]:
    """The pieces cut where `text` ends (a stop string can end the text inside a token). When they do
    not spell `text` (a tokenizer whose decode differs from its pieces), the whole text is one piece."""
    out, used = [], 0
    for piece in pieces:
        if used >= len(text):
            out.append("")
            continue
        take = piece[: len(text) - used]
        out.append(take)
        used += len(take)
    return out if "".join(out) == text else [text] + [""] * (len(pieces) - 1)
