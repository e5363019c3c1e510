"""What the membership core asks its shell to do (returned by every call, in order)."""

from __future__ import annotations

from dataclasses import dataclass

from meshd.core.membership.messages import Message
from meshd.core.membership.state import Address, Member, MemberState


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` to ``addr``: a datagram, or over the reliable channel (push-pull)."""

    addr: Address
    msg: Message
    reliable: bool = False


@dataclass(frozen=True, slots=True)
class MemberChanged:
    """A member's state (or address) changed; ``previous`` is None for a new member."""

    member: Member
    previous: MemberState | None


@dataclass(frozen=True, slots=True)
class Deliver:
    """A broadcast from ``origin`` arrived here for the first time."""

    kind: str
    payload: bytes
    origin: str


Effect = Send | MemberChanged | Deliver
