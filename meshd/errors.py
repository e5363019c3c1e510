"""The one exception hierarchy of meshd.

Every error a user can see derives from :class:`MeshdError` and carries one sentence
that says what went wrong and, where there is one, what to do about it. Foreign
exceptions (OSError, apsw, cryptography, aiohttp) are translated at the edge with
``raise ... from exc`` so the CLI can print one line and exit non-zero.

A broken internal invariant is *not* a MeshdError: it raises ``AssertionError`` or
``RuntimeError`` loudly, because stopping is better than running a VM twice.
"""

from __future__ import annotations


class MeshdError(Exception):
    """Root of every error meshd reports to a user or a peer."""


class ConfigError(MeshdError):
    """A configuration file, preset or flag is invalid."""


class IdentityError(MeshdError):
    """Node identity, certificates or keys are missing, invalid or refused."""


class TokenError(IdentityError):
    """A join token is malformed, forged, expired, reused or for another mesh."""


class EnrolmentError(IdentityError):
    """Joining a mesh through a seed failed."""


class RevokedError(IdentityError):
    """The certificate presented belongs to a node that was removed from the mesh."""


class EnvelopeError(MeshdError):
    """A sealed or signed message failed to open or verify (dropped, never fatal)."""


class ReplayError(EnvelopeError):
    """A message was already seen, or is too old or too far in the future."""


class UnknownAuthorError(EnvelopeError):
    """A compact signed message names an author whose certificate we have not seen yet."""

    def __init__(self, node_id: str) -> None:
        super().__init__(f"unknown author {node_id[:12]}...; its certificate is needed first")
        self.node_id = node_id


class StoreError(MeshdError):
    """The node's SQLite store can't be opened, migrated or written."""


class DaemonError(MeshdError):
    """The daemon can't start, or a client can't reach it."""


class BadRequest(MeshdError):
    """A request to the API is malformed (a missing field, a wrong type)."""


class NotFoundError(MeshdError):
    """What the request names does not exist (a service, a node, a workload)."""


class ApiError(MeshdError):
    """The HTTP API answered with an error; the message is the server's sentence."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NamingError(MeshdError):
    """A service name or service record is malformed, or a name resolves to nothing."""


class DiscoveryError(MeshdError):
    """Peer discovery (seeds, mDNS) is misconfigured."""
