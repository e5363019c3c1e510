"""Membership and failure detection: SWIM with Lifeguard refinements, as a pure core.

``Membership`` (in :mod:`.swim`) is the state machine; the shell feeds it decoded
messages (:mod:`.codec`) and clock ticks and carries out its effects.
"""

from meshd.core.membership.effects import Deliver, Effect, MemberChanged, Send
from meshd.core.membership.state import Identity, Member, MemberState
from meshd.core.membership.swim import Membership

__all__ = [
    "Deliver",
    "Effect",
    "Identity",
    "Member",
    "MemberChanged",
    "MemberState",
    "Membership",
    "Send",
]
