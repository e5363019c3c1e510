"""Every workload's state, mesh-wide: a pure core the workload runner drives.

Theory of operation
-------------------
Only a workload's owner knows its state (``starting``, ``running``, ``stopped``,
``failed``). It announces each change by membership gossip (best effort), and every
node keeps the newest it has heard, so ``meshd workloads`` anywhere shows it. The
merge rule is last-writer-wins on ``(generation, at)``: a newer generation (the
workload moved) always wins, and within one generation the owner's clock orders its
own announcements, which gossip may reorder. Nodes never compare clocks with each
other here: one generation has one owner. The owner's stamps for one workload and
generation strictly increase even when its clock does not (two changes within the
clock's resolution, or a clock stepped back): a change stamped no later than the one
before would lose to it everywhere else, for good (found by the shell simulator,
where ``starting`` and ``running`` come at the same virtual instant).

Gossip loses messages, so the owner also re-announces its states, a few per interval
in turn (:meth:`StateBook.due`): a node that restarted or missed one catches up
within ``ceil(owned / per_interval)`` intervals, and a node with hundreds of workloads
never floods the gossip queue.

The wire form is small strict JSON: ``{"w", "g", "s", "t", "d"}``; the sender (the
owner) is the authenticated gossip origin, never a field of the message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

STATES = ("pending", "starting", "running", "stopped", "failed")
MAX_DETAIL = 200  # bytes of a state's detail sentence that travel by gossip
MAX_ID = 255


@dataclass(frozen=True, slots=True)
class StateEntry:
    workload_id: str
    generation: int
    state: str
    detail: str
    node: str  # the owner that reported it
    at: float  # the owner's wall clock when it changed
    extra: Mapping[str, Any] = field(default_factory=dict)  # local only (accelerator, pid)

    def as_json(self) -> dict[str, Any]:
        out = {
            "generation": self.generation,
            "state": self.state,
            "detail": self.detail,
            "node": self.node,
            "at": self.at,
        }
        if self.extra:
            out["extra"] = dict(self.extra)
        return out


class StateBook:
    def __init__(self, me: str, per_interval: int = 32) -> None:
        self._me = me
        self._per_interval = per_interval
        self._entries: dict[str, StateEntry] = {}
        self._turn = 0

    def set(
        self,
        wid: str,
        generation: int,
        state: str,
        detail: str,
        now: float,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[StateEntry, bool]:
        """This node's own workload changed; the entry to announce, and whether the
        state itself changed (an event worth logging) rather than only its detail."""
        if state not in STATES:
            raise ValueError(f"unknown workload state {state!r}")
        previous = self._entries.get(wid)
        if previous is not None and previous.generation == generation and now <= previous.at:
            now = math.nextafter(previous.at, math.inf)
        entry = StateEntry(wid, generation, state, detail, self._me, now, dict(extra or {}))
        self._entries[wid] = entry
        return entry, previous is None or previous.state != state

    def receive(self, entry: StateEntry) -> bool:
        """A gossiped state; True if it was news (newer than what we hold)."""
        current = self._entries.get(entry.workload_id)
        if current is not None and (current.generation, current.at) >= (
            entry.generation,
            entry.at,
        ):
            return False  # older news: an earlier generation, or overtaken on the way
        self._entries[entry.workload_id] = entry
        return True

    def forget(self, wid: str) -> None:
        """The workload was removed from this node: stop announcing our state of it."""
        entry = self._entries.get(wid)
        if entry is not None and entry.node == self._me:
            del self._entries[wid]

    def get(self, wid: str) -> StateEntry | None:
        return self._entries.get(wid)

    def state_of(self, wid: str, generation: int) -> tuple[str, str]:
        """The state for the view's placement at ``generation``: ``pending`` until its
        owner has said anything about that generation."""
        entry = self._entries.get(wid)
        if entry is None or entry.generation < generation:
            return "pending", ""
        return entry.state, entry.detail

    def due(self) -> list[StateEntry]:
        """This interval's share of our own states to announce again, in turn."""
        ours = sorted(w for w, e in self._entries.items() if e.node == self._me)
        if not ours:
            return []
        start = (self._turn * self._per_interval) % len(ours)
        self._turn += 1
        picked = (ours[start:] + ours[:start])[: self._per_interval]
        return [self._entries[w] for w in picked]


def encode(entry: StateEntry) -> bytes:
    detail = entry.detail.encode()[:MAX_DETAIL].decode(errors="ignore")
    doc = {"w": entry.workload_id, "g": entry.generation, "s": entry.state, "t": entry.at}
    doc["d"] = detail
    return orjson.dumps(doc)


def decode(payload: bytes, origin: str) -> StateEntry:
    """A gossiped state from ``origin`` (authenticated by the envelope); ValueError if
    it is not exactly one."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not {"w", "g", "s", "t"} <= doc.keys():
        raise ValueError("not a workload state")
    wid, gen, state, at, detail = doc["w"], doc["g"], doc["s"], doc["t"], doc.get("d", "")
    if not isinstance(wid, str) or not 0 < len(wid.encode(errors="replace")) <= MAX_ID:
        raise ValueError("bad workload id")
    if type(gen) is not int or not 0 <= gen < 2**63:
        raise ValueError("bad generation")
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    if type(at) not in (int, float) or not math.isfinite(at):
        raise ValueError("bad time")
    if not isinstance(detail, str) or len(detail.encode(errors="replace")) > MAX_DETAIL:
        raise ValueError("bad detail")
    return StateEntry(wid, gen, state, detail, origin, float(at))
