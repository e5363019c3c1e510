"""The node's placement shell: the auction core on real sockets, disk and a clock.

The pure core (``meshd.core.auction``) decides; this shell only carries out, in the order
the core's effects document:

1. **persist** the step's records through the journal (``meshd.shell.journal``): promises
   (an accepted award, a round with its awards) at once, fsynced for allocations;
   knowledge (holds, bids, the view) within ``auction.journal_lag_s``, in order;
2. **send** through the outbox (``meshd.shell.outbox``): one loop turn's messages to a
   member as one compact-signed, sealed datagram bundle on the mesh port's auction
   channel, confirmations as one bundle for everyone; what does not fit a datagram
   (a large award, a large digest or Sync) and withdrawals over mTLS
   (``POST /v1/mesh/auction``); confirmations also through membership gossip, with
   digest anti-entropy so a partitioned or restarted node catches up;
3. **act**: resolve the waiting ``submit`` call, log workload starts and stops.

**A write that fails** (disk full, I/O error, read-only) ends the step there: nothing
of it is sent or acted on, and the core, which changed as it decided, is rebuilt from
what the store holds plus the journal's pending records, exactly as a restart would
rebuild it (``Auctioneer.restore``), so memory holds no promise the disk does not: a
resent award then finds no allocation to accept again. The rebuild abandons this
node's auctions in flight (their clients are told why). Until the store writes again
(``meshd.shell.store_health``) the node bids nothing, refuses awards and submissions
with a sentence saying why, and the messages of a step whose write fails again are
dropped, as if lost.

The core runs on the wall clock (holds and decisions are compared across nodes);
telemetry (load, free memory and disk) is sampled with psutil once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from meshd.adapters import telemetry
from meshd.adapters.store import auction_records, roster
from meshd.adapters.transport import Channel
from meshd.core import spec
from meshd.core.auction import candidates, codec, fields
from meshd.core.auction.auctioneer import Auctioneer
from meshd.core.auction.capabilities import Capabilities
from meshd.core.auction.durable import DurableState, PlacementRecorded
from meshd.core.auction.effects import (
    Broadcast,
    Decided,
    Effect,
    Failed,
    Persist,
    Send,
    Start,
    Stop,
)
from meshd.core.auction.fields import dumps
from meshd.core.auction.messages import AuctionMsg, Confirm, Sync
from meshd.core.auction.model import (
    NOTHING,
    Capacity,
    InvariantBreach,
    Placement,
    Resources,
    Telemetry,
    Workload,
)
from meshd.core.drain import DrainRecord
from meshd.core.spec import SubmitRequest, WorkloadSpec
from meshd.errors import (
    BadRequest,
    EnvelopeError,
    MeshdError,
    NotFoundError,
    PlacementError,
    StoreError,
)
from meshd.shell.addresses import nics_json
from meshd.shell.alarm import Alarm
from meshd.shell.bus import (
    DrainingChanged,
    IdleChanged,
    ViewSynced,
    WorkloadAssigned,
    WorkloadReleased,
)
from meshd.shell.context import NodeContext
from meshd.shell.drains import Drains
from meshd.shell.journal import AuctionJournal
from meshd.shell.networks import Networks
from meshd.shell.outbox import Outbox
from meshd.shell.ports import MeshPort
from meshd.shell.store_health import StoreHealth

logger = logging.getLogger(__name__)


class Assigner(Protocol):
    """What ``submit`` needs of the address shell (:mod:`meshd.shell.addresses`), and
    whether a member is fenced (set by the fencing shell's wiring)."""

    fenced: Callable[[str], bool]

    async def assign(self, workload_id: str, spec: WorkloadSpec) -> WorkloadSpec: ...

    def lend(self, workload_id: str, spec: WorkloadSpec) -> WorkloadSpec | None: ...

    def returned(self, workload_id: str, spec: WorkloadSpec) -> None: ...

    def release(self, workload_id: str, spec: WorkloadSpec) -> None: ...

    def in_use(self, network: str) -> list[dict[str, Any]]: ...

    def stop(self) -> None: ...


StateOf = Callable[[str, int], tuple[str, str]]  # (workload id, generation) -> state, detail
AUCTION_KIND = "auction"
PLACEMENT_BROADCAST = "placement"
PRUNE_BATCH = 2000  # round records decoded and deleted per pruning pass
WORKLOAD_MAX = 256 * 1024  # bytes of an encoded workload: its Award fits MAX_RELIABLE


class PlacementShell:
    def __init__(self, ctx: NodeContext, mesh: MeshPort, capabilities: Capabilities) -> None:
        self.ctx = ctx
        self.capabilities = capabilities
        self.mesh = mesh
        cfg = ctx.cfg
        cap = telemetry.capacity(cfg)
        self.capacity = Capacity(cpus=cap.cpus, memory=cap.memory, disk=cap.disk)
        durable = auction_records.load(ctx.store)
        # Whether every allocation this node committed was read back: only then may an
        # absence mean "released" (the runner reaps what no allocation names).
        self.allocations_complete = durable.unreadable == 0
        self.core = self._restore(durable)
        # Maintenance drains (``meshd node drain``): drained members get no offer from
        # this node, and this node bids nothing while it is drained itself.
        self.drains = Drains(ctx, mesh, self._drain_changed)
        # The mesh's networks (``meshd network create``): NICs will draw addresses here.
        self.networks = Networks(ctx, mesh)
        # NIC addresses (meshd.shell.addresses), set by the node once built: a spec with
        # NICs gets its addresses from it while its auction collects bids.
        self.addresses: Assigner | None = None
        # Told of each placement the view takes in, and (None) when the core is rebuilt
        # from the store: indexes of the view kept up to date without scanning it.
        self.view_listeners: list[Callable[[Placement | None], None]] = []
        # (workload, generation) this node, having accepted a drain, put up for auction
        # again: each at most once, so what can't move (pinned there) is not retried.
        self._drained_moves: set[tuple[str, int]] = set()
        self.core.set_maintenance(self._maintenance())
        self.health = StoreHealth(ctx.store, cfg.store, ctx.clock, ctx.metrics)
        self.health.subscribe(self._store_changed)
        self.journal = AuctionJournal(
            ctx.store, cfg.auction.journal_lag_s, ctx.clock, self.health.failed
        )
        self.outbox = Outbox(self._sign, self._send_signed, mesh.live_peers)
        self._waiting: dict[str, asyncio.Future[Placement]] = {}
        # Not started yet: (workload, supersede a placed one, its NIC addresses still to
        # be fixed, its auction id when started)
        self._queued: list[tuple[Workload, bool, bool, asyncio.Future[str]]] = []
        self._start_due = False
        # Workloads whose submission is claiming their NICs' addresses right now.
        self._claiming: set[str] = set()
        self._telemetry: Telemetry | None = None
        self._draining = NOTHING  # released, not yet destroyed (the runner says)
        self._idle: dict[str, Resources] = {}  # stopped or failed here (the runner says)
        ctx.bus.subscribe(DrainingChanged, self._on_draining)
        ctx.bus.subscribe(IdleChanged, self._on_idle)
        self._broken: str | None = None  # the store can't even be read: refuse everything
        # Alone in the roster: nobody else could have placed what we run elsewhere.
        try:
            others = [m for m in roster.members(ctx.store) if m.name != ctx.ident.name]
            self._synced = not any(m.role == "node" for m in others)
        except MeshdError:  # unreadable: wait to hear from a member, to be safe
            self._synced = False
        self._alarm = Alarm("auction", self._tick, self._deadline, ctx.clock, 1.0)
        self._tasks: set[asyncio.Task[Any]] = set()
        m = ctx.metrics
        self.decisions = m.counter("meshd_placements_total", "Auctions this node ran, by result")
        self.dropped = m.counter("meshd_auction_dropped_total", "Auction messages dropped")
        self.repairs = m.counter(
            "meshd_auction_sync_placements_total",
            "Placements this node sent to a member whose view differed (anti-entropy)",
        )
        self.pruned = m.counter(
            "meshd_auction_rounds_pruned_total", "Old round records deleted from the store"
        )

    def _maintenance(self) -> str | None:
        if not self.drains.draining(self.ctx.ident.name):
            return None
        return (
            "draining: the operator drained this node for maintenance; "
            f"`meshd node undrain {self.ctx.ident.name}` lets it bid again"
        )

    def _drain_changed(self, record: DrainRecord) -> None:
        if record.node == self.ctx.ident.name:
            self.core.set_maintenance(self._maintenance())

    def _on_draining(self, event: DrainingChanged) -> None:
        self._draining = event.resources
        self.core.set_draining(event.resources)

    def _on_idle(self, event: IdleChanged) -> None:
        if event.lent is None:
            self._idle.pop(event.workload_id, None)
        else:
            self._idle[event.workload_id] = event.lent
        self.core.lend(event.workload_id, event.lent)

    def resume_fits(self, wid: str) -> str | None:
        """None if the stopped (or failed) workload ``wid`` may run again here."""
        return self.core.resume_fits(wid)

    def _restore(self, durable: DurableState) -> Auctioneer:
        ctx, cfg = self.ctx, self.ctx.cfg
        return Auctioneer.restore(
            cfg.auction,
            ctx.ident.name,
            self.capacity,
            ctx.new_random(),  # round ids and sampling, not secrets
            ctx.clock(),
            logging.getLogger("meshd.core.auction"),
            durable,
            witness=cfg.witness,
            capabilities=self.capabilities,
        )

    def set_capabilities(self, capabilities: Capabilities) -> None:
        """What this node offers in bids from now on (``network:NAME`` follows the
        networks it can attach)."""
        self.capabilities = capabilities
        self.core.set_capabilities(capabilities)

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        self.mesh.on_datagram(
            Channel.AUCTION, AUCTION_KIND, codec.decode_all, self._receive_all, self.dropped
        )
        self.mesh.on_broadcast(PLACEMENT_BROADCAST, self._on_gossip)
        self._alarm.rearm()
        if self.ctx.cfg.auction.host_telemetry:
            self._spawn(self._sample_telemetry())
        self._spawn(self._anti_entropy())
        self._spawn(self._prune_rounds())
        self.drains.start()
        self.networks.start()
        self._spawn(self._follow_drains())

    def stop(self) -> None:
        if self.addresses is not None:
            self.addresses.stop()
        self._alarm.stop()
        self.drains.stop()
        self.networks.stop()
        self.health.stop()
        try:
            self.journal.flush(self.ctx.clock())
        except MeshdError as exc:
            logger.error("writing the last auction records failed: %s", exc)
        for task in list(self._tasks):
            task.cancel()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(PlacementError("meshd is stopping; the auction was abandoned"))
        for *_, ready in self._queued:
            if not ready.done():
                ready.set_exception(PlacementError("meshd is stopping; the auction never started"))
        self._queued.clear()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _deadline(self) -> float:
        return self.core.next_deadline()  # the core of the moment: a rebuild replaces it

    def _tick(self) -> None:
        if self._broken is not None:
            return
        with contextlib.suppress(StoreError):  # the step was discarded; the store said why
            self._apply(self.core.tick(self.ctx.clock()))

    async def _sample_telemetry(self) -> None:
        while True:
            s = await asyncio.to_thread(telemetry.sample, self.ctx.cfg.data_dir)
            self._telemetry = Telemetry(s.load_per_core, s.mem_available, s.disk_free)
            self.core.set_telemetry(self._telemetry)
            await asyncio.sleep(1.0)

    async def _anti_entropy(self) -> None:
        rng = self.ctx.new_random()  # peer choice
        # The first exchange comes soon: a node that was down catches up on what was
        # placed meanwhile. At rest an exchange is a Digest datagram each way; only
        # the buckets that differ travel (meshd.core.auction.digest).
        interval = min(self.ctx.cfg.auction.sync_interval_s, 2.0)
        while True:
            await asyncio.sleep(interval * rng.uniform(0.8, 1.2))
            peer = self.mesh.random_peer(rng)
            if peer is not None and self._broken is None:
                with contextlib.suppress(StoreError):  # discarded; the store said why
                    self._apply(self.core.anti_entropy(peer))
            interval = self.ctx.cfg.auction.sync_interval_s

    async def _prune_rounds(self) -> None:
        """Keep the stored round records bounded (``auction.rounds_keep``).

        A pass decodes and deletes at most ``PRUNE_BATCH`` rounds, so it never holds
        the loop for long; a pass that found a full batch runs again a second later.
        """
        view = self.core.placements()

        def placed(wid: str) -> int:
            p = view.get(wid)
            return 0 if p is None else p.generation

        while True:
            pruned = 0
            try:
                now = self.ctx.clock()
                # ``placed`` reads the view in memory: put it on disk first, so a floor
                # skipped because the view holds that generation is not lost in a crash.
                self.journal.flush(now)
                keep = self.ctx.cfg.auction.rounds_keep
                pruned = auction_records.prune_rounds(
                    self.ctx.store, keep, PRUNE_BATCH, placed, now
                )
                if pruned:
                    self.pruned.inc(pruned)
                    logger.debug("pruned auction rounds count=%d", pruned)
            except StoreError as exc:  # a full or failing disk: try again next time
                self.health.failed(exc, "pruning")
            except MeshdError as exc:
                logger.warning("pruning auction rounds failed: %s", exc)
            except Exception:  # a bug must not end pruning for good
                logger.exception("pruning auction rounds failed")
            await asyncio.sleep(1.0 if pruned >= PRUNE_BATCH else 10.0)

    # -- submitting -----------------------------------------------------------------

    def _workload(self, request: SubmitRequest) -> Workload:
        """The placed form of a submission: an id, and the spec (already checked)."""
        # A key names one workload *per originating node*: two nodes must never run
        # auctions for one workload id at once, so a retry goes to the same node.
        node, key = self.ctx.ident.name, request.idempotency_key
        wid = (
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"meshd:{node}:{key}")) if key else str(uuid.uuid4())
        )
        w = Workload(wid, request.spec())
        if len(dumps(fields.workload(w))) > WORKLOAD_MAX:  # an Award carries it whole
            raise BadRequest(
                f"the workload (its settings and node list) is larger than "
                f"{WORKLOAD_MAX // 1024} KiB"
            )
        return w

    def _refusing(self) -> str | None:
        """Why this node takes no submission now (its store can't write), or None."""
        problem = self._broken or self.health.problem
        if problem is None:
            return None
        return (
            f"this node's store can't write, so it can place nothing now: {problem}; "
            "submit through another node, or fix the store and retry"
        )

    async def submit(self, request: SubmitRequest) -> dict[str, Any]:
        workload = self._workload(request)
        why = self._refusing()
        if why is not None:
            raise StoreError(why)
        started = time.perf_counter()
        claim = bool(workload.spec.nics)
        held = self.core.placements().get(workload.id) if claim else None
        if held is not None and not held.removed:
            # A retried submission of a placed workload: the spec it was placed with.
            workload, claim = held.workload, False
        # A spec with NICs to give addresses to: its auction starts at once and collects
        # bids (they need no address) while a majority of the roster grants the
        # addresses; it awards only with them (Auctioneer.fix), or fails with the claim's
        # refusal (Auctioneer.abandon).
        if claim and self.addresses is None:
            raise PlacementError("this node gives no NIC addresses yet: retry in a moment")
        if claim and workload.id in self._claiming:
            # The same submission again (its idempotency key) while the first one is
            # still on its way: it joins that auction and its addresses, claiming none.
            claim = False
        if not claim:
            return await self._decided(workload, await self._start(workload), started)
        assert self.addresses is not None
        self._claiming.add(workload.id)
        try:
            # Addresses from this node's pools need no claim: the auction starts with
            # them (its round record, fsynced before the award leaves, carries them).
            lent = self.addresses.lend(workload.id, workload.spec)
            if lent is not None:
                fixed = Workload(workload.id, lent)
                try:
                    aid = await self._start(fixed)
                except MeshdError:  # it did not start: nothing left with the address
                    self.addresses.returned(workload.id, lent)
                    raise
                # (Cancelled, it may have started all the same: the pool takes the
                # addresses back by its own rules.)
                return await self._decided(fixed, aid, started, assigned=True)
            aid = await self._start(workload, pending=True)
            fixed = await self._claimed(aid, workload)
            return await self._decided(fixed, aid, started, assigned=True)
        finally:
            self._claiming.discard(workload.id)

    async def _claimed(self, aid: str, workload: Workload) -> Workload:
        """``workload`` with its NICs' addresses, claimed while its pending auction
        ``aid`` collects bids, and that auction let award it (``Auctioneer.fix``); a
        refused claim ends the auction with the claim's sentence (``abandon``)."""
        assert self.addresses is not None
        why = "the submission was cancelled"
        claim = asyncio.ensure_future(self.addresses.assign(workload.id, workload.spec))
        try:
            fixed = await self._unless_failed(aid, workload.id, claim)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, MeshdError):
                why = str(exc)
            # (A failed write discards the core's step: the auction is gone with it.)
            with contextlib.suppress(MeshdError):
                self._apply_now(lambda now: self.core.abandon(aid, why, now))
            self._forget(aid)
            raise
        workload = Workload(workload.id, fixed)
        try:
            self._apply_now(lambda now: self.core.fix(aid, workload, now))
        except MeshdError:
            self.addresses.release(workload.id, workload.spec)
            self._forget(aid)
            raise
        return workload

    async def _unless_failed(
        self, aid: str, workload_id: str, claim: asyncio.Future[WorkloadSpec]
    ) -> WorkloadSpec:
        """The claim's result; if pending auction ``aid`` fails first (no node can take
        the workload), the claim is stopped and the auction's error raised: nobody
        waits for addresses nothing could use."""
        fut = self._waiting.get(aid)
        closed = False
        try:
            if fut is not None and not claim.done():
                await asyncio.wait((claim, fut), return_when=asyncio.FIRST_COMPLETED)
            if not claim.done() and fut is not None and not fut.cancelled():
                failed = fut.exception()
                if failed is not None:
                    await self._stop_claim(workload_id, claim)
                    raise failed
            return await claim
        except GeneratorExit:  # closed, not cancelled: its loop is gone, touch nothing
            closed = True
            raise
        finally:
            if not claim.done() and not closed:  # this submission was cancelled
                await self._stop_claim(workload_id, claim)

    async def _stop_claim(self, workload_id: str, claim: asyncio.Future[WorkloadSpec]) -> None:
        """Cancel ``claim`` and wait for it: a cancelled claim gives back its grants; one
        that won all the same (its last wait had ended in the same loop turn) has its
        addresses released here. A cancellation of this task itself goes on."""
        assert self.addresses is not None
        claim.cancel()
        try:
            spec = await claim
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        except MeshdError:
            pass  # refused: nothing held
        else:
            self.addresses.release(workload_id, spec)

    def _forget(self, aid: str) -> None:
        """Stop waiting for auction ``aid``: the submission answers with another error."""
        fut = self._waiting.pop(aid, None)
        if fut is not None and fut.done() and not fut.cancelled():
            fut.exception()  # read: that error is not the answer

    async def _decided(
        self, workload: Workload, aid: str, started: float, assigned: bool = False
    ) -> dict[str, Any]:
        """Wait for auction ``aid`` to place ``workload``; the submission's answer."""
        fut = self._waiting.get(aid)
        if fut is None:  # a same-key submission already took its answer: read the view
            p = self.core.placements().get(workload.id)
            if p is None or p.removed:
                raise PlacementError("the auction ended; check `meshd auctions`")
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(p)
        cfg = self.ctx.cfg
        limit = cfg.auction.max_rounds * (cfg.auction.window_s + 3 * cfg.auction.award_timeout_s)
        try:
            placement = await asyncio.wait_for(asyncio.shield(fut), timeout=limit + 5.0)
        except TimeoutError as exc:
            raise PlacementError(
                "the auction did not finish in time; check `meshd auctions`"
            ) from exc
        except MeshdError:
            # Placed nowhere: its addresses go back to the pool now (a grant the view
            # backs, had another round placed it after all, is kept by every voter).
            if assigned and self.addresses is not None:
                self.addresses.release(workload.id, workload.spec)
            raise
        finally:
            if fut.done():
                self._waiting.pop(aid, None)
        decided_ms = (time.perf_counter() - started) * 1000
        return {
            "workload": placement.workload_id,
            "name": placement.name,
            "owner": placement.owner,
            "round": placement.round,
            "generation": placement.generation,
            "decided_ms": round(decided_ms, 3),
            "addresses": nics_json(placement.workload_id, placement.spec),
            "bids": self._bids(placement.round),
        }

    def _apply_now(self, step: Callable[[float], list[Effect]]) -> None:
        """Run one core step at the current time and carry out its effects."""
        self._apply(step(self.ctx.clock()))
        self._alarm.rearm()

    async def _start(
        self, workload: Workload, *, supersede: bool = False, pending: bool = False
    ) -> str:
        """Start an auction for ``workload``; its id once started.

        While auctions of ours are in flight, new ones wait ``auction.batch_linger_s``
        and start together: their requests, bids and confirmations then share
        datagrams (meshd.shell.outbox). An idle originator starts at once.
        """
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[str] = loop.create_future()
        self._queued.append((workload, supersede, pending, ready))
        if not self._start_due:
            self._start_due = True
            linger = self.ctx.cfg.auction.batch_linger_s if self.busy() else 0.0
            loop.call_later(linger, self._start_queued)
        return await ready

    def busy(self, besides: int = 0) -> bool:
        """Whether more than ``besides`` auctions this node started are in flight
        (stops counting there: it is asked on every submission)."""
        left = besides
        for f in self._waiting.values():
            if not f.done():
                if left == 0:
                    return True
                left -= 1
        return False

    def _start_queued(self) -> None:
        self._start_due = False
        queued, self._queued = self._queued, []
        why = self._refusing()
        if why is not None:  # the store failed while these waited for the linger
            for *_, ready in queued:
                if not ready.done():
                    ready.set_exception(StoreError(why))
            return
        drained = self.drains.drained()  # offered nothing, in any round of these auctions
        members = sorted(n for n in self.mesh.live_names() if n not in drained)
        now = self.ctx.clock()
        effects: list[Effect] = []
        batch = candidates.Batch()  # one first-round sample: shared datagrams
        for workload, supersede, pending, ready in queued:
            try:
                aid, started = self.core.submit(
                    workload, members, now, supersede=supersede, batch=batch, pending=pending
                )
            except Exception as exc:  # a bug in one must not strand the others
                logger.exception("starting an auction failed workload=%s", workload.id)
                if not ready.done():
                    ready.set_exception(PlacementError(f"the auction could not start: {exc}"))
                continue
            if aid not in self._waiting:
                self._waiting[aid] = asyncio.get_running_loop().create_future()
            effects += started
            if not ready.done():
                ready.set_result(aid)
        with contextlib.suppress(StoreError):  # discarded; the waiting clients were told
            self._apply(effects)
        self._alarm.rearm()

    def _bids(self, round_id: str) -> list[dict[str, Any]]:
        r = self.core.round_record(round_id)
        return [] if r is None else [{"node": b.bidder, "score": b.score} for b in r.bids]

    # -- views ----------------------------------------------------------------------

    def workloads(self, states: StateOf) -> list[dict[str, Any]]:
        """The view as rows; ``states`` tells each workload's state (the runner's gossip)."""
        mine = self.core.ledger().allocations
        placed = sorted(self.core.placements().values(), key=lambda p: p.name)
        return [self._row(p, mine, states) for p in placed if not p.removed]

    def workload(self, wid: str, states: StateOf) -> dict[str, Any]:
        """One workload with its whole spec, from this node's replicated view."""
        p = self.core.placements().get(wid)
        if p is None or p.removed:
            raise NotFoundError(f"no workload {wid} is placed in this mesh")
        row = self._row(p, self.core.ledger().allocations, states)
        row.update(originator=p.originator, decided_at=p.decided_at, spec=spec.to_wire(p.spec))
        return row

    def _row(self, p: Placement, mine: Mapping[str, object], states: StateOf) -> dict[str, Any]:
        state, detail = states(p.workload_id, p.generation)
        return {
            "workload": p.workload_id,
            "name": p.name,
            "owner": p.owner,
            "generation": p.generation,
            "state": state,
            "detail": detail,
            "tenant": p.tenant,
            "resources": {
                "cpus": p.resources.cpus,
                "memory": p.resources.memory,
                "disk": p.resources.disk,
            },
            "local": p.workload_id in mine,
            "addresses": nics_json(p.workload_id, p.spec),
        }

    def _view_changed(self, placement: Placement | None) -> None:
        for listener in self.view_listeners:
            try:
                listener(placement)
            except Exception:  # one listener's bug must not cost the step
                logger.exception("a view listener failed")

    def offer_digest(self, peer: str) -> None:
        """Send ``peer`` this node's view digest now, out of turn: a member whose view
        matches learns it is synced (``ViewSynced``) without waiting for its turn."""
        if self._broken is None:
            with contextlib.suppress(StoreError):  # discarded; the store said why
                self._apply(self.core.anti_entropy(peer))

    def core_placements(self) -> Mapping[str, Placement]:
        """The view of the core of the moment (a failed write rebuilds the core)."""
        return self.core.placements()

    def owner_of(self, wid: str) -> str | None:
        p = self.core.placements().get(wid)
        return None if p is None or p.removed else p.owner

    async def replace_from(
        self, node: str, why: str, *, planned: bool = False, only: set[str] | None = None
    ) -> list[str]:
        """Auction again every workload the view places on ``node``, which is off (its
        BMC verified it, or the operator confirmed it): the same ids and specs, at the
        next generation, on the live members (``node`` is not among them). A workload
        whose restart policy is ``none`` stays where it was, recorded as lost. Returns
        the ids put up for auction; nobody waits for them (``meshd workloads`` shows
        where they went, the event log why they moved).

        ``planned`` (a maintenance drain: ``node`` is up and drained, so no originator
        offers it anything): every workload moves, ``restart = none`` included, since
        that policy is about a node that died, not one the operator is servicing.
        ``only``: just these workload ids."""
        moved: list[str] = []
        for p in self.placed_on(node):
            if only is not None and p.workload_id not in only:
                continue
            data = {"from": node, "generation": p.generation, "why": why}
            if p.workload.spec.restart == "none" and not planned:
                self.ctx.store.append_event(self.ctx.clock(), "workload.lost", p.workload_id, data)
                continue
            self.ctx.store.append_event(self.ctx.clock(), "workload.replacing", p.workload_id, data)
            aid = await self._start(p.workload, supersede=True)
            fut = self._waiting.get(aid)
            if fut is not None:  # nobody waits: forget it once decided
                fut.add_done_callback(functools.partial(self._forget_waiting, aid))
            moved.append(p.workload_id)
        if moved:
            logger.info("re-placing workloads from=%s count=%d why=%s", node, len(moved), why)
        return moved

    async def _follow_drains(self) -> None:
        """Move what lands on a node this node drained after the drain: a placement
        decided while the drain was still spreading (its originator, or the winner,
        had not heard of it yet). Each generation is moved once."""
        while True:
            await asyncio.sleep(self.ctx.cfg.auction.sync_interval_s)
            me = self.ctx.ident.name
            for record in self.drains.table.records():
                if not record.draining or record.by != me:
                    continue
                try:
                    await self._move_off(record.node, "drained")
                except MeshdError as exc:  # a full disk: the next pass tries again
                    logger.warning("moving workloads off drained %s failed: %s", record.node, exc)
                except Exception:  # a bug must not end the loop for good
                    logger.exception("moving workloads off drained %s failed", record.node)

    async def _move_off(self, node: str, why: str) -> list[str]:
        fresh = [
            p
            for p in self.placed_on(node)
            if (p.workload_id, p.generation) not in self._drained_moves
        ]
        if not fresh:
            return []
        self._drained_moves.update((p.workload_id, p.generation) for p in fresh)
        return await self.replace_from(node, why, planned=True, only={p.workload_id for p in fresh})

    def placed_on(self, node: str) -> list[Placement]:
        """The workloads the view places on ``node``, by id."""
        placed = sorted(self.core.placements().values(), key=lambda p: p.workload_id)
        return [p for p in placed if p.owner == node and not p.removed]

    async def drain(self, node: str, draining: bool) -> dict[str, Any]:
        """``meshd node drain|undrain NODE`` accepted here: the record (durable, then
        gossiped), and for a drain the node's workloads auctioned away from here."""
        record = self.drains.set(node, draining)
        if draining:  # a repeated drain moves again what is still there
            self._drained_moves.difference_update(
                (p.workload_id, p.generation) for p in self.placed_on(node)
            )
        moving = await self._move_off(node, "drained") if draining else []
        return {
            "node": node,
            "draining": record.draining,
            "version": record.version,
            "by": record.by,
            "moving": moving,
            "placed": [p.workload_id for p in self.placed_on(node)],
        }

    def drain_state(self, node: str) -> dict[str, Any]:
        """Whether ``node`` is drained, and what the view still places on it."""
        record = self.drains.table.get(node)
        return {
            "node": node,
            "draining": record is not None and record.draining,
            "version": None if record is None else record.version,
            "by": None if record is None else record.by,
            "placed": [p.workload_id for p in self.placed_on(node)],
        }

    def _forget_waiting(self, aid: str, fut: asyncio.Future[Placement]) -> None:
        self._waiting.pop(aid, None)
        # Nobody awaits it: a failed re-placement (no other node may run it) is said
        # here, or asyncio would complain that the exception was never retrieved.
        if not fut.cancelled() and fut.exception() is not None:
            logger.warning("re-placing a workload failed auction=%s: %s", aid, fut.exception())

    def remove(self, wid: str) -> dict[str, Any]:
        """``meshd workload rm``: tombstone it mesh-wide; its owner stops and destroys it."""
        try:
            tomb, effects = self.core.remove(wid, self.ctx.clock())
        except KeyError as exc:
            raise NotFoundError(f"no workload {wid} is placed in this mesh") from exc
        self._apply(effects)
        return {
            "removed": wid,
            "name": tomb.name,
            "owner": tomb.owner,
            "generation": tomb.generation,
        }

    def auctions(self) -> list[dict[str, Any]]:
        return [self._round_json(r) for r in self.core.rounds()]

    def auction(self, round_id: str) -> dict[str, Any] | None:
        for r in self.core.rounds():
            if round_id in (r.round_id, r.auction_id):
                doc = self._round_json(r)
                doc["bids"] = [
                    {"node": b.bidder, "score": b.score, "reason": b.reason} for b in r.bids
                ]
                return doc
        return None

    @staticmethod
    def _round_json(r: Any) -> dict[str, Any]:
        return {
            "round": r.round_id,
            "auction": r.auction_id,
            "workload": r.workload_id,
            "name": r.workload_name,
            "originator": r.originator,
            "winner": r.winner,
            "outcome": r.state,
            "reason": r.reason,
            "generation": r.generation,
            "started_at": r.started_at,
            "closed_at": r.closed_at,
            "candidates": list(r.candidates),
            "bids": len(r.bids),
        }

    def allocated(self) -> dict[str, float | int]:
        c = self.core.ledger().committed
        return {"cpus": c.cpus, "memory": c.memory, "disk": c.disk}

    # -- receiving ------------------------------------------------------------------

    def receive_reliable(self, body: bytes, cert_der: bytes) -> None:
        opened = self.mesh.open_reliable(body, cert_der, AUCTION_KIND, codec.decode, self.dropped)
        if opened is not None:
            self._receive(opened[0], opened[1].name)

    def _on_gossip(self, payload: bytes, origin: str) -> None:
        try:
            msg = codec.decode(payload)
        except EnvelopeError as exc:
            logger.debug("dropped gossiped placement from=%s error=%s", origin, exc)
            return
        if isinstance(msg, Confirm):
            self._receive(msg, origin)

    def _receive(self, msg: AuctionMsg, sender: str) -> None:
        self._receive_all([msg], sender)

    def _receive_all(self, msgs: list[AuctionMsg], sender: str) -> None:
        """Feed the core each message of a datagram; carry out their effects together.

        If the step's write fails, the core is rebuilt from the store (knowing now that
        it can't write) and fed the messages once more: what it can answer without a
        promise (a refusal, a negative bid) then leaves. If that step must write too,
        its messages are dropped, as if lost.
        """
        if self._broken is not None or (self.health.problem and self.journal.full):
            # Nothing more can be recorded, even later: receive nothing.
            self.dropped.inc(len(msgs), reason="store")
            return
        try:
            self._step(msgs, sender)
        except StoreError:
            if self._broken is None:
                try:
                    self._step(msgs, sender)
                except StoreError:
                    self.dropped.inc(len(msgs), reason="store")
        self._alarm.rearm()
        self._check_synced()

    @property
    def synced(self) -> bool:
        """Whether this node may trust its view of what it runs (see ``ViewSynced``)."""
        return self._synced

    def _check_synced(self) -> None:
        if not self._synced and self.core.synced_with is not None:
            self._synced = True
            logger.info("placement view matches member=%s", self.core.synced_with)
            self.ctx.bus.publish(ViewSynced(self.core.synced_with))

    def _step(self, msgs: list[AuctionMsg], sender: str) -> None:
        effects: list[Effect] = []
        try:
            for msg in msgs:
                effects += self.core.receive(msg, sender, self.ctx.clock())
        except InvariantBreach:
            # Two owners for one generation, or a commitment beyond capacity: stop
            # rather than risk running a workload twice (STYLE.md, "Errors").
            logger.critical("placement invariant broken; stopping meshd", exc_info=True)
            self.ctx.request_stop()
            raise
        self._apply(effects)

    # -- carrying out effects -------------------------------------------------------

    def _apply(self, effects: list[Effect]) -> None:
        if not effects:
            return
        records = [e.record for e in effects if isinstance(e, Persist)]
        if records:
            # Promises (allocations, rounds with awards) are on disk before any message
            # of this step leaves; holds, bids and the view follow within a moment
            # (meshd.shell.journal says why that is safe).
            try:
                self.journal.write(records, self.ctx.clock())
            except StoreError as exc:
                self._discard_step(exc)
                raise
            for r in records:
                if isinstance(r, PlacementRecorded):
                    self._view_changed(r.placement)
        encoded: dict[int, bytes] = {}  # one encoding per message, however many get it
        for e in effects:
            if isinstance(e, Send):
                if isinstance(e.msg, Sync):
                    self.repairs.inc(len(e.msg.placements))
                if e.reliable:
                    self._send_reliable(e.to, e.msg)
                elif e.to == self.ctx.ident.name:
                    self._local(e.msg)
                else:
                    body = encoded.get(id(e.msg))
                    if body is None:
                        body = encoded[id(e.msg)] = codec.encode(e.msg)
                    self.outbox.to(e.to, body)
            elif isinstance(e, Broadcast):
                self._broadcast(e.msg)
        for e in effects:
            if isinstance(e, Decided | Failed):
                fut = self._waiting.get(e.round_id)
                if fut is None or fut.done():
                    continue
                if isinstance(e, Decided):
                    self.decisions.inc(result="placed")
                    fut.set_result(e.placement)
                else:
                    self.decisions.inc(result="failed")
                    fut.set_exception(PlacementError(e.reason))
            elif isinstance(e, Start):
                w = e.allocation.workload
                logger.debug("workload assigned here name=%s id=%s", w.name, w.id)
                self.ctx.bus.publish(WorkloadAssigned(e.allocation))
            elif isinstance(e, Stop):
                logger.info("workload moved away id=%s reason=%s", e.workload_id, e.reason)
                self.ctx.bus.publish(WorkloadReleased(e.workload_id, e.generation, e.reason))

    def _discard_step(self, exc: StoreError) -> None:
        """A step's write failed: forget the step, as a crash before its write would.

        The core is rebuilt from the store and the journal's pending records (what a
        restart would read, plus knowledge not yet written), so it holds no promise the
        disk lacks; nothing of the step was sent. Auctions this node ran are abandoned
        by the rebuild: their clients hear why.
        """
        self.health.failed(exc)
        problem = self.health.problem or str(exc)
        try:
            durable = auction_records.load(self.ctx.store)
        except StoreError as read_exc:
            # Neither written nor readable: the core in memory may hold what the disk
            # lacks and can't be rebuilt. Refuse everything and stop (STYLE.md, "Errors").
            self._broken = str(read_exc)
            logger.critical("store can't be read back after a failed write; stopping meshd")
            self.ctx.request_stop()
            self._fail_waiting(problem)
            return
        for record in self.journal.pending():
            durable.apply(record)
        core = self._restore(durable)
        core.set_unwritable(_refusal(self.health.problem))
        if self._telemetry is not None:
            core.set_telemetry(self._telemetry)
        core.set_draining(self._draining)
        core.set_idle(self._idle)
        core.set_maintenance(self._maintenance())
        self.core = core
        self._view_changed(None)
        # What a restored core owes at once (its abandoned rounds, expired holds) is what
        # any later restore derives again from the store: it may wait for the disk.
        owed = core.tick(self.ctx.clock())
        self.journal.defer([e.record for e in owed if isinstance(e, Persist)])
        stray = [e for e in owed if not isinstance(e, Persist)]
        if stray:  # a restored core sends nothing at its first tick; if it did, drop it
            logger.error("a rebuilt auction core owed effects; dropped: %r", stray)
        self._fail_waiting(problem)
        logger.info("auction state rebuilt from the store after a failed write")

    def _fail_waiting(self, problem: str) -> None:
        why = (
            f"this node's store can't write, so it gave up the auction: {problem}; "
            "submit through another node, or fix the store and retry"
        )
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(StoreError(why))

    def _store_changed(self, problem: str | None) -> None:
        """The store stopped or resumed writing: refuse or take work again."""
        if self._broken is not None:
            return
        self.core.set_unwritable(_refusal(problem))
        if problem is None:
            self.journal.flush(self.ctx.clock())  # a StoreError here: unwritable again
            self._alarm.rearm()

    def _local(self, msg: AuctionMsg) -> None:
        # Messages to ourselves skip the network but not the loop: no re-entrancy.
        asyncio.get_running_loop().call_soon(self._receive, msg, self.ctx.ident.name)

    def _sign(self, body: bytes) -> bytes:
        return self.mesh.sign(AUCTION_KIND, body)

    def _send_signed(self, names: Iterable[str], signed: bytes) -> None:
        for name in names:
            self.mesh.send_datagram(Channel.AUCTION, name, signed)

    def _send_reliable(self, to: str, msg: AuctionMsg) -> None:
        if to == self.ctx.ident.name:
            self._local(msg)
            return
        self._spawn(self.mesh.post_to(to, "/v1/mesh/auction", codec.encode(msg)))

    def _broadcast(self, msg: Confirm) -> None:
        body = codec.encode(msg)
        if len(body) + codec.BUNDLE_OVERHEAD > codec.MAX_DATAGRAM:
            # The placement carries the spec: a large one (user-data) can't go as a
            # datagram, so each live member gets it over mTLS; gossip can't carry it
            # either, and digest anti-entropy backs both up.
            for name in self.mesh.live_peers():
                self._send_reliable(name, msg)
            return
        self.outbox.to_everyone(body)
        try:
            self.mesh.broadcast(PLACEMENT_BROADCAST, body, key=msg.placement.workload_id)
        except ValueError:
            logger.warning("placement too large to gossip; anti-entropy will carry it")


def _refusal(problem: str | None) -> str | None:
    """What the node answers a request or an award with while its store can't write."""
    return None if problem is None else f"this node's store can't write: {problem}"
