"""Fencing messages between nodes (DESIGN.md §7), before signing and sealing.

The shell authenticates the author of every message and passes its name to
:meth:`~meshd.core.fencing.fencer.Fencer.receive`, so no message names its own author.
A *ballot* is ``(round, coordinator)`` for one ``(target, epoch)``.

=============  =========  ==============================================================
message        channel    meaning
=============  =========  ==============================================================
FenceRequest   datagram   coordinator → voter: grant my ballot; ``req_at`` is my clock
                          when I sent this copy (repeated every ``resend_s``)
FenceVote      datagram   voter → coordinator: granted; the shell signs it with the
                          voter's node key and keeps the signed bytes (the *blob*)
Fencing        datagram   coordinator → all: I hold a quorum and am powering it off
Fenced         reliable   → all: verified Off (or an operator's confirm), with the votes
FenceFailed    reliable   coordinator → all: the power-off failed; why; with the votes
Release        datagram   coordinator → all: I gave this ballot up (grants are free)
=============  =========  ==============================================================

``Fenced`` and ``FenceFailed`` carry the votes as the signed blobs; the receiving shell
verifies each against its voter's certificate and passes the verified
:class:`SignedVote` values beside the message. A relayed claim is never a vote.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FenceRequest:
    target: str
    epoch: int
    round: int
    req_at: float


@dataclass(frozen=True, slots=True)
class FenceVote:
    target: str
    epoch: int
    round: int
    coordinator: str
    req_at: float  # echoed from the request this vote answers


@dataclass(frozen=True, slots=True)
class Fencing:
    target: str
    epoch: int
    round: int


@dataclass(frozen=True, slots=True)
class Fenced:
    target: str
    epoch: int
    round: int
    coordinator: str
    votes: tuple[bytes, ...]
    evidence: str


@dataclass(frozen=True, slots=True)
class FenceFailed:
    target: str
    epoch: int
    round: int
    coordinator: str
    votes: tuple[bytes, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Release:
    target: str
    epoch: int
    round: int


@dataclass(frozen=True, slots=True)
class SignedVote:
    """A vote whose signature the shell checked: ``voter`` signed ``vote`` (as ``blob``)."""

    voter: str
    vote: FenceVote
    blob: bytes


FenceMsg = FenceRequest | FenceVote | Fencing | Fenced | FenceFailed | Release
