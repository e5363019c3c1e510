"""Running what the mesh placed here: drivers under the auction's decisions.

The auction core says *what* runs here (``Start`` when a placement on this node is
confirmed, ``Stop`` when a newer generation moved it away); this runner makes it so
through the workload's driver, and tells the mesh how it went:

* states (``starting``, ``running``, ``stopped``, ``failed``) are recorded in the
  store, logged as events, and gossiped (``workload.state``) so every node's
  ``meshd workloads`` shows them; the owner re-announces its states periodically, so
  a node that restarted or missed one catches up;
* a workload's services (``--service NAME:PORT``) are published under this node's
  name while it runs and withdrawn when it stops;
* on start-up every confirmed allocation is **reattached** (the driver finds the
  process or VM again by pid and start time) or, if it was never created, started;
  one that died while meshd was away is reported, not silently restarted.

Driver calls run as tasks, one at a time per workload, so a slow boot never blocks
the loop or another workload.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from meshd.auction.model import Allocation, Workload
from meshd.drivers.base import Driver, Status, WorkloadSpec, WorkloadState
from meshd.drivers.registry import driver_for, make_drivers
from meshd.errors import DriverError, MeshdError

if TYPE_CHECKING:
    from meshd.mesh import Mesh
    from meshd.node import Node

logger = logging.getLogger(__name__)
STATE_BROADCAST = "workload.state"
ANNOUNCE_PER_INTERVAL = 32  # owned states re-announced per auction_sync_interval_s
_SPEC_KEYS = (
    "command",
    "image",
    "kernel",
    "initrd",
    "cmdline",
    "user_data",
    "meta_data",
    "network_config",
    "ready_marker",
    "boot_timeout_s",
)


def to_spec(w: Workload) -> WorkloadSpec:
    """The driver's view of a placed workload."""
    s = w.spec
    extra: dict[str, Any] = {k: getattr(s, k) for k in _SPEC_KEYS if getattr(s, k) is not None}
    return WorkloadSpec(
        id=w.id,
        name=s.name,
        driver=s.driver,
        cpus=s.cpus,
        memory=s.memory,
        disk=s.disk,
        env=dict(s.env),
        **extra,
    )


class WorkloadRunner:
    def __init__(self, node: Node, mesh: Mesh) -> None:
        self.node = node
        self.mesh = mesh
        self.drivers: dict[str, Driver] = make_drivers(
            node.cfg.data_dir / "workloads", self._changed
        )
        # Mesh-wide view of states: workload id -> {generation, state, detail, node}.
        self.states: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._services: dict[str, list[str]] = {}
        # Which driver runs each workload here: Stop arrives after the allocation is
        # released, so the runner must remember it itself.
        self._driver_names: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, allocations: Mapping[str, Allocation]) -> None:
        self.mesh.on_broadcast(STATE_BROADCAST, self._on_gossip)
        for alloc in allocations.values():
            if alloc.confirmed:
                self._spawn(self._recover(alloc))
        self._spawn(self._announce_periodically())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
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

    def on_start(self, alloc: Allocation) -> None:
        self._spawn(self._run(alloc))

    def on_stop(self, wid: str, generation: int, reason: str) -> None:
        self._spawn(self._remove(wid, generation, reason))

    async def _run(self, alloc: Allocation) -> None:
        w = alloc.workload
        self._driver_names[w.id] = w.driver
        async with self._lock(w.id):
            self._set(w.id, alloc.generation, WorkloadState.STARTING, f"{w.driver} driver")
            try:
                driver = driver_for(self.drivers, w.driver)
                await driver.create(to_spec(w))
                status = await driver.start(w.id)
            except DriverError as exc:
                self._set(w.id, alloc.generation, WorkloadState.FAILED, str(exc))
                await self._cleanup(w.driver, w.id)
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
            await self._run(alloc)  # accepted but never created (meshd stopped first)
            return
        async with self._lock(w.id):
            status = await driver.reattach(w.id)
        if status.state is not WorkloadState.RUNNING and not status.detail:
            status = Status(status.state, detail="it exited while meshd was away")
        self._apply_status(w.id, status, generation=alloc.generation)

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
        entry = self.states.get(wid, {})
        driver_name = await self._driver_holding(wid)
        async with self._lock(wid):
            if driver_name is not None:
                await self._cleanup(driver_name, wid)
            self._withdraw_services(wid)
        logger.info("workload removed here id=%s reason=%s", wid, reason)
        self._driver_names.pop(wid, None)
        if entry.get("node") == self.node.ident.name:
            self.states.pop(wid, None)

    async def _cleanup(self, driver_name: str, wid: str) -> None:
        try:
            await driver_for(self.drivers, driver_name).destroy(wid)
        except DriverError as exc:
            logger.error("cleaning up a workload failed id=%s error=%s", wid, exc)

    # -- operator actions (on the owner) ---------------------------------------------

    def _local_driver(self, wid: str) -> str | None:
        alloc = self._allocation(wid)
        return None if alloc is None else alloc.workload.driver

    def _allocation(self, wid: str) -> Allocation | None:
        placement = self.node.placement
        if placement is None:
            return None
        return placement.core.allocation(wid)

    def _owned(self, wid: str) -> tuple[Allocation, Driver]:
        alloc = self._allocation(wid)
        if alloc is None:
            raise MeshdError(f"workload {wid} does not run on {self.node.ident.name}")
        return alloc, driver_for(self.drivers, alloc.workload.driver)

    async def stop_workload(self, wid: str, timeout_s: float) -> dict[str, Any]:
        alloc, driver = self._owned(wid)
        async with self._lock(wid):
            status = await driver.stop(wid, timeout_s)
        self._withdraw_services(wid)
        self._apply_status(wid, status, generation=alloc.generation)
        return self.states[wid]

    async def start_workload(self, wid: str) -> dict[str, Any]:
        alloc, driver = self._owned(wid)
        async with self._lock(wid):
            self._set(wid, alloc.generation, WorkloadState.STARTING, "restarting")
            try:
                status = await driver.start(wid)
            except DriverError as exc:
                status = Status(WorkloadState.FAILED, detail=str(exc))
        self._apply_status(wid, status, generation=alloc.generation)
        return self.states[wid]

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
        entry = {
            "generation": generation,
            "state": str(state),
            "detail": detail,
            "node": self.node.ident.name,
            "at": time.time(),
            **({"extra": dict(extra)} if extra else {}),
        }
        previous = self.states.get(wid, {}).get("state")
        self.states[wid] = entry
        if previous != entry["state"]:
            logger.info("workload %s id=%s detail=%s", state, wid, detail)
            self.node.store.append_event(time.time(), f"workload.{state}", wid, entry)
        self._announce(wid)

    def _announce(self, wid: str) -> None:
        entry = self.states[wid]
        doc = {
            "w": wid,
            "g": entry["generation"],
            "s": entry["state"],
            "t": entry["at"],  # the owner's clock: gossip may reorder, the newest wins
            "d": entry["detail"][:200],
        }
        try:
            body = json.dumps(doc, separators=(",", ":")).encode()
            self.mesh.broadcast(STATE_BROADCAST, body, key=wid)  # the newest replaces older
        except ValueError:
            logger.warning("workload state too large to gossip id=%s", wid)

    async def _announce_periodically(self) -> None:
        """Anti-entropy for states: each interval, re-announce a few of ours in turn.

        At most ANNOUNCE_PER_INTERVAL per interval, so a node running hundreds of
        workloads does not flood the gossip queue every interval; each state still
        goes out again every ceil(owned / ANNOUNCE_PER_INTERVAL) intervals.
        """
        turn = 0
        while True:
            await asyncio.sleep(self.node.cfg.auction_sync_interval_s)
            me = self.node.ident.name
            ours = sorted(wid for wid, e in self.states.items() if e.get("node") == me)
            if not ours:
                continue
            start = (turn * ANNOUNCE_PER_INTERVAL) % len(ours)
            for wid in (ours[start:] + ours[:start])[:ANNOUNCE_PER_INTERVAL]:
                self._announce(wid)
            turn += 1

    def _on_gossip(self, payload: bytes, origin: str) -> None:
        try:
            doc = json.loads(payload)
            wid, gen, state = str(doc["w"]), int(doc["g"]), WorkloadState(doc["s"])
            at, detail = float(doc["t"]), str(doc.get("d", ""))
        except (ValueError, KeyError, TypeError) as exc:
            logger.debug("dropped a workload state from %s: %s", origin, exc)
            return
        current = self.states.get(wid)
        if current is not None and (current["generation"], current["at"]) >= (gen, at):
            return  # older news (an earlier generation, or overtaken on the way)
        self.states[wid] = {
            "generation": gen,
            "state": str(state),
            "detail": detail,
            "node": origin,
            "at": at,
        }

    def state_of(self, wid: str, generation: int) -> tuple[str, str]:
        entry = self.states.get(wid)
        if entry is None or entry["generation"] < generation:
            return str(WorkloadState.PENDING), ""
        return entry["state"], entry["detail"]

    # -- services ----------------------------------------------------------------------

    async def _publish_services(self, alloc: Allocation) -> None:
        published = []
        for svc in alloc.workload.spec.services:
            try:
                await self.mesh.add_service(svc.name, svc.port, svc.proto)
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
