"""Events one shell publishes and others subscribe to, instead of reaching into each other.

The placement shell says "this allocation is confirmed here" and "this workload moved
away"; the workload runner listens. Neither imports the other, and a test (or the
simulator) can subscribe to watch the same events. Handlers run synchronously in
publication order; one that raises is logged and the others still run, because one
subscriber's bug must not cost another its event.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from meshd.core.auction.model import Allocation, Resources

logger = logging.getLogger(__name__)
E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class WorkloadAssigned:
    """A placement on this node is confirmed: run it (the runner creates and starts it)."""

    allocation: Allocation


@dataclass(frozen=True, slots=True)
class WorkloadReleased:
    """This node no longer runs ``workload_id`` (moved away at ``generation``, or removed)."""

    workload_id: str
    generation: int
    reason: str


@dataclass(frozen=True, slots=True)
class WorkloadGone:
    """The runner destroyed ``workload_id`` here: nothing of it runs on this node."""

    workload_id: str


@dataclass(frozen=True, slots=True)
class DrainingChanged:
    """What workloads released here but not yet destroyed use, in all (the runner says):
    the placement shell keeps it counted, so it is not offered before it is free."""

    resources: Resources


@dataclass(frozen=True, slots=True)
class IdleChanged:
    """What ``workload_id``'s allocation here doesn't use now (the runner says): a
    stopped workload's CPU and memory, a failed one's everything, lent to new bids until
    it runs again; None: it uses all of it again (running, or gone)."""

    workload_id: str
    lent: Resources | None


@dataclass(frozen=True, slots=True)
class QuorumChanged:
    """Self-fence (``fencing.self_fence``): this node was cut off from a quorum of the
    roster for too long (``cut_off``: stop every workload here), or is back with one
    (start again what it stopped, if still its own)."""

    cut_off: bool
    reason: str


@dataclass(frozen=True, slots=True)
class ViewSynced:
    """This node's placement view matched a member's (or it is the mesh's only voter):
    what the view says this node runs, it may create now."""

    peer: str | None


@dataclass(frozen=True, slots=True)
class MemberStateChanged:
    """Membership's view of another member changed (``alive|suspect|dead|left``)."""

    name: str
    state: str
    incarnation: int
    previous: str | None


class Bus:
    def __init__(self) -> None:
        self._handlers: dict[type, list[Callable[[Any], None]]] = defaultdict(list)

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> None:
        self._handlers[kind].append(handler)

    def publish(self, event: object) -> None:
        for handler in self._handlers.get(type(event), ()):
            try:
                handler(event)
            except Exception:
                logger.exception("an event handler failed event=%s", type(event).__name__)
