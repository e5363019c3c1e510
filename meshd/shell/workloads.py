"""Running what the mesh placed here: drivers under the auction's decisions.

The auction core says *what* runs here (``Start`` when a placement on this node is
confirmed, ``Stop`` when a newer generation moved it away); this runner makes it so
through the workload's driver, and tells the mesh how it went:

* states (``starting``, ``running``, ``stopped``, ``failed``) are recorded in the
  store, logged as events, and gossiped (``workload.state``) so every node's
  ``meshd workloads`` shows them; the owner re-announces its states periodically, so
  a node that restarted or missed one catches up;
* a workload's services (``--service NAME:PORT``) are published under this node's
  name while it runs and withdrawn when it stops; at its first NIC's address when it
  has NICs on mesh networks;
* a workload's NICs (taps on their networks' bridges, DHCP, metadata:
  :mod:`meshd.shell.guests`) are set up before its driver creates or starts it and torn
  down when it stops or is destroyed;
* on start-up every confirmed allocation is **reattached** (the driver finds the
  process or VM again by pid and start time) or, if it was never created, started;
  one that died while meshd was away is reported, not silently restarted. What a
  driver still has that no allocation names is **destroyed**: its release reached
  the store but meshd died before it stopped the workload (the Stop is persisted
  before the runner hears of it), so nothing else would ever stop it.

Driver calls run as tasks, one at a time per workload, so a slow boot never blocks
the loop or another workload. The drivers are built by a factory the node may replace
(the simulator gives every node the in-memory fake driver on a host that outlives
its meshd); by default, every driver this host offers (``make_drivers``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from meshd.adapters.drivers.base import Driver, OnChange, Status, WorkloadState
from meshd.adapters.drivers.registry import driver_for, make_drivers
from meshd.adapters.drivers.specfile import read_spec
from meshd.config import DriversConfig
from meshd.core import workload_states
from meshd.core.auction.model import NOTHING, Allocation, Resources, Workload
from meshd.core.spec import WorkloadSpec
from meshd.core.workload_states import StateBook, StateEntry
from meshd.errors import DriverError, MeshdError, PlacementError, StoreError
from meshd.shell.bus import (
    DrainingChanged,
    IdleChanged,
    QuorumChanged,
    ViewSynced,
    WorkloadAssigned,
    WorkloadGone,
    WorkloadReleased,
)
from meshd.shell.context import NodeContext
from meshd.shell.guests import GuestNetworks
from meshd.shell.ports import MeshPort

logger = logging.getLogger(__name__)
# (root, on_change, the drivers' config) -> every driver by name
DriverFactory = Callable[[Path, OnChange, DriversConfig], dict[str, Driver]]
STATE_BROADCAST = "workload.state"
WAITING_FOR_VIEW = (
    "not created yet: waiting for this node's view to match a member's, in case the "
    "mesh moved it while this node was off"
)
ANNOUNCE_PER_INTERVAL = 32  # owned states re-announced per auction.sync_interval_s
# A destroy that failed (a process outlived SIGKILL) is retried, backing off to this.
REMOVE_RETRY_FIRST_S = 1.0
REMOVE_RETRY_MAX_S = 30.0


class WorkloadRunner:
    def __init__(
        self, ctx: NodeContext, mesh: MeshPort, drivers: DriverFactory = make_drivers
    ) -> None:
        self.ctx = ctx
        self.mesh = mesh
        self.drivers: dict[str, Driver] = drivers(
            ctx.cfg.data_dir / "workloads", self._changed, ctx.cfg.drivers
        )
        # What the placement shell assigned here and has not released (its events).
        self._allocs: dict[str, Allocation] = {}
        # What each allocation here doesn't use now (stopped or failed), as last said.
        self._idle: dict[str, Resources] = {}
        # Whether a stopped workload may run again here (the placement shell answers:
        # what it lent while stopped must still be free); None: always.
        self.resume_check: Callable[[str], str | None] | None = None
        # Mesh-wide view of states (the pure core; this runner feeds it and gossips).
        self.states = StateBook(ctx.ident.name, ANNOUNCE_PER_INTERVAL)
        self._locks: dict[str, asyncio.Lock] = {}
        self._services: dict[str, list[str]] = {}
        # Which driver runs each workload here: Stop arrives after the allocation is
        # released, so the runner must remember it itself.
        self._driver_names: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Released here, not yet destroyed: their resources stay counted meanwhile.
        self._draining: dict[str, Resources] = {}
        # Allocations to create once the view has matched a member's (see _recover).
        self._cold: list[Allocation] = []
        self._synced = True
        self._self_fenced: dict[str, int] = {}  # workload -> generation it stopped
        # NICs on mesh networks; the node gives it the networks and its own addresses.
        self.guests = GuestNetworks(
            ctx.cfg.guests,
            ctx.cfg.data_dir / "guests",
            ctx.ident.name,
            ctx.ident.domain,
            ctx.ident.key.sign,
            None,
        )

    def start(
        self, allocations: Mapping[str, Allocation], complete: bool = True, synced: bool = True
    ) -> None:
        """Reattach or start every confirmed allocation, then follow the placement's events.

        With ``complete`` (every stored allocation was read back), a workload a driver
        holds that no allocation names was released while meshd was down: it is
        destroyed. Without it, nothing is destroyed for want of an allocation.
        """
        self.mesh.on_broadcast(STATE_BROADCAST, self._on_gossip)
        self.ctx.bus.subscribe(WorkloadAssigned, self._on_assigned)
        self.ctx.bus.subscribe(WorkloadReleased, self._on_released)
        self.ctx.bus.subscribe(ViewSynced, self._on_synced)
        self.ctx.bus.subscribe(QuorumChanged, self._on_quorum)
        self._synced = synced
        for alloc in allocations.values():
            if alloc.confirmed:
                self._allocs[alloc.workload.id] = alloc
                self._spawn(self._recover(alloc))
        if complete:
            self._spawn(self._reap(frozenset(allocations)))
        else:
            logger.error(
                "some auction records could not be read; workloads without an allocation "
                "are left running (see the errors above; `meshd workload rm` removes one)"
            )
        self._spawn(self._announce_periodically())
        self._spawn(self.guests.start())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        try:
            await self.guests.stop()  # dnsmasq and metadata stop; taps stay with guests
        except Exception:  # shutting down: say it, go on
            logger.exception("stopping the guests' networking failed")
        for driver in self.drivers.values():
            try:
                await driver.close()  # let go; the workloads outlive the daemon
            except Exception:  # one driver's trouble must not keep the daemon up
                logger.exception("closing the %s driver failed", driver.name)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lock(self, wid: str) -> asyncio.Lock:
        return self._locks.setdefault(wid, asyncio.Lock())

    # -- what the auction asks -------------------------------------------------------

    def _on_assigned(self, event: WorkloadAssigned) -> None:
        self._allocs[event.allocation.workload.id] = event.allocation
        self._spawn(self._run(event.allocation))

    def _on_synced(self, event: ViewSynced) -> None:
        self._synced = True
        cold, self._cold = self._cold, []
        for alloc in cold:
            held = self._allocs.get(alloc.workload.id)
            if held is not None and held.generation == alloc.generation:
                self._spawn(self._run(alloc))  # still ours: nobody ran it meanwhile

    def _on_quorum(self, event: QuorumChanged) -> None:
        if event.cut_off:
            for wid, alloc in sorted(self._allocs.items()):
                if wid not in self._self_fenced:
                    self._self_fenced[wid] = alloc.generation
                    self._spawn(self._self_fence(wid, alloc, event.reason))
            return
        stopped, self._self_fenced = self._self_fenced, {}
        for wid, generation in sorted(stopped.items()):
            held = self._allocs.get(wid)
            if held is not None and held.generation == generation:
                self._spawn(self._resume(wid))

    async def _self_fence(self, wid: str, alloc: Allocation, reason: str) -> None:
        try:
            driver = driver_for(self.drivers, alloc.workload.driver)
            timeout_s = self.ctx.cfg.drivers.stop_timeout_max_s
            await self._stop_locked(wid, driver, timeout_s, alloc.generation)
        except DriverError as exc:
            logger.error("self-fence could not stop workload id=%s: %s", wid, exc)
            return
        self._set(wid, alloc.generation, WorkloadState.STOPPED, f"self-fenced: {reason}")
        self.ctx.store.append_event(self.ctx.clock(), "workload.self-fenced", wid, {"why": reason})

    async def _resume(self, wid: str) -> None:
        try:
            await self.start_workload(wid)
        except MeshdError as exc:
            logger.error("starting workload id=%s after self-fence failed: %s", wid, exc)

    def _on_released(self, event: WorkloadReleased) -> None:
        if self._idle.pop(event.workload_id, None) is not None:
            self.ctx.bus.publish(IdleChanged(event.workload_id, None))
        alloc = self._allocs.pop(event.workload_id, None)
        if alloc is not None:
            self._driver_names.setdefault(event.workload_id, alloc.workload.driver)
            self._drain(event.workload_id, alloc.resources)
        self._spawn(self._remove(event.workload_id, event.generation, event.reason))

    def _drain(self, wid: str, r: Resources | None) -> None:
        """Count ``r`` as still in use by ``wid`` (None: it is gone) and say the total."""
        if r is None:
            if self._draining.pop(wid, None) is None:
                return
        else:
            self._draining[wid] = r
        total = NOTHING
        for used in self._draining.values():
            total = total + used
        self.ctx.bus.publish(DrainingChanged(total))

    def draining(self) -> dict[str, Resources]:
        """Workloads released here whose processes are not verifiably gone yet."""
        return dict(self._draining)

    async def _run(self, alloc: Allocation) -> None:
        w = alloc.workload
        self._driver_names[w.id] = w.driver
        async with self._lock(w.id):
            self._set(w.id, alloc.generation, WorkloadState.STARTING, f"{w.driver} driver")
            try:
                driver = driver_for(self.drivers, w.driver)
                await self.guests.attach(w.id, w.spec)
                await driver.create(w.id, self.guests.with_network_config(w.id, w.spec))
                status = await driver.start(w.id)
            except DriverError as exc:
                self._set(w.id, alloc.generation, WorkloadState.FAILED, str(exc))
                if (error := await self._cleanup(w.driver, w.id)) is not None:
                    self._set(w.id, alloc.generation, WorkloadState.FAILED, f"{exc}; {error}")
                return
            self._apply_status(w.id, status)

    async def _recover(self, alloc: Allocation) -> None:
        w = alloc.workload
        self._driver_names[w.id] = w.driver
        try:
            driver = driver_for(self.drivers, w.driver)
        except DriverError as exc:
            self._set(w.id, alloc.generation, WorkloadState.FAILED, str(exc))
            return
        if w.id not in await driver.list():
            # Accepted but never created (meshd stopped first), or gone with the power
            # (this blade was fenced, or lost power). Create it only once the view has
            # matched a member's: if the mesh ran it elsewhere meanwhile, the newer
            # generation releases it here first, and nothing runs twice.
            if not self._synced:
                self._cold.append(alloc)
                self._set(w.id, alloc.generation, WorkloadState.PENDING, WAITING_FOR_VIEW)
                return
            await self._run(alloc)
            return
        async with self._lock(w.id):
            try:
                # Existing taps are left as they are: the running guest holds them.
                await self.guests.attach(w.id, w.spec)
                status = await driver.reattach(w.id)
            except DriverError as exc:  # an unreadable spec.json, a vanished directory
                status = Status(WorkloadState.FAILED, detail=f"can't reattach: {exc}")
        if status.state is not WorkloadState.RUNNING and not status.detail:
            status = Status(status.state, detail="it exited while meshd was away")
        self._apply_status(w.id, status, generation=alloc.generation)

    async def _reap(self, allocated: frozenset[str]) -> None:
        """Destroy the workloads drivers hold that no allocation here names."""
        for driver in list(self.drivers.values()):
            try:
                held = await driver.list()
            except DriverError as exc:
                logger.error("listing the %s driver's workloads failed: %s", driver.name, exc)
                continue
            for wid in held:
                if wid in allocated or wid in self._allocs:
                    continue  # ours (or assigned here since start-up)
                logger.warning(
                    "workload without an allocation here id=%s driver=%s; destroying it",
                    wid,
                    driver.name,
                )
                self._driver_names.setdefault(wid, driver.name)
                self._drain(wid, _resources_of(driver, wid))
                await self._remove(wid, 0, "released while meshd was down")

    async def _driver_holding(self, wid: str) -> str | None:
        """Which driver has ``wid``: remembered, else asked (the allocation may be gone)."""
        name = self._driver_names.get(wid) or self._local_driver(wid)
        if name is not None:
            return name
        for driver in self.drivers.values():
            if wid in await driver.list():
                return driver.name
        return None

    async def _remove(self, wid: str, generation: int, reason: str) -> None:
        """Destroy ``wid`` here; until its driver says every process is gone, keep trying
        (and keep showing it ``failed``): a removal never leaves a process uncounted."""
        driver_name = await self._driver_holding(wid)
        delay = REMOVE_RETRY_FIRST_S
        while True:
            async with self._lock(wid):
                error = None if driver_name is None else await self._cleanup(driver_name, wid)
                if error is None:
                    self._withdraw_services(wid)
                    break
                self._set(wid, generation, WorkloadState.FAILED, f"removal failed: {error}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, REMOVE_RETRY_MAX_S)
        logger.info("workload removed here id=%s reason=%s", wid, reason)
        self._drain(wid, None)
        self._driver_names.pop(wid, None)
        self.states.forget(wid)
        if wid not in self._allocs:  # not assigned here again meanwhile
            self.ctx.bus.publish(WorkloadGone(wid))

    def holds(self, wid: str) -> bool:
        """Whether anything of ``wid`` may run here: assigned, or not yet destroyed."""
        return wid in self._allocs or wid in self._driver_names

    async def _cleanup(self, driver_name: str, wid: str) -> str | None:
        """Destroy ``wid``; None once it is gone, else the sentence saying why not."""
        try:
            driver = driver_for(self.drivers, driver_name)
            spec = _spec_of(driver, wid)
            await driver.destroy(wid)
            await self.guests.detach(wid, spec)
        except DriverError as exc:
            logger.error("cleaning up a workload failed id=%s error=%s", wid, exc)
            return str(exc)
        return None

    # -- operator actions (on the owner) ---------------------------------------------

    def _local_driver(self, wid: str) -> str | None:
        alloc = self._allocation(wid)
        return None if alloc is None else alloc.workload.driver

    def _allocation(self, wid: str) -> Allocation | None:
        return self._allocs.get(wid)

    def _owned(self, wid: str) -> tuple[Allocation, Driver]:
        alloc = self._allocation(wid)
        if alloc is None:
            raise MeshdError(f"workload {wid} does not run on {self.ctx.ident.name}")
        return alloc, driver_for(self.drivers, alloc.workload.driver)

    async def stop_workload(self, wid: str, timeout_s: float) -> dict[str, Any]:
        """Stop ``wid`` gracefully within ``timeout_s`` (at most the configured maximum),
        then by force. The stop runs as its own task: a caller that gives up (the API's
        request timeout) does not cut it short between SIGTERM and the SIGKILL."""
        alloc, driver = self._owned(wid)
        timeout_s = min(max(timeout_s, 0.0), self.ctx.cfg.drivers.stop_timeout_max_s)
        task = asyncio.get_running_loop().create_task(
            self._stop_locked(wid, driver, timeout_s, alloc.generation)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    async def _stop_locked(
        self, wid: str, driver: Driver, timeout_s: float, generation: int
    ) -> dict[str, Any]:
        async with self._lock(wid):
            status = await driver.stop(wid, timeout_s)
            if status.state is not WorkloadState.RUNNING:
                await self.guests.detach(wid)
        self._withdraw_services(wid)
        self._apply_status(wid, status, generation=generation)
        return self._state_json(wid)

    async def start_workload(self, wid: str) -> dict[str, Any]:
        alloc, driver = self._owned(wid)
        async with self._lock(wid):
            why = self.resume_check(wid) if self.resume_check is not None else None
            if why is not None:
                raise PlacementError(f"workload {wid} can't start on {self.ctx.ident.name}: {why}")
            self._set(wid, alloc.generation, WorkloadState.STARTING, "restarting")
            try:
                await self.guests.attach(wid, alloc.workload.spec)
                status = await driver.start(wid)
            except DriverError as exc:
                status = Status(WorkloadState.FAILED, detail=str(exc))
        self._apply_status(wid, status, generation=alloc.generation)
        return self._state_json(wid)

    def log_path(self, wid: str) -> str:
        _, driver = self._owned(wid)
        return str(driver.log_path(wid))

    # -- states ----------------------------------------------------------------------

    def _changed(self, wid: str, status: Status) -> None:
        """A driver's asynchronous report (the guest powered off, the process exited)."""
        self._apply_status(wid, status)

    def _apply_status(self, wid: str, status: Status, generation: int | None = None) -> None:
        alloc = self._allocation(wid)
        gen = generation if generation is not None else (alloc.generation if alloc else 0)
        self._set(wid, gen, status.state, status.detail, dict(status.extra))
        if status.state is WorkloadState.RUNNING and alloc is not None:
            self._spawn(self._publish_services(alloc))
        elif status.state in (WorkloadState.STOPPED, WorkloadState.FAILED):
            self._withdraw_services(wid)

    def _set(
        self,
        wid: str,
        generation: int,
        state: WorkloadState,
        detail: str,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        entry, changed = self.states.set(
            wid, generation, str(state), detail, self.ctx.clock(), extra
        )
        self._lend(wid, state)
        if changed:
            logger.info("workload %s id=%s detail=%s", state, wid, detail)
            try:
                # History, not a promise (the state is re-announced and gossiped): the
                # event need not wait for an fsync of its own, which cost a busy winner
                # two per placement.
                with self.ctx.store.transaction(durable=False):
                    self.ctx.store.append_event(entry.at, f"workload.{state}", wid, entry.as_json())
            except StoreError as exc:
                # The event log is history, not a promise: the state is what the driver
                # reported, true whether or not the log has room, so it is still told.
                logger.warning("recording a workload event failed id=%s: %s", wid, exc)
        self._announce(entry)

    def _lend(self, wid: str, state: WorkloadState) -> None:
        """Say what ``wid`` doesn't use in ``state``: a stopped workload keeps its disk
        and lends its CPU and memory; a failed one lends everything."""
        alloc = self._allocs.get(wid)
        r = alloc.resources if alloc is not None else None
        if r is not None and state is WorkloadState.STOPPED:
            lent: Resources | None = Resources(r.cpus, r.memory, 0)
        elif r is not None and state is WorkloadState.FAILED:
            lent = r
        else:
            lent = None
        if self._idle.get(wid) == lent:
            return
        if lent is None:
            self._idle.pop(wid, None)
        else:
            self._idle[wid] = lent
        self.ctx.bus.publish(IdleChanged(wid, lent))

    def _state_json(self, wid: str) -> dict[str, Any]:
        entry = self.states.get(wid)
        return {} if entry is None else entry.as_json()

    def _announce(self, entry: StateEntry) -> None:
        try:
            body = workload_states.encode(entry)
            # Keyed: a newer state replaces an older one still queued for gossip.
            self.mesh.broadcast(STATE_BROADCAST, body, key=entry.workload_id)
        except ValueError:
            logger.warning("workload state too large to gossip id=%s", entry.workload_id)

    async def _announce_periodically(self) -> None:
        """Anti-entropy for states: each interval, re-announce a few of ours in turn."""
        while True:
            await asyncio.sleep(self.ctx.cfg.auction.sync_interval_s)
            for entry in self.states.due():
                self._announce(entry)

    def _on_gossip(self, payload: bytes, origin: str) -> None:
        try:
            self.states.receive(workload_states.decode(payload, origin))
        except ValueError as exc:
            logger.debug("dropped a workload state from %s: %s", origin, exc)

    def state_of(self, wid: str, generation: int) -> tuple[str, str]:
        return self.states.state_of(wid, generation)

    # -- services ----------------------------------------------------------------------

    async def _publish_services(self, alloc: Allocation) -> None:
        published = []
        guest = self.guests.guest_address(alloc.workload.id)
        host = None if guest is None else str(guest)
        for svc in alloc.workload.spec.services:
            try:
                await self.mesh.add_service(svc.name, svc.port, svc.proto, host)
                published.append(svc.name)
            except MeshdError as exc:
                logger.warning("can't publish a service of %s: %s", alloc.workload.name, exc)
        if published:
            self._services[alloc.workload.id] = published

    def _withdraw_services(self, wid: str) -> None:
        for name in self._services.pop(wid, []):
            self._spawn(self._withdraw(name))

    async def _withdraw(self, name: str) -> None:
        try:
            await self.mesh.remove_service(name)
        except MeshdError as exc:
            logger.debug("withdrawing service %s: %s", name, exc)


def _spec_of(driver: Driver, wid: str) -> WorkloadSpec | None:
    """The spec a driver keeps for ``wid`` (its NICs are torn down with it); None if
    unreadable (its taps, if any, are named from the id and found anyway by the shell
    that attached them)."""
    try:
        return read_spec(driver.dir_of(wid))
    except (DriverError, OSError, ValueError):
        return None


def _resources_of(driver: Driver, wid: str) -> Resources:
    """What a workload found without an allocation uses, from its ``spec.json``."""
    try:
        s = read_spec(driver.dir_of(wid))
    except (DriverError, OSError, ValueError):
        return NOTHING  # unreadable: nothing to count (its destroy still runs)
    return Workload(wid, s).resources  # the one place a spec becomes resources
