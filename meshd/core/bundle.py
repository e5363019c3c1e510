"""Signed records as one anti-entropy body, shared by every replicated record kind.

A JSON list of latin-1 strings would double the records' size, so each is
length-prefixed instead (4 bytes, big-endian). Pure: bytes in, bytes out.
"""

from __future__ import annotations

from meshd.errors import EnvelopeError

MAX_RECORDS = 4096  # records in one anti-entropy bundle: more than any roster


def encode_bundle(blobs: list[bytes]) -> bytes:
    return b"".join(len(b).to_bytes(4, "big") + b for b in blobs[:MAX_RECORDS])


def decode_bundle(body: bytes, what: str = "record") -> list[bytes]:
    """The records of a bundle; a malformed one raises :class:`EnvelopeError` naming
    ``what`` kind of bundle it was."""
    out: list[bytes] = []
    pos = 0
    while pos < len(body):
        if len(out) >= MAX_RECORDS:
            raise EnvelopeError(f"a {what} bundle holds at most {MAX_RECORDS} records")
        if pos + 4 > len(body):
            raise EnvelopeError(f"a {what} bundle ends inside a length")
        size = int.from_bytes(body[pos : pos + 4], "big")
        pos += 4
        if size == 0 or pos + size > len(body):
            raise EnvelopeError(f"a {what} bundle's record overruns it")
        out.append(body[pos : pos + size])
        pos += size
    return out
