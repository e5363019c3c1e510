"""The simulator of the real shells: PlacementShell and WorkloadRunner on fake ports.

Theory of operation
-------------------
:mod:`.auction` runs the pure auction core and *models* its shell. This module runs
the shell itself — :class:`meshd.shell.placement.PlacementShell` with its journal, outbox,
alarm, anti-entropy and pruning loops, and :class:`meshd.shell.workloads.WorkloadRunner`
with its state gossip — started by :func:`meshd.shell.node.start_shells` exactly as the
daemon starts them, as pve-ha-manager runs its manager on a simulated environment.
Only the ports are fake:

* **time**: every node shares one :class:`~tests.sim.loop.VirtualLoop` (asyncio in
  virtual time); ``ctx.clock`` is that time plus :data:`EPOCH`. Each node's generators
  (``ctx.new_random``) are seeded from the run's seed, the node and its boot.
* **mesh**: :class:`FakeMesh` implements :class:`meshd.shell.ports.MeshPort`. Datagrams,
  gossip and reliable posts go through :class:`~tests.sim.network.Network` (seeded
  loss, delay, duplication, partitions and one-way cuts; posts are never lost but are
  blocked by partitions); each arrives as a loop timer and is handed to the
  destination's current process. Nothing is signed or sealed (the envelope has its
  own tests): the network knows who sent what, so the sender is authenticated by
  construction, and a post carries a stand-in certificate naming its sender, which
  ``open_reliable`` reads back. Membership is an oracle (the nodes that are up) or
  *lagged*: each node's own view follows that truth a detection delay later (a dead
  or cut-off member is dropped 1-4 s later, a returning one added 0.05-2 s later), so
  auctions ask dead members and anti-entropy picks them, as with SWIM.
* **store**: a real :class:`meshd.adapters.store.db.Store` (SQLite) per node in a temporary
  directory, so the journal's fsynced promises and lagging knowledge are real writes.
* **drivers**: one :class:`meshd.adapters.drivers.fake.FakeDriver` per boot over a
  :class:`~meshd.adapters.drivers.fake.FakeHost` per node, which outlives meshd's crashes
  (workloads keep running while meshd is away, as with the process driver).

**Crashes.** A node's meshd is a :class:`~tests.sim.loop.Process`: a crash kills it
(none of its callbacks, timers or tasks runs again, no ``stop()``), closes its store
connection and drops its shells; what the journal had not written is lost, exactly.
A restart opens the same store and starts new shells from it, as ``meshd run`` does.
Crashes come when the schedule says, or when a trigger fires: right after a node
handled its k-th message (``mid``: that step's records are written, its messages
not yet sent; ``after``: sent too), right after its placement told the runner to
start or stop a workload (before the runner acted), or the moment its k-th durable
commit is on disk (:class:`SimStore`; the rest of that step runs in memory only and
sends nothing, and any further write would fail the run).

**Disk faults.** With ``store_faults``, every store is opened through the fault VFS
(``tests/faults/store.py``): a node's disk can fill up (every write fails with
``SQLITE_FULL``, or an I/O error, or read-only) and free up again, or one chosen write
can fail. The node's meshd keeps running; it must refuse work while it can't write,
promise nothing its disk lacks, and resume by itself.

**Checks.** After every message a node handles, and every 50 ms for every live node,
:func:`~tests.sim.auction.ledger_problems` checks its ledger (never beyond capacity,
running totals right, no hold kept past its expiry) and every owner it records or
believes in is noted: one owner per (workload, generation), ever. Once the schedule
is over (healed, every node up, settled), :meth:`ShellSim.final_problems` adds
:func:`~tests.sim.auction.mesh_problems` over the live cores and what their *stores*
hold (views agree, allocations match the view and are confirmed, no hold left, store
equals memory, nothing reported placed or started is lost) and the shell-level
invariants: one allocation per (workload, generation) across all stores; every
placement a ``submit()`` reported is in every view and its owner holds it on disk;
each owner's fake host runs its workloads and no other host does; every node's
gossiped state of every workload is the owner's ``running`` at the view's generation.
Any exception a callback lets escape fails the run, and so does a shell asking its
node to stop (a broken invariant).

Determinism: one seed drives the network, the schedule and every node's generators;
the loop orders simultaneous timers the same way every time; no set of strings is
iterated (the fake membership answers sorted lists). The same seed replays the same
run exactly; the seed is in every failure message (:meth:`ShellSim.describe`,
``MESHD_SIM_SEED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import itertools
import random
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd import config
from meshd.adapters.drivers.base import Driver, OnChange, WorkloadState
from meshd.adapters.drivers.fake import FakeDriver, FakeHost
from meshd.adapters.store import auction_records, roster
from meshd.adapters.store.db import Store
from meshd.adapters.transport import Channel
from meshd.config import Config, DriversConfig
from meshd.core import network as network_core
from meshd.core.auction.model import InvariantBreach
from meshd.core.bmc import BmcEndpoint, FenceOutcome, PowerReading
from meshd.core.membership import codec as membership_codec
from meshd.core.membership.messages import UserMsg
from meshd.core.spec import SubmitRequest
from meshd.errors import EnvelopeError, MeshdError, NotFoundError, StoreError
from meshd.identity import bmc as bmc_files
from meshd.identity import pki
from meshd.identity.files import NodeIdentity
from meshd.identity.revocation import RevocationList
from meshd.metrics import Counter, Registry
from meshd.shell.bus import Bus, MemberStateChanged, WorkloadAssigned, WorkloadReleased
from meshd.shell.context import NodeContext
from meshd.shell.drains import DRAINS_PATH
from meshd.shell.fencing import BMC_PATH, FENCE_PATH, FencingShell
from meshd.shell.networks import NETWORKS_PATH
from meshd.shell.node import start_fencing, start_shells
from meshd.shell.placement import PlacementShell
from meshd.shell.ports import BroadcastHandler
from meshd.shell.workloads import WorkloadRunner
from tests.faults import store as store_faults
from tests.sim.auction import ledger_problems, mesh_problems
from tests.sim.bmc import FakeBmc, FakeSystem
from tests.sim.harness import ENV_SEED
from tests.sim.loop import Process, VirtualLoop
from tests.sim.loop import current as loop_process
from tests.sim.network import LinkModel, Network

T = TypeVar("T")
EPOCH = 1_800_000_000.0  # ctx.clock() = EPOCH + virtual time (2027-01-15)
DOMAIN = "sim.meshd.test"
AUCTION_PATH = "/v1/mesh/auction"  # the API route that feeds PlacementShell.receive_reliable
FAKE_CERT = b"sim-cert:"  # + the sender's name: the stand-in for its TLS client certificate
CHECK_EVERY = 0.05  # seconds between the periodic checks of every live node


# -- identities (the shells only read the name; built once per test process) ------------


@functools.cache
def _authority() -> tuple[Ed25519PrivateKey, x509.Certificate]:
    return pki.create_ca(DOMAIN, EPOCH, 3650)


@functools.cache
def identity(name: str) -> NodeIdentity:
    ca_key, ca_cert = _authority()
    key = pki.new_key()
    cert = pki.issue(ca_key, ca_cert, key.public_key(), name, "node", EPOCH, 825)
    info = pki.verify(cert, ca_cert, EPOCH)
    return NodeIdentity(key, cert, ca_cert, bytes(32), None, info)


# -- the store: real SQLite, with a hook on commits --------------------------------------


class SimStore(Store):
    """A real store that tells the simulator of each commit (to crash right after one)
    and refuses writes from a killed process (none should be possible)."""

    committed: Callable[[bool], None] | None = None  # called with ``durable``

    @contextlib.contextmanager
    def transaction(self, durable: bool = True) -> Iterator[Store]:
        _check_alive()
        with super().transaction(durable) as store:
            yield store
        if self.committed is not None:
            self.committed(durable)

    def execute(self, sql: str, params: Any = ()) -> None:
        _check_alive()
        super().execute(sql, params)


def _faults_vfs() -> store_faults.StoreFaults:
    return store_faults.install()


def _check_alive() -> None:
    proc = loop_process()
    if proc is not None and not proc.alive:
        raise AssertionError(f"{proc.name} wrote to its store after it was killed")


# -- what travels on the simulated network ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Datagram:
    channel: Channel
    payload: bytes


@dataclass(frozen=True, slots=True)
class Post:
    path: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Gossip:
    kind: str
    payload: bytes
    origin: str


Packet = Datagram | Post | Gossip


@dataclass(frozen=True, slots=True)
class SimAuthor:
    """The sender of a post, as the TLS client certificate would name it."""

    name: str


# -- the fake mesh port ------------------------------------------------------------------


class FakeMesh:
    """One boot's :class:`meshd.shell.ports.MeshPort` on the simulated network."""

    def __init__(self, sim: ShellSim, name: str, proc: Process) -> None:
        self.sim, self.me, self.proc = sim, name, proc
        self.datagrams: dict[Channel, Callable[[bytes, str], None]] = {}
        self.gossip: dict[str, BroadcastHandler] = {}
        self.services: dict[str, tuple[int, str]] = {}

    def live_names(self) -> Collection[str]:
        return self.sim.view_of(self.me)

    def live_peers(self) -> Collection[str]:
        return [n for n in self.sim.view_of(self.me) if n != self.me]

    def random_peer(self, rng: random.Random) -> str | None:
        peers = list(self.live_peers())
        return rng.choice(peers) if peers else None

    def on_datagram(
        self,
        channel: Channel,
        kind: str,
        decode: Callable[[bytes], T],
        handler: Callable[[T, str], None],
        dropped: Counter,
    ) -> None:
        def receive(payload: bytes, sender: str) -> None:
            head, _, body = payload.partition(b"\n")
            if head != kind.encode():
                dropped.inc(reason="invalid")
                return
            try:
                msg = decode(body)
            except EnvelopeError:
                dropped.inc(reason="invalid")
                return
            handler(msg, sender)

        self.datagrams[channel] = receive

    def sign(self, kind: str, body: bytes) -> bytes:
        return kind.encode() + b"\n" + body  # the kind travels; authenticity by construction

    def send_datagram(self, channel: Channel, name: str, signed: bytes) -> None:
        if self.proc.alive:  # killed mid-step: the rest of the step sends nothing
            self.sim.send(self.me, name, Datagram(channel, signed), reliable=False)

    async def post_to(self, name: str, path: str, body: bytes) -> None:
        if self.proc.alive:
            self.sim.send(self.me, name, Post(path, body), reliable=True)

    def open_reliable(
        self,
        body: bytes,
        cert_der: bytes,
        kind: str,
        decode: Callable[[bytes], T],
        dropped: Counter,
    ) -> tuple[T, SimAuthor] | None:
        if not cert_der.startswith(FAKE_CERT):
            dropped.inc(reason="invalid")
            return None
        try:
            return decode(body), SimAuthor(cert_der[len(FAKE_CERT) :].decode())
        except EnvelopeError:
            dropped.inc(reason="invalid")
            return None

    def on_broadcast(self, kind: str, handler: BroadcastHandler) -> None:
        if kind in self.gossip:
            raise RuntimeError(f"broadcast kind {kind!r} has a handler already")
        self.gossip[kind] = handler

    def broadcast(self, kind: str, payload: bytes, key: str | None = None) -> None:
        # Best effort, like SWIM's gossip: each live member may miss it (loss, partition).
        size = membership_codec.update_size(UserMsg(self.me, 0, kind, payload))
        if membership_codec.GOSSIP_BASE + size > self.sim.cfg.membership.max_gossip_bytes:
            raise ValueError(f"broadcast of {len(payload)} bytes does not fit max_gossip_bytes")
        if not self.proc.alive:
            return
        for peer in self.live_peers():
            self.sim.send(self.me, peer, Gossip(kind, payload, self.me), reliable=False)

    def sign_record(self, kind: str, body: bytes, portable: bool = False) -> bytes:
        # Authenticity by construction, as for datagrams; the author travels with it.
        return kind.encode() + b"\n" + self.me.encode() + b"\n" + body

    def open_record(self, kind: str, signed: bytes) -> tuple[bytes, str] | None:
        head, _, rest = signed.partition(b"\n")
        author, _, body = rest.partition(b"\n")
        if head != kind.encode() or not author:
            return None
        return body, author.decode()

    async def add_service(
        self, name: str, port: int, proto: str, host: str | None = None
    ) -> dict[str, Any]:
        self.services[name] = (port, proto)
        return {"name": name, "port": port, "proto": proto}

    async def remove_service(self, name: str) -> None:
        if self.services.pop(name, None) is None:
            raise NotFoundError(f"this node publishes no service named {name!r}")


# -- BMCs -----------------------------------------------------------------------------------


def _bmc_endpoint(name: str) -> BmcEndpoint:
    return BmcEndpoint(f"https://bmc-{name}.sim", "admin", "pw", name)


def _roster_member(name: str) -> roster.Member:
    return roster.Member(name, f"id-{name}", "", "node", None, EPOCH, None)


class BladeBmc:
    """The fake BMC as a fencing shell sees it; a verified Off takes the blade down."""

    def __init__(self, sim: ShellSim) -> None:
        self.sim = sim

    async def power_state(self, endpoint: BmcEndpoint, deadline: float) -> PowerReading:
        return await self.sim.bmc.power_state(endpoint, deadline)

    async def force_off(self, endpoint: BmcEndpoint, deadline: float) -> FenceOutcome:
        out = await self.sim.bmc.force_off(endpoint, deadline)
        if out.verified_off:
            name = str(endpoint.system)
            self.sim.loop.call_soon(self.sim.blade_off, name, context=self.sim._net_ctx)
        return out


# -- nodes -------------------------------------------------------------------------------


@dataclass
class ShellNode:
    """A simulated machine: its disk and host outlive its meshd; its shells don't."""

    name: str
    cfg: Config
    host: FakeHost
    boot: int = 0
    proc: Process | None = None
    store: Store | None = None
    mesh: FakeMesh | None = None
    placement: PlacementShell | None = None
    runner: WorkloadRunner | None = None
    fencing: FencingShell | None = None
    bus: Bus | None = None
    dead: list[Process] = field(default_factory=list)  # killed processes (their tasks)

    @property
    def up(self) -> bool:
        return self.proc is not None


@dataclass
class Submission:
    """One ``PlacementShell.submit`` call and what it returned (if its node lived)."""

    origin: str
    request: SubmitRequest
    at: float
    result: dict[str, Any] | None = None
    error: str | None = None
    ended: float | None = None  # when it answered (virtual time)
    task: asyncio.Task[None] | None = field(default=None, repr=False, compare=False)


class AttachingDriver(FakeDriver):
    """The fake driver on a blade whose host can attach some mesh networks: it offers
    ``network:NAME`` as the host helper (branch h13-host) makes a real node offer it."""

    def __init__(self, *args: Any, offers: frozenset[str] = frozenset(), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._offers = offers

    def capabilities(self) -> frozenset[str]:
        return super().capabilities() | self._offers


# -- the simulation ----------------------------------------------------------------------


class ShellSim:
    """N nodes running the real shells on fake ports in one virtual-time loop."""

    def __init__(
        self,
        seed: int,
        capacities: dict[str, tuple[float, int, int]],
        cfg: Config | None = None,
        link: LinkModel | None = None,
        root: Path | None = None,
        membership: str = "oracle",
        store_faults: bool = False,
        fencing: bool = False,
        offers: frozenset[str] = frozenset(),
    ) -> None:
        if membership not in ("oracle", "lagged"):
            raise ValueError(f"membership is oracle or lagged, not {membership!r}")
        self.seed = seed
        self.cfg = (cfg or config.sim()).override({"auction.host_telemetry": False}).validate()
        self.loop = VirtualLoop()
        self._faults = _faults_vfs() if store_faults else None
        self.net = Network(random.Random(f"{seed}/net"), link)
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="meshd-sim-"))
        self._net_ctx = contextvars.Context()  # packets in flight belong to no process
        self.nodes: dict[str, ShellNode] = {}
        for name, (cpus, memory, disk) in capacities.items():
            node_cfg = self.cfg.replace(
                data_dir=self.root / name, cpus=cpus, memory=memory, disk=disk
            )
            (self.root / name).mkdir(parents=True, exist_ok=True)
            self.nodes[name] = ShellNode(name, node_cfg, FakeHost(self.clock))
        self.violations: list[str] = []
        self.owners: dict[tuple[str, int], str] = {}
        self.started: dict[str, int] = {}  # workload -> highest generation assigned
        self.submissions: list[Submission] = []
        self.trace: list[str] = []  # commands, for a failure report
        self.network_records: list[network_core.Network] = []  # what `network` commands made
        self.delivered = 0
        # Crash triggers: after the k-th message a node handles ("mid": before the
        # step's messages leave; "after": once they left), or right after it is told
        # to start or stop a workload (before the runner acts on it).
        self.step_triggers: dict[str, tuple[int, str]] = {}
        self.event_triggers: list[tuple[str, type]] = []
        self.commit_triggers: dict[str, int] = {}
        self.loop.call_later(CHECK_EVERY, self._check_all, context=self._net_ctx)
        # Lagged membership: each node's own view, following the truth after a delay.
        self.lagged = membership == "lagged"
        self._mrng = random.Random(f"{seed}/membership")
        self.views: dict[str, set[str]] = {}
        self._view_change: dict[tuple[str, str], tuple[int, bool]] = {}  # pending
        self._view_serial = 0
        # Fencing (lagged membership only): every blade has a BMC on the fake; a
        # verified Off takes the blade down. Incarnations: bumped when a member comes
        # back (a reboot, or a heal that SWIM would answer with a refutation).
        self.fencing = fencing
        # What every node offers besides driver:fake: ``network:NAME`` stands for the
        # host helper's capability to attach NAME (its bridge exists on the blade).
        self.offers = offers
        if fencing and not self.lagged:
            raise ValueError("fencing needs the lagged membership (somebody must die)")
        self.bmc = FakeBmc(cfg=self.cfg.bmc)
        self.systems: dict[str, FakeSystem] = {}
        self.incarnation: dict[str, int] = dict.fromkeys(self.nodes, 0)
        self.seen_inc: dict[tuple[str, str], int] = {}
        self.host_gen: dict[tuple[str, str], int] = {}  # (node, workload) -> generation
        self.power_offs: list[tuple[float, str]] = []
        self.removed: set[str] = set()  # workload ids an operator removed
        if fencing:
            brng = random.Random(f"{seed}/bmc")
            for name, node in self.nodes.items():
                endpoint = _bmc_endpoint(name)
                bmc_files.save(self.root / name, endpoint)
                with Store.open(node.cfg.store_path) as store, store.transaction():
                    for y in self.nodes:  # everyone was enrolled: the roster is whole
                        roster.upsert(store, _roster_member(y))
                delay = brng.choice([0.0, 0.0, 0.5, 2.0])
                self.systems[name] = self.bmc.add(endpoint, FakeSystem(off_delay_s=delay))

    # -- inspection -------------------------------------------------------------------

    def clock(self) -> float:
        return EPOCH + self.loop.time()

    @property
    def now(self) -> float:
        return self.loop.time()

    def describe(self) -> str:
        membership = "lagged" if self.lagged else "oracle"
        return (
            f"seed={self.seed} membership={membership} t={self.now:.3f} "
            f"(replay with {ENV_SEED}={self.seed})"
        )

    def live(self) -> list[str]:
        """The membership oracle: who is up (sorted, so iteration is deterministic)."""
        return [n for n, node in self.nodes.items() if node.up]

    def view_of(self, observer: str) -> list[str]:
        """Who ``observer``'s membership says is live, itself included (sorted)."""
        if not self.lagged:
            return self.live()
        view = self.views.get(observer, set())
        return [n for n in self.nodes if n == observer or n in view]

    # -- lagged membership: what SWIM would converge to, a detection delay later --------

    def _reachable(self, a: str, b: str) -> bool:
        """Would ``a``'s SWIM keep ``b`` alive? Up, and not cut off both ways (a one-way
        cut is bridged by indirect probes and refutations)."""
        return self.nodes[b].up and not (self.net.blocked(a, b) and self.net.blocked(b, a))

    def _follow_truth(self) -> None:
        """Schedule each live observer's view to follow the truth: a member that died
        or was cut off is dropped 1-4 s later (probe, suspicion), one that came back is
        added 0.05-2 s later (join, push-pull); a reversal in between cancels it."""
        if not self.lagged:
            return
        for x, node in self.nodes.items():
            if not node.up:
                continue
            view = self.views.setdefault(x, set())
            for y in self.nodes:
                if y == x:
                    continue
                truth = self._reachable(x, y)
                pending = self._view_change.get((x, y))
                if pending is not None and pending[1] == truth:
                    continue  # already on its way
                if (y in view) == truth:
                    self._view_change.pop((x, y), None)  # cancels a pending reversal
                    continue
                self._view_serial += 1
                self._view_change[(x, y)] = (self._view_serial, truth)
                delay = self._mrng.uniform(0.05, 2.0) if truth else self._mrng.uniform(1.0, 4.0)
                self.loop.call_later(
                    delay, self._learn, x, y, self._view_serial, context=self._net_ctx
                )

    def _learn(self, observer: str, member: str, serial: int) -> None:
        pending = self._view_change.get((observer, member))
        if pending is None or pending[0] != serial:
            return  # overtaken
        del self._view_change[(observer, member)]
        view = self.views.setdefault(observer, set())
        if pending[1]:
            view.add(member)
        else:
            view.discard(member)
        self._tell(observer, member, pending[1])

    def _tell(self, observer: str, member: str, alive: bool) -> None:
        """Membership's event on ``observer``'s bus: ``member`` alive or dead (fencing)."""
        node = self.nodes[observer]
        bus, proc = node.bus, node.proc
        if not self.fencing or bus is None or proc is None:
            return
        key = (observer, member)
        if alive:
            prev = self.seen_inc.get(key)
            inc = self.incarnation[member]
            if prev is not None and inc <= prev:
                inc = self.incarnation[member] = prev + 1  # a refutation after a heal
            self.seen_inc[key] = inc
            before = None if prev is None else "dead"
            proc.run(bus.publish, MemberStateChanged(member, "alive", inc, before))
        else:
            inc = self.seen_inc.get(key, self.incarnation[member])
            self.seen_inc[key] = inc
            proc.run(bus.publish, MemberStateChanged(member, "dead", inc, "alive"))

    def placement(self, name: str) -> PlacementShell:
        shell = self.nodes[name].placement
        assert shell is not None, f"{name} is down"
        return shell

    def runner(self, name: str) -> WorkloadRunner:
        runner = self.nodes[name].runner
        assert runner is not None, f"{name} is down"
        return runner

    def _cmd(self, text: str) -> None:
        self.trace.append(f"{self.now:9.3f} {text}")

    # -- running ----------------------------------------------------------------------

    def at(self, t: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` at virtual time ``t``, as the operator (no process)."""
        self.loop.call_at(t, fn, *args, context=self._net_ctx)

    def run_until(self, t: float) -> None:
        self.loop.run_until(t)
        if self.loop.errors:
            self.violations += [f"callback raised: {e}" for e in self.loop.errors]
            self.loop.errors.clear()

    def close(self) -> None:
        for node in self.nodes.values():
            for proc in [*node.dead, *([node.proc] if node.proc else [])]:
                for task in proc.tasks:  # never started: no code of it ran, none will
                    coro = task.get_coro()
                    if inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == (
                        inspect.CORO_CREATED
                    ):
                        coro.close()
            if node.store is not None:
                node.store.close()
                node.store = None
        self.loop.close()
        if self._faults is not None:
            for node in self.nodes.values():
                self._faults.forget(node.cfg.store_path)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- nodes and faults ---------------------------------------------------------------

    def start(self, name: str) -> None:
        node = self.nodes[name]
        if node.up:
            return
        try:
            if self._faults is not None:
                self._faults.plan(node.cfg.store_path)
                store = SimStore.open(node.cfg.store_path, vfs=store_faults.VFS_NAME)
            else:
                store = SimStore.open(node.cfg.store_path)
        except StoreError as exc:  # a full disk: `meshd run` says so and exits
            self._cmd(f"start {name} failed: {exc}")
            return
        assert isinstance(store, SimStore)
        node.boot += 1
        self._cmd(f"start {name}" if node.boot == 1 else f"restart {name}")
        proc = Process(f"{name}#{node.boot}")
        node.proc = proc
        store.committed = functools.partial(self._on_commit, name)
        node.store = store
        counter = itertools.count()
        boot = node.boot

        def new_random() -> random.Random:
            return random.Random(f"{self.seed}/{name}/{boot}/{next(counter)}")

        bus = Bus()  # the simulator listens first: a triggered crash beats the runner
        node.bus = bus
        bus.subscribe(WorkloadAssigned, functools.partial(self._on_assigned, name))
        bus.subscribe(WorkloadReleased, functools.partial(self._on_event, name))
        ctx = NodeContext(
            node.cfg,
            identity(name),
            node.store,
            self.clock,
            Registry(),
            RevocationList(),
            bus,
            functools.partial(self._stop_requested, name),
            new_random,
        )
        node.mesh = FakeMesh(self, name, proc)
        host = node.host

        def drivers(root: Path, on_change: OnChange, _: DriversConfig) -> dict[str, Driver]:
            return {"fake": AttachingDriver(root, on_change, host=host, offers=self.offers)}

        if self.fencing:
            if node.boot > 1:
                self.incarnation[name] += 1  # it refutes whatever was said of it
            sys_ = self.systems[name]
            if sys_.power == "Off":  # its blade powered on to start it (a ForceOff
                sys_.power = "On"  # still pending takes it down all the same)
        if self.lagged:  # a joining node learns the members at once (push-pull)
            self.views[name] = {y for y in self.nodes if y != name and self._reachable(name, y)}
            for y in self.nodes:
                self._view_change.pop((name, y), None)
            self._follow_truth()
        node.placement, node.runner = proc.run(start_shells, ctx, node.mesh, drivers)
        if self.fencing:
            node.fencing = proc.run(
                start_fencing,
                ctx,
                node.mesh,
                node.placement,
                BladeBmc(self),
                self.loop.time,
                self.clock,
            )
            for y in sorted(self.views[name]):
                self._tell(name, y, True)

    def crash(self, name: str) -> None:
        """``SIGKILL``: nothing of this meshd runs again; its disk and host stay."""
        node = self.nodes[name]
        if node.proc is None:
            return
        self._cmd(f"crash {name}")
        node.proc.kill()
        node.dead.append(node.proc)
        if node.runner is not None:
            for driver in node.runner.drivers.values():
                if isinstance(driver, FakeDriver):
                    driver.detach()  # the host's workloads run on, unwatched
        assert node.store is not None
        node.store.close()
        node.proc = node.store = node.mesh = node.placement = node.runner = None
        node.fencing = node.bus = None
        self._follow_truth()

    def restart(self, name: str) -> None:
        self.crash(name)
        self.start(name)

    def power_off(self, name: str) -> None:
        """The blade's BMC cut its power: meshd and every workload on it are gone."""
        self.crash(name)
        self._cmd(f"power off {name}")
        self.nodes[name].host.workloads.clear()

    def replace_from(self, on: str, node: str) -> None:
        """``on``'s placement re-places what ``node`` ran (once ``node`` is fenced)."""
        shell = self.nodes[on].placement
        proc = self.nodes[on].proc
        if shell is None or proc is None:
            return
        self._cmd(f"replace on {on} from {node}")
        proc.spawn(shell.replace_from(node, "fenced"))

    def drain(self, on: str, node: str, draining: bool = True) -> None:
        """``meshd node drain|undrain node``, accepted by ``on`` (nothing if it is down)."""
        shell = self.nodes[on].placement
        proc = self.nodes[on].proc
        if shell is None or proc is None:
            return
        self._cmd(f"{'drain' if draining else 'undrain'} {node} on {on}")

        async def run() -> None:
            try:
                await shell.drain(node, draining)
            except MeshdError as exc:  # a full disk: the operator is told, nothing announced
                self._cmd(f"drain {node} on {on} failed: {exc}")

        proc.spawn(run())

    def network(self, on: str, name: str, subnet: str | None) -> None:
        """``meshd network create name --subnet subnet`` (``rm name`` if ``subnet`` is
        None), accepted by ``on`` (nothing if it is down); what it made is kept in
        ``network_records``, what it refused in the trace."""
        shell = self.nodes[on].placement
        proc = self.nodes[on].proc
        if shell is None or proc is None:
            return
        self._cmd(f"network {'create' if subnet else 'rm'} {name} {subnet or ''} on {on}")
        try:
            if subnet is None:
                made = proc.run(shell.networks.remove, name)
            else:
                made = proc.run(shell.networks.create, name, subnet)
        except MeshdError as exc:
            self._cmd(f"network {name} on {on} refused: {exc}")
            return
        self.network_records.append(made)

    def arm_step(self, name: str, k: int, mode: str) -> None:
        """Crash ``name`` right after the ``k``-th message it handles from now on."""
        self._cmd(f"arm {name} crash {mode} message {k}")
        self.step_triggers[name] = (k, mode)

    def arm_event(self, name: str, event: type) -> None:
        """Crash ``name`` right after its placement publishes ``event`` (Start or Stop)."""
        self._cmd(f"arm {name} crash after {event.__name__}")
        self.event_triggers.append((name, event))

    def arm_commit(self, name: str, k: int) -> None:
        """Crash ``name`` the moment its ``k``-th durable commit from now is on disk:
        the rest of that step runs in memory only (nothing it sends leaves)."""
        self._cmd(f"arm {name} crash at durable commit {k}")
        self.commit_triggers[name] = k

    def _on_commit(self, name: str, durable: bool) -> None:
        k = self.commit_triggers.get(name)
        if not durable or k is None:
            return
        if k > 1:
            self.commit_triggers[name] = k - 1
            return
        del self.commit_triggers[name]
        proc = self.nodes[name].proc
        assert proc is not None
        self._cmd(f"{name} committed: crash")
        proc.kill()  # now; the store and shells go once the step is over
        self.loop.call_soon(self.crash, name, context=self._net_ctx)

    def _on_event(self, name: str, event: object) -> None:
        trigger = (name, type(event))
        if trigger in self.event_triggers:
            self.event_triggers.remove(trigger)
            self._cmd(f"{name} got {type(event).__name__}: crash")
            self.loop.call_soon(self.crash, name, context=self._net_ctx)

    def disk(self, name: str) -> store_faults.WritePlan:
        """The write faults of ``name``'s store (needs ``store_faults``)."""
        assert self._faults is not None, "ShellSim(store_faults=True) injects disk faults"
        return self._faults.plan(self.nodes[name].cfg.store_path)

    def disk_full(self, name: str, kind: store_faults.Fault = store_faults.Fault.FULL) -> None:
        """Every write to ``name``'s store fails from now on (its meshd keeps running)."""
        self._cmd(f"disk {name} {kind.value}")
        self.disk(name).fail_from(1, kind)

    def disk_ok(self, name: str) -> None:
        """``name``'s store writes again (space was freed)."""
        self._cmd(f"disk {name} ok")
        self.disk(name).heal()

    def fail_write(self, name: str, k: int) -> None:
        """The ``k``-th write to ``name``'s store from now fails, once."""
        self._cmd(f"disk {name} fail write {k}")
        self.disk(name).fail_at(k)

    def end_faults(self) -> None:
        """Heal the network and the disks, disarm every trigger, start every node."""
        self.heal()
        if self._faults is not None:
            for name in self.nodes:
                self.disk(name).heal()
        self.step_triggers.clear()
        self.event_triggers.clear()
        self.commit_triggers.clear()
        for name in self.nodes:
            self.start(name)

    def partition(self, *groups: list[str]) -> None:
        self._cmd("partition " + " | ".join(",".join(sorted(g)) for g in groups))
        self.net.partition(*groups)
        self._follow_truth()

    def cut(self, src: str, dst: str, both: bool = False) -> None:
        self._cmd(f"cut {src}->{dst}{' both' if both else ''}")
        self.net.cut(src, dst, both)
        self._follow_truth()

    def heal(self) -> None:
        self._cmd("heal")
        self.net.heal()
        self._follow_truth()

    # -- operator commands --------------------------------------------------------------

    def submit(self, origin: str, request: SubmitRequest) -> None:
        """``meshd submit`` on ``origin`` (nothing if it is down)."""
        node = self.nodes[origin]
        if node.proc is None or node.placement is None:
            return
        self._cmd(f"submit {origin} {request.name} key={request.idempotency_key}")
        sub = Submission(origin, request, self.now)
        self.submissions.append(sub)
        sub.task = node.proc.spawn(self._submit(node.placement, sub))

    async def _submit(self, shell: PlacementShell, sub: Submission) -> None:
        try:
            sub.result = await shell.submit(sub.request)
        except MeshdError as exc:
            sub.error = str(exc)
        sub.ended = self.now

    def remove_named(self, name: str, workload: str) -> None:
        """``meshd workload rm`` of the workload called ``workload``, as ``name`` sees it."""
        shell = self.nodes[name].placement
        if shell is None:
            return
        for wid, p in sorted(shell.core.placements().items()):
            if p.name == workload and not p.removed:
                self.remove(name, wid)

    def remove(self, name: str, wid: str) -> None:
        """``meshd workload rm`` on ``name`` (nothing if it is down or sees no such one)."""
        node = self.nodes[name]
        if node.proc is None or node.placement is None:
            return
        self._cmd(f"remove {name} {wid}")
        self.removed.add(wid)
        try:
            node.proc.run(node.placement.remove, wid)
        except NotFoundError:
            pass
        except StoreError as exc:  # the API answers 503 with this sentence
            self._cmd(f"remove {name} refused: {exc}")

    # -- the network ----------------------------------------------------------------------

    def send(self, src: str, dst: str, packet: Packet, *, reliable: bool) -> None:
        if dst not in self.nodes:
            return
        for delay in self.net.delays(src, dst, reliable):
            self.loop.call_at(
                self.loop.time() + delay, self._arrive, src, dst, packet, context=self._net_ctx
            )
        if not reliable:  # an eavesdropper copies it to another node
            for other, delay in self.net.strays(src, dst, list(self.nodes)):
                self.loop.call_at(
                    self.loop.time() + delay,
                    self._arrive,
                    src,
                    other,
                    packet,
                    context=self._net_ctx,
                )

    def _arrive(self, src: str, dst: str, packet: Packet) -> None:
        node = self.nodes[dst]
        if node.proc is None or not node.proc.alive or self.net.blocked(src, dst):
            return  # down, or cut off while it was in flight
        self.delivered += 1
        node.proc.run(self._deliver, node, src, packet)
        if node.up:
            self.check(node)
        trigger = self.step_triggers.get(dst)
        if trigger is not None:
            k, mode = trigger
            if k > 1:
                self.step_triggers[dst] = (k - 1, mode)
                return
            del self.step_triggers[dst]
            if mode == "mid":
                self.crash(dst)  # its records are written, its messages not yet sent
            else:
                self.loop.call_soon(self.crash, dst, context=self._net_ctx)

    def _deliver(self, node: ShellNode, src: str, packet: Packet) -> None:
        assert node.mesh is not None and node.placement is not None
        try:
            if isinstance(packet, Datagram):
                handler = node.mesh.datagrams.get(packet.channel)
                if handler is not None:
                    handler(packet.payload, src)
            elif isinstance(packet, Post):
                if packet.path == DRAINS_PATH:
                    node.placement.drains.receive_bundle(packet.body, src)
                elif packet.path == NETWORKS_PATH:
                    node.placement.networks.receive_bundle(packet.body, src)
                elif packet.path == FENCE_PATH and node.fencing is not None:
                    node.fencing.receive_reliable(packet.body, FAKE_CERT + src.encode())
                elif packet.path == BMC_PATH and node.fencing is not None:
                    node.fencing.endpoints.receive(packet.body, src)
                elif packet.path != AUCTION_PATH:
                    raise AssertionError(f"a post to {packet.path}, which the sim does not route")
                else:
                    node.placement.receive_reliable(packet.body, FAKE_CERT + src.encode())
            else:
                gossip = node.mesh.gossip.get(packet.kind)
                if gossip is not None:
                    gossip(packet.payload, packet.origin)
        except InvariantBreach as exc:
            self.violations.append(f"t={self.now:.3f} {node.name}: invariant breach: {exc}")

    # -- checks -------------------------------------------------------------------------

    def _on_assigned(self, name: str, event: WorkloadAssigned) -> None:
        a = event.allocation
        self.host_gen[(name, a.workload.id)] = a.generation
        self.started[a.workload.id] = max(self.started.get(a.workload.id, 0), a.generation)
        self._owner(a.workload.id, a.generation, name, name)
        self._on_event(name, event)

    def _stop_requested(self, name: str) -> None:
        self.violations.append(f"t={self.now:.3f} {name} asked its node to stop")

    def _owner(self, wid: str, gen: int, owner: str, seen_by: str) -> None:
        prev = self.owners.setdefault((wid, gen), owner)
        if prev != owner:
            self.violations.append(
                f"t={self.now:.3f} {seen_by}: {wid} gen {gen} owned by {prev} and {owner}"
            )

    def check_hosts(self) -> None:
        """Across generations, a workload never runs on two blades at once: the next
        generation starts only once the blade of the last is off (fenced) or stopped
        it. (Two owners of one generation across a partition, and a removed workload
        submitted again across one, are the auction's own cases, resolved in the view,
        and not counted here.)"""
        running: dict[str, list[tuple[int, str]]] = {}
        if not self.fencing:
            return
        for name, node in self.nodes.items():
            for wid, fw in node.host.workloads.items():
                if fw.state is WorkloadState.RUNNING and wid not in self.removed:
                    gen = self.host_gen.get((name, wid), 0)
                    running.setdefault(wid, []).append((gen, name))
        for wid, where in running.items():
            if len({g for g, _ in where}) > 1:
                problem = f"{wid} runs at once on " + ", ".join(f"{n} (gen {g})" for g, n in where)
                if not self.violations or self.violations[-1].split(" ", 1)[1] != problem:
                    self.violations.append(f"t={self.now:.3f} {problem}")

    def power_loss(self, name: str) -> None:
        """The blade loses power: meshd and its workloads are gone, its BMC says Off."""
        self._cmd(f"power loss {name}")
        self.systems[name].power = "Off"
        self.blade_off(name)

    def blade_off(self, name: str) -> None:
        """Its BMC turned it off: meshd and every workload on it are gone."""
        if self.systems[name].power != "Off":
            return  # powered on again meanwhile (started by the schedule)
        self.power_offs.append((self.now, name))
        if self.nodes[name].up:
            self.crash(name)
        self._cmd(f"blade {name} off")
        self.nodes[name].host.workloads.clear()

    def check(self, node: ShellNode) -> None:
        """The step invariants of one running node (after each message it handled)."""
        assert node.placement is not None
        core = node.placement.core
        ledger = core.ledger()
        self.violations += ledger_problems(node.name, ledger, self.clock())
        for wid, a in ledger.allocations.items():
            self._owner(wid, a.generation, node.name, node.name)
        for wid, p in core.placements().items():
            self._owner(wid, p.generation, p.owner, node.name)

    def _check_all(self) -> None:
        """Every ``CHECK_EVERY`` s, check every running node (timers step them too)."""
        for node in self.nodes.values():
            if node.up:
                self.check(node)
        self.check_hosts()
        self.loop.call_later(CHECK_EVERY, self._check_all, context=self._net_ctx)

    def flush(self) -> None:
        """Write every live node's pending journal (a test reading the stores)."""
        for name in self.live():
            shell = self.placement(name)
            shell.journal.flush(self.clock())

    def final_problems(self) -> list[str]:
        """Whole-mesh checks, once healed, every node up and the mesh settled."""
        self.flush()
        live = self.live()
        problems = list(self.violations)
        cores = {n: self.placement(n).core for n in live}
        stores = {}
        for n in live:
            store = self.nodes[n].store
            assert store is not None
            stores[n] = auction_records.load(store)
        decided: list[tuple[str, str, int]] = []  # (workload, owner, generation)
        for sub in self.submissions:
            r = sub.result
            if r is not None and sub.error is not None:
                problems.append(f"{sub.request.name} both placed and failed")
            if r is not None:
                decided.append((r["workload"], r["owner"], r["generation"]))
        problems += mesh_problems(cores, stores, [(w, g) for w, _, g in decided], self.started)
        if not live:
            return problems
        view = cores[live[0]].placements()
        # One allocation per (workload, generation) across every store.
        holders: dict[tuple[str, int], list[str]] = {}
        for n in live:
            for wid, alloc in stores[n].allocations.items():
                holders.setdefault((wid, alloc.generation), []).append(n)
        for (wid, gen), names in holders.items():
            if len(names) > 1:
                problems.append(f"{wid} gen {gen} allocated on {names}")
        # What submit() reported placed is placed, and its owner holds it on disk.
        for wid, owner, gen in decided:
            now = view.get(wid)
            if now is None:
                problems.append(f"{wid} reported placed on {owner}, not in the view")
            elif not now.removed and now.generation == gen:
                held = stores[owner].allocations.get(wid) if owner in stores else None
                if now.owner != owner or held is None or held.generation != gen:
                    problems.append(
                        f"{wid} reported placed on {owner} gen {gen}; the view says "
                        f"{now.owner}, and {owner}'s store holds {held}"
                    )
        # Each owner's host runs what it owns; no other host runs it.
        placed = {w: p for w, p in view.items() if not p.removed}
        for n in live:
            host = self.nodes[n].host
            running = {w for w, fw in host.workloads.items() if fw.state is WorkloadState.RUNNING}
            mine = {w for w, p in placed.items() if p.owner == n}
            for w in sorted(mine - running):
                problems.append(f"{n} owns {w} gen {placed[w].generation} but does not run it")
            for w in sorted(running - mine):
                owner = placed[w].owner if w in placed else "nobody (removed)"
                problems.append(f"{n} runs {w}, owned by {owner}")
            for w in sorted(set(host.workloads) - mine):
                problems.append(f"{n}'s host still has {w}, which it does not own")
        # Every node's gossiped state of each workload is its owner's, running.
        for w, p in placed.items():
            own = self.runner(p.owner).states.get(w) if p.owner in live else None
            for n in live:
                state, detail = self.runner(n).state_of(w, p.generation)
                if state != "running":
                    problems.append(f"{n} sees {w} gen {p.generation} as {state} ({detail})")
                entry = self.runner(n).states.get(w)
                if own is not None and entry is not None and entry.at != own.at:
                    problems.append(f"{n}'s state of {w} is not its owner's latest")
        return problems
