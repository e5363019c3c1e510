"""The one exception hierarchy of meshd.

Every error a user can see derives from :class:`MeshdError` and carries one sentence
that says what went wrong and, where there is one, what to do about it. Foreign
exceptions (OSError, apsw, cryptography, aiohttp) are translated at the edge with
``raise ... from exc`` so the CLI can print one line and exit non-zero.

Each class carries the HTTP status the API answers with when a handler raises it
(``http_status``), so the API's error middleware reads the status off the error
instead of keeping its own table. Every class sets it explicitly, even where it
equals its parent's, so this file is the whole mapping; a unit test checks that every
subclass anywhere in meshd declares one and says when it is raised.

A broken internal invariant is *not* a MeshdError: it raises ``AssertionError`` or
``RuntimeError`` loudly, because stopping is better than running a VM twice.
"""

from __future__ import annotations

from typing import ClassVar


class MeshdError(Exception):
    """Root of every error meshd reports to a user or a peer."""

    http_status: ClassVar[int] = 400


class ConfigError(MeshdError):
    """A configuration file, preset or flag is invalid."""

    http_status = 400


class IdentityError(MeshdError):
    """Node identity, certificates or keys are missing, invalid or refused."""

    http_status = 403


class TokenError(IdentityError):
    """A join token is malformed, forged, expired, reused or for another mesh."""

    http_status = 403


class EnrolmentError(IdentityError):
    """Joining a mesh through a seed failed."""

    # A conflict rather than a refusal: the name is taken, or the request clashes with
    # what the seed already issued (a bad token is a TokenError, 403).
    http_status = 409


class RevokedError(IdentityError):
    """The certificate presented belongs to a node that was removed from the mesh."""

    http_status = 403


class EnvelopeError(MeshdError):
    """A sealed or signed message failed to open or verify (dropped, never fatal)."""

    http_status = 400


class ReplayError(EnvelopeError):
    """A message was already seen, or is too old or too far in the future."""

    http_status = 400


class UnknownAuthorError(EnvelopeError):
    """A compact signed message names an author whose certificate we have not seen yet."""

    http_status = 400

    def __init__(self, node_id: str) -> None:
        super().__init__(f"unknown author {node_id[:12]}...; its certificate is needed first")
        self.node_id = node_id


class MisaddressedError(EnvelopeError):
    """A sealed datagram names another node as its addressee (a copy sent elsewhere)."""

    http_status = 400


class UnknownKeyError(EnvelopeError):
    """A datagram is sealed with a mesh key this node does not hold (yet): fetch it."""

    http_status = 400

    def __init__(self, key_id: bytes) -> None:
        super().__init__(f"sealed with mesh key {key_id.hex()}, which this node does not hold")
        self.key_id = key_id


class StoreError(MeshdError):
    """The node's SQLite store can't be opened, migrated or written."""

    http_status = 503


class DaemonError(MeshdError):
    """The daemon (or a part of it) is not running, or a client or a peer can't reach it."""

    http_status = 503


class BadRequest(MeshdError):
    """A request to the API is malformed (a missing field, a wrong type)."""

    http_status = 400


class NotFoundError(MeshdError):
    """What the request names does not exist (a service, a node, a workload)."""

    http_status = 404


class ApiError(MeshdError):
    """The HTTP API answered with an error; the message is the server's sentence.

    Raised by clients (the CLI), never by the API itself; ``status`` is the status the
    server answered with, ``http_status`` only the default every MeshdError has.
    """

    http_status = 400

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NamingError(MeshdError):
    """A service name or service record is malformed, or a name resolves to nothing."""

    http_status = 400


class DiscoveryError(MeshdError):
    """Peer discovery (seeds, mDNS) is misconfigured."""

    http_status = 400


class PlacementError(MeshdError):
    """A workload could not be placed; the message is the auction's reason."""

    http_status = 409


class DriverError(MeshdError):
    """A driver refused a workload or could not carry out an operation."""

    http_status = 400


class FirecrackerApiError(DriverError):
    """Firecracker refused a request, or its API socket did not answer.

    ``status`` is what Firecracker answered (0 when it did not answer); ``http_status``
    is what meshd's own API answers, the same as for any DriverError.
    """

    http_status = 400

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class DhtError(MeshdError):
    """The DHT refused an operation, or a peer sent a record that is not acceptable."""

    http_status = 400


class RecordError(DhtError):
    """A record is malformed or does not verify; ``reason`` is a short metric label."""

    http_status = 400

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class FencingError(MeshdError):
    """A fencing request was refused: ``meshd fence confirm`` for a node whose fence
    did not reach quorum and fail, or for a node that is not being fenced."""

    http_status = 409


class NetworkError(MeshdError):
    """A network definition is invalid (a bad subnet, gateway, VLAN, bridge or DNS)."""

    http_status = 400


class NetworkConflictError(NetworkError):
    """A network clashes with one already defined (its name, or an overlapping subnet)."""

    http_status = 409


class AddressError(MeshdError):
    """A NIC's address can't be given as asked (a fixed address outside its subnet)."""

    http_status = 400


class AddressConflictError(AddressError):
    """No address could be fixed: taken by another holder, a full pool, no majority."""

    http_status = 409


class NetworkFullError(AddressConflictError):
    """A network has no free address left (as this node sees it)."""

    http_status = 409
