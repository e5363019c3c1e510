"""The fencing core's shell: votes on the mesh, power-offs through BMCs, re-placement.

Theory of operation
-------------------
:class:`meshd.core.fencing.Fencer` decides (see its docstring for the safety argument);
this shell feeds it and carries out what it asks, over ports, so the daemon and the
simulator run the same code:

* **Inputs.** Membership changes arrive as :class:`~meshd.shell.bus.MemberStateChanged`
  on the bus; the roster (who votes: enrolled nodes, witnesses included, removed ones
  not) is read from the store on each change. Fencing messages arrive as signed
  datagrams on their own channel (kind ``fence``) or, for ``Fenced``/``FenceFailed``,
  over mTLS (``POST /v1/mesh/fence``); both name their author.
* **Votes travel signed.** A vote is a signed record (kind ``fence-vote``, the full form
  that carries the voter's certificate) inside the datagram, so a coordinator can pass
  the votes on in its ``Fenced`` and every node checks each against its voter's
  certificate. A relayed claim is never a vote.
* **Order of a step** (the core's contract): every ``Persist`` of the step in one
  durable transaction, then the sends, then the rest. A grant, a decision or an outcome
  never leaves the node before it is on disk; if the write fails, nothing is sent.
* **The direct check** (``CheckReach``): up to three signed probes, straight to the
  target, answered by its fencing shell; reachable if one answer comes within
  ``fencing.check_s``. A node whose daemon hangs does not answer, as it would not
  answer membership: it is fenced like a dead one.
* **Power-off**: the target's BMC endpoint, which every node shared with the others over
  mTLS (``POST /v1/mesh/bmc``, accepted only from the node it belongs to) and which is
  kept 0600 beside the node's own; the Redfish client runs until the core's deadline
  at most. No endpoint, or a failure: ``fence-failed``, an alarm, never a guess.
* **Re-placement**: on ``Replace``, the lowest-named live member (the target excluded)
  auctions the fenced node's workloads again (``PlacementShell.replace_from``); every
  other node checks now and then that it happened, and takes over if the one in charge
  died meanwhile.
* **Clock**: the core counts leases on CLOCK_BOOTTIME (monotonic, suspend included), so
  a wall-clock step never shortens a grant; after a reboot it restarts from zero and
  restored grants look "from the future", which the core holds a full lease.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from meshd.adapters.store import roster
from meshd.adapters.store.db import Store
from meshd.adapters.transport import Channel
from meshd.core.bmc import BmcEndpoint
from meshd.core.fencing import (
    Alarm,
    Broadcast,
    CheckReach,
    Effect,
    Fenced,
    FenceFailed,
    FenceMsg,
    Fencer,
    FenceVote,
    Persist,
    PowerOff,
    Replace,
    Send,
    SignedVote,
    codec,
)
from meshd.errors import EnvelopeError, MeshdError, StoreError
from meshd.shell.alarm import Alarm as Timer
from meshd.shell.bus import MemberStateChanged
from meshd.shell.context import NodeContext
from meshd.shell.ports import BmcPort, MeshPort

logger = logging.getLogger(__name__)

KIND = "fence"
VOTE_KIND = "fence-vote"
FENCE_PATH = "/v1/mesh/fence"
BMC_PATH = "/v1/mesh/bmc"
_MSG, _VOTE, _PROBE, _ANSWER = b"M", b"V", b"P", b"A"
PROBES = 3  # direct probes per check, spread over fencing.check_s
REPLACE_CHECK_S = 5.0  # how often every node checks a fenced node's workloads moved


def boot_clock() -> float:
    """Seconds since boot, suspend included: the fencing core's clock."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _decode(body: bytes) -> tuple[bytes, bytes]:
    if not body:
        raise EnvelopeError("empty fencing datagram")
    return body[:1], body[1:]


Replacer = Callable[[str, str], Awaitable[list[str]]]


class FencingShell:
    def __init__(
        self,
        ctx: NodeContext,
        mesh: MeshPort,
        bmc: BmcPort,
        bmc_clock: Callable[[], float],
        replace: Replacer,
        owned_by: Callable[[str], list[str]],
        endpoints: EndpointBook,
        clock: Callable[[], float] = boot_clock,
    ) -> None:
        self.ctx = ctx
        self.mesh = mesh
        self.bmc = bmc
        self._bmc_clock = bmc_clock
        self._replace = replace
        self._owned_by = owned_by
        self.endpoints = endpoints
        self.clock = clock
        self.name = ctx.ident.name
        self.core = Fencer(ctx.cfg.fencing, self.name, logging.getLogger("meshd.core.fencing"))
        self._timer = Timer("fencing", self._tick, self.core.next_deadline, clock, 1.0)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._probes: dict[bytes, asyncio.Future[None]] = {}
        self._fenced: dict[str, int] = {}  # target -> epoch: re-place its workloads
        self._stopped = False
        m = ctx.metrics
        self.dropped = m.counter("meshd_fencing_dropped_total", "Fencing messages dropped")
        self.power_offs = m.counter(
            "meshd_fencing_power_offs_total", "Power-offs this node ran, by outcome"
        )

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        now = self.clock()
        records = [codec.load_record(r) for r in fence_log(self.ctx.store)]
        self.mesh.on_datagram(Channel.FENCING, KIND, _decode, self._on_datagram, self.dropped)
        self.ctx.bus.subscribe(MemberStateChanged, self._on_member)
        self._step(lambda: self.core.restore(records, now))
        self._step(lambda: self.core.set_roster(self._voters(), self.clock()))
        for st in self.core.status():
            if st["state"] == "fenced":
                self._fenced[str(st["node"])] = int(str(st["epoch"]))
        self._spawn(self._check_replaced_periodically())

    def stop(self) -> None:
        self._stopped = True
        self._timer.stop()
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _voters(self) -> frozenset[str]:
        names = {m.name for m in roster.members(self.ctx.store) if m.role == "node"}
        return frozenset({*names, self.name})

    # -- queries ------------------------------------------------------------------------

    def state(self, name: str) -> str | None:
        """The fencing state overlaid on membership's (None: no episode for ``name``)."""
        st = self.core.state(name)
        return st if st in ("fencing", "fenced", "fence-failed") else None

    def status(self) -> dict[str, Any]:
        """``meshd fence status``: each node with a fence episode, this node's voters."""
        voters = sorted(self._voters())
        return {
            "node": self.name,
            "voters": voters,
            "needed": len(voters) // 2 + 1,
            "nodes": self.core.status(),
        }

    def confirm(self, target: str) -> dict[str, Any]:
        """``meshd fence confirm``: the operator's word that ``target`` is off."""
        self._step(lambda: self.core.confirm(target, self.clock()))
        self.ctx.store.append_event(
            self.ctx.clock(), "fence.confirmed", target, {"by": "operator", "on": self.name}
        )
        return {"node": target, "state": self.core.state(target)}

    # -- inputs ---------------------------------------------------------------------------

    def _on_member(self, ev: MemberStateChanged) -> None:
        if ev.name == self.name or self._stopped:
            return
        now = self.clock()
        self._step(lambda: self.core.set_roster(self._voters(), now))
        self._step(lambda: self.core.member(ev.name, ev.state, ev.incarnation, now))
        if ev.state == "alive" and ev.previous not in ("alive", "suspect"):
            self._spawn(self.endpoints.share_with(self.mesh, [ev.name]))

    def _on_datagram(self, msg: tuple[bytes, bytes], author: str) -> None:
        tag, data = msg
        if tag == _PROBE:
            if len(data) <= 32:
                self.mesh.send_datagram(
                    Channel.FENCING, author, self.mesh.sign(KIND, _ANSWER + data)
                )
            return
        if tag == _ANSWER:
            fut = self._probes.get(data)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        try:
            if tag == _VOTE:
                body, voter = self._verified(data)
                vote = codec.decode(body)
                if voter != author or not isinstance(vote, FenceVote):
                    raise EnvelopeError("a vote must be the sender's own")
                signed = (SignedVote(voter, vote, data),)
                self._step(lambda: self.core.receive(vote, author, self.clock(), signed))
                return
            if tag == _MSG:
                self._receive(codec.decode(data), author)
                return
            raise EnvelopeError(f"unknown fencing datagram tag {tag!r}")
        except EnvelopeError as exc:
            self.dropped.inc(reason="invalid")
            logger.debug("dropped a fencing datagram from=%s error=%s", author, exc)

    def receive_reliable(self, body: bytes, cert_der: bytes) -> None:
        """A fencing message a member posted over mTLS (``Fenced``, ``FenceFailed``)."""
        opened = self.mesh.open_reliable(body, cert_der, KIND, codec.decode, self.dropped)
        if opened is not None:
            msg, author = opened
            self._receive(msg, author.name)

    def _receive(self, msg: FenceMsg, author: str) -> None:
        votes: tuple[SignedVote, ...] = ()
        if isinstance(msg, Fenced | FenceFailed):
            votes = tuple(self._votes_in(msg.votes))
        self._step(lambda: self.core.receive(msg, author, self.clock(), votes))

    def _verified(self, blob: bytes) -> tuple[bytes, str]:
        opened = self.mesh.verify_record(VOTE_KIND, blob)
        if opened is None:
            raise EnvelopeError("a vote's signature does not verify")
        return opened

    def _votes_in(self, blobs: Iterable[bytes]) -> Iterable[SignedVote]:
        for blob in blobs:
            try:
                body, voter = self._verified(blob)
                vote = codec.decode(body)
            except EnvelopeError as exc:
                logger.debug("skipped a vote that does not verify: %s", exc)
                continue
            if isinstance(vote, FenceVote):
                yield SignedVote(voter, vote, blob)

    # -- one step: persist, send, act -----------------------------------------------------

    def _tick(self) -> None:
        if not self._stopped:
            self._step(lambda: self.core.tick(self.clock()))

    def _step(self, call: Callable[[], list[Effect]]) -> None:
        try:
            effects = call()
        except MeshdError:
            raise  # a refusal the caller reports (confirm of a node not failed)
        except Exception:  # a bug in the core must not take the daemon down
            logger.exception("the fencing core failed a step")
            return
        try:
            self._apply(effects)
        finally:
            self._timer.rearm()

    def _apply(self, effects: list[Effect]) -> None:
        records = [e.record for e in effects if isinstance(e, Persist)]
        if records:
            try:
                with self.ctx.store.transaction():
                    for r in records:
                        add_fence_record(self.ctx.store, codec.dump_record(r), self.ctx.clock())
            except StoreError as exc:
                # Nothing of this step leaves: an unrecorded promise is no promise.
                logger.error("fencing step not taken, its records could not be written: %s", exc)
                return
        loop_back: list[tuple[FenceVote, SignedVote]] = []
        for e in effects:
            if isinstance(e, Send):
                if isinstance(e.msg, FenceVote):
                    blob = self.mesh.sign_record(VOTE_KIND, codec.encode(e.msg))
                    if e.to == self.name:
                        loop_back.append((e.msg, SignedVote(self.name, e.msg, blob)))
                    else:
                        self._datagram(e.to, _VOTE + blob)
                else:
                    self._send(e.to, e.msg, e.reliable)
            elif isinstance(e, Broadcast):
                for name in sorted(self._voters() - {self.name, e.msg.target}):
                    self._send(name, e.msg, e.reliable)
        for e in effects:
            if isinstance(e, CheckReach):
                self._spawn(self._check(e.target, e.epoch))
            elif isinstance(e, PowerOff):
                self._spawn(self._power_off(e))
            elif isinstance(e, Replace):
                self._on_fenced(e.target, e.epoch)
            elif isinstance(e, Alarm):
                logger.error(
                    "fence failed node=%s epoch=%d: %s; nothing of it is re-placed",
                    e.target,
                    e.epoch,
                    e.reason,
                )
                self.ctx.store.append_event(
                    self.ctx.clock(), "fence.failed", e.target, {"epoch": e.epoch, "why": e.reason}
                )
        for vote, signed in loop_back:
            self._step(functools.partial(self._own_vote, vote, signed))

    def _own_vote(self, vote: FenceVote, signed: SignedVote) -> list[Effect]:
        return self.core.receive(vote, self.name, self.clock(), (signed,))

    def _send(self, to: str, msg: FenceMsg, reliable: bool) -> None:
        if reliable:
            self._spawn(self.mesh.post_to(to, FENCE_PATH, codec.encode(msg)))
        else:
            self._datagram(to, _MSG + codec.encode(msg))

    def _datagram(self, to: str, body: bytes) -> None:
        self.mesh.send_datagram(Channel.FENCING, to, self.mesh.sign(KIND, body))

    # -- effects that take time -----------------------------------------------------------

    async def _check(self, target: str, epoch: int) -> None:
        """Probe ``target`` directly; report whether it answered within check_s."""
        check_s = self.ctx.cfg.fencing.check_s
        nonce = os.urandom(12)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[nonce] = fut
        reachable = False
        try:
            for _ in range(PROBES):
                self._datagram(target, _PROBE + nonce)
                try:
                    await asyncio.wait_for(asyncio.shield(fut), check_s / PROBES)
                    reachable = True
                    break
                except TimeoutError:
                    continue
        finally:
            self._probes.pop(nonce, None)
        if not self._stopped:
            self._step(lambda: self.core.reach(target, epoch, reachable, self.clock()))

    async def _power_off(self, e: PowerOff) -> None:
        now = self.clock()
        budget = max(0.0, min(e.deadline - now, self.ctx.cfg.bmc.deadline_s))
        endpoint = self.endpoints.get(e.target)
        data: dict[str, Any] = {"epoch": e.epoch, "round": e.round}
        if endpoint is None:
            outcome, reason = (
                "failed",
                (
                    f"no BMC is known for {e.target}: run `meshd bmc set` on it (it shares the "
                    f"BMC with the mesh), or, once it is off, `meshd fence confirm {e.target}`"
                ),
            )
        else:
            self.ctx.store.append_event(
                self.ctx.clock(), "fence.powering-off", e.target, {**data, **endpoint.public()}
            )
            result = await self.bmc.force_off(endpoint, self._bmc_clock() + budget)
            data["attempts"] = [a.as_json() for a in result.attempts]
            if result.verified_off:
                outcome, reason = ("already-off" if result.already_off else "off"), ""
            else:
                outcome = "failed"
                reason = result.error or "the BMC never reported the system Off"
        self.power_offs.inc(outcome=outcome)
        kind = "fence.failed-attempt" if outcome == "failed" else "fence.off"
        self.ctx.store.append_event(
            self.ctx.clock(), kind, e.target, {**data, "outcome": outcome, "why": reason}
        )
        logger.warning(
            "fence power-off node=%s epoch=%d outcome=%s%s",
            e.target,
            e.epoch,
            outcome,
            f" why={reason}" if reason else "",
        )
        if not self._stopped:
            self._step(
                lambda: self.core.power_result(
                    e.target, e.epoch, e.round, outcome, self.clock(), reason
                )
            )

    # -- re-placement ---------------------------------------------------------------------

    def _on_fenced(self, target: str, epoch: int) -> None:
        self._fenced[target] = epoch
        self.ctx.store.append_event(self.ctx.clock(), "fence.fenced", target, {"epoch": epoch})
        logger.warning("node fenced node=%s epoch=%d", target, epoch)
        self._spawn(self._replace_if_mine(target))

    def _in_charge(self, target: str) -> bool:
        live = sorted(n for n in self.mesh.live_names() if n != target)
        return bool(live) and live[0] == self.name

    async def _replace_if_mine(self, target: str) -> None:
        if self._in_charge(target) and self._owned_by(target):
            try:
                await self._replace(target, f"{target} was fenced")
            except MeshdError as exc:
                logger.error("re-placing the workloads of %s failed: %s", target, exc)

    async def _check_replaced_periodically(self) -> None:
        while not self._stopped:
            await asyncio.sleep(REPLACE_CHECK_S)
            for target in sorted(self._fenced):
                if self.core.state(target) != "fenced":
                    self._fenced.pop(target, None)  # it came back: no longer ours to move
                    continue
                await self._replace_if_mine(target)


class EndpointBook:
    """The BMC endpoints of this node and of every member, kept 0600 in the data dir."""

    def __init__(
        self,
        own: Callable[[], BmcEndpoint | None],
        own_ca: Callable[[BmcEndpoint], bytes | None],
        load_peer: Callable[[str], BmcEndpoint | None],
        save_peer: Callable[[str, BmcEndpoint, bytes | None], None],
        name: str,
    ) -> None:
        self._own, self._own_ca, self._load_peer, self._save_peer = (
            own,
            own_ca,
            load_peer,
            save_peer,
        )
        self.name = name

    def get(self, node: str) -> BmcEndpoint | None:
        try:
            return self._own() if node == self.name else self._load_peer(node)
        except MeshdError as exc:
            logger.error("can't read the BMC endpoint of %s: %s", node, exc)
            return None

    async def share_with(self, mesh: MeshPort, names: Iterable[str]) -> None:
        """Post this node's endpoint (password and CA included) to ``names`` over mTLS."""
        try:
            own = self._own()
        except MeshdError as exc:
            logger.error("can't share this node's BMC: %s", exc)
            return
        if own is None:
            return
        body = endpoint_body(own, self._own_ca(own))
        for name in names:
            await mesh.post_to(name, BMC_PATH, body)

    def receive(self, body: bytes, author: str) -> None:
        """A member's own endpoint, posted by that member (``POST /v1/mesh/bmc``)."""
        endpoint, ca = parse_endpoint_body(body)
        self._save_peer(author, endpoint, ca)
        logger.info("learnt the BMC of node=%s url=%s", author, endpoint.base_url)


def endpoint_body(endpoint: BmcEndpoint, ca_pem: bytes | None) -> bytes:
    doc = {**endpoint.to_json(), "ca_file": None}
    doc["ca_pem"] = ca_pem.decode() if ca_pem else None
    return json.dumps(doc, sort_keys=True).encode()


def parse_endpoint_body(body: bytes) -> tuple[BmcEndpoint, bytes | None]:
    try:
        doc = json.loads(body)
        ca = doc.pop("ca_pem", None) if isinstance(doc, dict) else None
    except ValueError as exc:
        raise EnvelopeError("a BMC endpoint must be JSON") from exc
    if ca is not None and not isinstance(ca, str):
        raise EnvelopeError("a BMC endpoint's ca_pem must be a string")
    return BmcEndpoint.from_json(doc), (ca.encode() if ca else None)


# -- the store's fence records -------------------------------------------------------------


def fence_log(store: Store) -> list[bytes]:
    return [bytes(r[0]) for r in store.query("SELECT body FROM fence_log ORDER BY id")]


def add_fence_record(store: Store, body: bytes, at: float) -> None:
    store.execute("INSERT INTO fence_log (at, body) VALUES (?, ?)", (at, body))
