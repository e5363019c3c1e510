"""The node shell: one asyncio process that owns this blade's identity, store and API.

Start-up order matters: take the data-dir lock (one daemon per data dir), load and
check the identity, open the store, bind the mesh port and the unix socket, record
the address peers should use, then announce readiness. Shutdown (SIGTERM/SIGINT)
runs the same steps backwards and lets in-flight requests finish for
``api.shutdown_grace_s``.

Later issues hang the protocol cores (membership, auction, fencing) and the DHT off
this shell; it stays thin: cores decide, the shell persists, sends and acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import ipaddress
import logging
import os
import random
import resource
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from aiohttp import web

from meshd import __version__
from meshd.adapters import telemetry, tls
from meshd.adapters.drivers.registry import make_drivers
from meshd.adapters.redfish import RedfishClient
from meshd.adapters.store import probe, roster
from meshd.adapters.store.db import Store
from meshd.api.listener import Budget, Listener
from meshd.api.refusals import ServerLog
from meshd.api.server import Api
from meshd.config import Config
from meshd.core import names
from meshd.core.auction.capabilities import Capabilities
from meshd.errors import DaemonError, MeshdError
from meshd.identity import authority
from meshd.identity import bmc as bmc_files
from meshd.identity.files import NodeIdentity
from meshd.metrics import Registry
from meshd.shell import gauges, loop_errors
from meshd.shell.addresses import AddressShell
from meshd.shell.bus import Bus
from meshd.shell.context import NodeContext
from meshd.shell.fencing import EndpointBook, FencingShell, boot_clock
from meshd.shell.mesh import Mesh
from meshd.shell.placement import PlacementShell
from meshd.shell.ports import BmcPort, MeshPort
from meshd.shell.workloads import DriverFactory, WorkloadRunner
from meshd.units import format_hostport, parse_hostport

logger = logging.getLogger(__name__)


def _first_lan_ipv4() -> str:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return a.address
    return "127.0.0.1"


def lock_data_dir(data_dir: Path) -> int:
    """Hold ``DATA_DIR/meshd.lock`` for the life of the process: one daemon per data dir."""
    path = data_dir / "meshd.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise DaemonError(
            f"another meshd is already running with data directory {data_dir}"
        ) from exc
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=512)
    except OSError as exc:
        raise DaemonError(
            f"can't listen on {format_hostport(host, port)}: {exc.strerror}; "
            "pick another --listen address or stop what holds the port"
        ) from exc


def _bind_unix(path: Path) -> socket.socket:
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # a stale socket left by a crashed daemon
        else:
            raise DaemonError(f"another meshd already answers on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is born 0600: no window where others can connect
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(128)
    return sock


# Descriptors the daemon needs besides its API connections: the store, the UDP port,
# outgoing peer connections, workloads' logs and pipes.
_OWN_FDS = 256


def ensure_fd_room(cfg: Config) -> None:
    """Raise RLIMIT_NOFILE's soft limit so both API budgets and our own files fit.

    Without room, a TCP flood would take the last descriptor and the unix socket could
    no longer accept: the budgets only protect the CLI if the limit is above them.
    """
    need = cfg.api.max_connections + cfg.api.unix_max_connections + _OWN_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise DaemonError(
                f"the open-file limit is {hard} but api.max_connections + "
                f"api.unix_max_connections + {_OWN_FDS} for the daemon's own files is {need}; "
                "lower api.max_connections or raise the limit (ulimit -n, LimitNOFILE=)"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _listeners(
    cfg: Config,
    ident: NodeIdentity,
    api: Api,
    runner: web.AppRunner,
    unix: socket.socket,
    tcp: socket.socket,
) -> list[Listener]:
    """The unix socket and the mesh TCP port, each with its own connection budget."""
    server = runner.server
    assert server is not None
    a = cfg.api
    local = Budget(a.unix_max_connections, None, None, a.header_timeout_s)
    remote = Budget(
        a.max_connections, a.max_connections_per_peer, a.tls_handshake_timeout_s, a.header_timeout_s
    )
    return [
        Listener(unix, server, local, api.refusals),
        Listener(tcp, server, remote, api.refusals, tls.server_context(ident)),
    ]


async def _resolve_seeds(seeds: tuple[str, ...], own: str) -> list[tuple[str, int]]:
    """Seed HOST:PORTs to IPv4 addresses (names resolved once, at start); skips ourselves."""
    out: list[tuple[str, int]] = []
    loop = asyncio.get_running_loop()
    for seed in seeds:
        if seed == own:
            continue
        host, port = parse_hostport(seed, "seed")
        try:
            infos = await loop.getaddrinfo(
                host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM
            )
        except OSError as exc:
            logger.warning("can't resolve seed seed=%s error=%s", seed, exc)
            continue
        out.extend((str(i[4][0]), int(i[4][1])) for i in infos[:1])
    return out


def start_shells(
    ctx: NodeContext, mesh: MeshPort, drivers: DriverFactory = make_drivers
) -> tuple[PlacementShell, WorkloadRunner]:
    """Build and start the placement shell and the workload runner on ``mesh``.

    The daemon and the simulator (``tests/sim/shells.py``) both start a node's shells
    here, so the simulator exercises the same wiring: the runner first (its drivers
    say what this node can run), then the placement, then the runner reattaches what
    the placement's store says is confirmed here and follows its events.
    """
    runner = WorkloadRunner(ctx, mesh, drivers)
    caps = telemetry.capabilities(ctx.cfg, (d.capabilities() for d in runner.drivers.values()))
    logger.info("capabilities offers=%s", ",".join(sorted(caps.offers)))
    placement = PlacementShell(ctx, mesh, caps)
    placement.start()
    networks = placement.networks

    def offers_changed(attachable: frozenset[str]) -> None:
        # Drivers and labels as measured at start-up, networks as they are now.
        new = Capabilities(caps.offers | attachable, caps.labels)
        logger.info("capabilities offers=%s", ",".join(sorted(new.offers)))
        placement.set_capabilities(new)

    runner.guests.use_networks(networks.table.live, networks.networks)
    runner.guests.on_offers = offers_changed
    addresses = AddressShell(
        ctx,
        mesh,
        placement.networks,
        placement.core_placements,
        lambda: placement.synced,
        placement.offer_digest,
    )
    placement.addresses = addresses
    placement.view_listeners.append(addresses.view_changed)
    addresses.start()
    runner.guests.addresses = addresses
    addresses.holds = runner.holds
    # Busy: auctions in flight besides the claiming submission's own.
    addresses.busy = lambda: placement.busy(besides=1)
    runner.resume_check = placement.resume_fits
    runner.start(
        placement.core.ledger().allocations, placement.allocations_complete, placement.synced
    )
    return placement, runner


def start_fencing(
    ctx: NodeContext,
    mesh: MeshPort,
    placement: PlacementShell,
    bmc: BmcPort,
    bmc_clock: Callable[[], float],
    clock: Callable[[], float] = boot_clock,
) -> FencingShell:
    """Build and start the fencing shell (daemon and simulator alike): votes on ``mesh``,
    power-offs through ``bmc``, re-placement through ``placement``."""
    data_dir = ctx.cfg.data_dir
    book = EndpointBook(
        lambda: bmc_files.load(data_dir),
        bmc_files.own_ca,
        lambda name: bmc_files.load_peer(data_dir, name),
        lambda name, endpoint, ca: bmc_files.save_peer(data_dir, name, endpoint, ca),
        ctx.ident.name,
    )

    def owned_by(node: str) -> list[str]:
        placed = placement.core.placements().values()
        return [p.workload_id for p in placed if p.owner == node and not p.removed]

    fencing = FencingShell(ctx, mesh, bmc, bmc_clock, placement.replace_from, owned_by, book, clock)
    fencing.start()
    if placement.addresses is not None:  # a removed workload's owner, fenced: runs nothing
        placement.addresses.fenced = lambda node: fencing.core.state(node) == "fenced"
    return fencing


class Node:
    def __init__(
        self,
        cfg: Config,
        ident: NodeIdentity,
        store: Store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.ident = ident
        self.store = store
        self.clock = clock
        self.metrics = Registry()
        self.revocations = authority.load_revocations(store, ident.ca_cert)
        self.ctx = NodeContext(
            cfg, ident, store, clock, self.metrics, self.revocations, Bus(), self.request_stop
        )
        self.started_at = clock()
        self._started_mono = time.monotonic()
        self.address = ""
        self.listen = ""
        self._runner: web.AppRunner | None = None
        self._listeners: list[Listener] = []
        self._owns_socket = False
        self.mesh: Mesh | None = None
        self.placement: PlacementShell | None = None
        self.runner: WorkloadRunner | None = None
        self.fencing: FencingShell | None = None
        self.dns: Any = None  # meshd.shell.dns.DnsServer with --dns (imported on demand)
        # False until start-up has finished: /v1/health answers 503 "starting" till then.
        self.ready = False
        self._socket_path = cfg.socket_path
        self._stopping = asyncio.Event()
        self._housekeeping: asyncio.Task[None] | None = None
        m = self.metrics
        m.gauge("meshd_up", "1 while the daemon runs", lambda: 1.0)
        m.gauge("meshd_uptime_seconds", "Seconds since start", lambda: self.uptime)
        m.gauge("meshd_process_rss_bytes", "Resident memory of the daemon", telemetry.rss_bytes)
        m.gauge("meshd_roster_nodes", "Enrolled, not removed nodes", self._roster_size)
        m.gauge("meshd_revoked_nodes", "Revocations known", lambda: float(len(self.revocations)))
        info = m.gauge("meshd_info", "Constant 1, labelled with this node's identity")
        info.set(1.0, name=ident.name, domain=ident.domain, version=__version__)

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started_mono

    def _roster_size(self) -> float:
        return float(len(roster.members(self.store)))

    # -- life cycle -----------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        listen_host, listen_port = parse_hostport(self.cfg.listen, "listen")
        self.mesh = Mesh(self.ctx, lambda: self.ident.ca_key)
        tcp = await self._bind_mesh_port(listen_host, listen_port)
        port = tcp.getsockname()[1]
        self.listen = format_hostport(listen_host, port)
        if self.cfg.advertise:
            self.address = self.cfg.advertise
        elif self.cfg.mdns and listen_host in ("0.0.0.0", "::", ""):  # noqa: S104
            self.address = format_hostport(self.cfg.mdns, port)
        elif listen_host in ("0.0.0.0", "::", ""):  # noqa: S104 - detecting a wildcard
            self.address = format_hostport(_first_lan_ipv4(), port)
        else:
            self.address = self.listen
        unix = _bind_unix(self._socket_path)
        self._owns_socket = True
        api = Api(self)
        self._runner = web.AppRunner(
            api.app(),
            shutdown_timeout=self.cfg.api.shutdown_grace_s,
            access_log=None,
            keepalive_timeout=self.cfg.api.keepalive_timeout_s,
            logger=ServerLog(api.refusals),
        )
        await self._runner.setup()
        self._listeners = _listeners(self.cfg, self.ident, api, self._runner, unix, tcp)
        for listener in self._listeners:
            listener.start()
        # Configured seeds first, then every member's last known address from the
        # durable roster: a restarted node rejoins even when its seeds are gone.
        known = [
            m.address
            for m in roster.members(self.store)
            if m.name != self.ident.name and m.address and not m.address.endswith(":0")
        ]
        # Remembered addresses in random order: membership contacts a few at a time
        # (membership.join_fanout), so a chassis restarting together spreads its joins.
        random.shuffle(known)
        candidates = tuple(dict.fromkeys([*self.cfg.seeds, *known]))
        seeds = await _resolve_seeds(candidates, self.address)
        await self.mesh.start(parse_hostport(self.address, "address"))
        self.placement, self.runner = start_shells(self.ctx, self.mesh)
        redfish = RedfishClient(self.cfg.bmc)
        self.fencing = start_fencing(self.ctx, self.mesh, self.placement, redfish, redfish.clock)
        gauges.register(self.metrics, self.placement, self.runner, self.fencing)
        if self.cfg.dns_listen:
            await self._start_dns(self.cfg.dns_listen)
        self.mesh.join(seeds)  # last: once others hear of us, we are all there
        self.store.set_meta("address", self.address)
        self._housekeeping = asyncio.get_running_loop().create_task(self._prune_events())
        self.ready = True
        roster.set_address(self.store, self.ident.name, self.address)
        self.store.append_event(
            self.clock(), "node.started", self.ident.name, {"address": self.address}
        )
        logger.info(
            "meshd ready name=%s domain=%s address=%s socket=%s version=%s",
            self.ident.name,
            self.ident.domain,
            self.address,
            self._socket_path,
            __version__,
        )

    async def _prune_events(self) -> None:
        """Keep the event log bounded (``store.events_keep``, ``store.events_max_age_s``)."""
        while True:
            try:
                dropped = self.store.prune_events(
                    self.cfg.store.events_keep, self.clock() - self.cfg.store.events_max_age_s
                )
                if dropped:
                    logger.debug("pruned events count=%d", dropped)
            except MeshdError as exc:  # a busy or failing disk: try again next time
                logger.warning("pruning the event log failed: %s", exc)
            await asyncio.sleep(60.0)

    async def _bind_mesh_port(self, host: str, port: int) -> socket.socket:
        """TCP and UDP on one port number; with port 0, retry until both are free."""
        assert self.mesh is not None
        for _ in range(20):
            tcp = _bind_tcp(host, port)
            try:
                await self.mesh.bind(host, tcp.getsockname()[1])
            except OSError as exc:
                tcp.close()
                if port != 0:
                    raise DaemonError(
                        f"can't listen on UDP {format_hostport(host, port)}: {exc.strerror}; "
                        "pick another --listen address or stop what holds the port"
                    ) from exc
                continue
            return tcp
        raise DaemonError(f"found no port free for both TCP and UDP on {host}")

    async def _start_dns(self, listen: str) -> None:
        # dnspython is imported only by nodes that serve DNS (--dns).
        from meshd.shell.dns import DnsServer  # noqa: PLC0415

        mesh = self.mesh
        assert mesh is not None

        async def resolve(q: names.NameQuery) -> list[names.Instance]:
            text = f"@{q.service}@{q.node}@{q.domain}" if q.node else f"@{q.service}@{q.domain}"
            return await mesh.resolve(text)

        self.dns = DnsServer(self.ident.domain, resolve, self.cfg.dns, self.metrics)
        try:
            await self.dns.start(listen)
        except OSError as exc:
            raise DaemonError(
                f"can't serve DNS on {listen}: {exc.strerror or exc}; pick a free address "
                "for --dns (port 53 needs root)"
            ) from exc

    async def stop(self) -> None:
        logger.info("meshd stopping name=%s", self.ident.name)
        self.ready = False
        if self.dns is not None:
            self.dns.stop()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self.fencing is not None:
            self.fencing.stop()
        if self.runner is not None:
            await self.runner.stop()  # workloads keep running: they outlive the daemon
        if self.placement is not None:
            self.placement.stop()
        if self.mesh is not None:
            try:
                await self.mesh.stop()
            except Exception:  # stopping must go on: the socket and store still need closing
                logger.exception("stopping the mesh failed")
        for listener in self._listeners:
            await listener.close()
        self._listeners = []
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._owns_socket:  # never remove a socket another process answers on
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()
            self._owns_socket = False
        with contextlib.suppress(MeshdError):
            self.store.append_event(self.clock(), "node.stopped", self.ident.name, {})
        logger.info("meshd stopped")

    def request_stop(self) -> None:
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        # What start-up built lives as long as the daemon: out of the collector's way
        # for good (gen-2 collections then walk only what is made from now on), and
        # the collector back on (``meshd run`` turned it off while importing).
        gc.freeze()
        gc.enable()
        try:
            await self._stopping.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()

    # -- views ----------------------------------------------------------------------

    def health_checks(self) -> dict[str, str]:
        checks = {}
        # A real write (meshd.adapters.store.probe): reading succeeds on a full disk too.
        try:
            if self.placement is not None:
                problem = self.placement.health.check()
            else:
                probe.probe(self.store, self.cfg.store.reserve_bytes, self.clock())
                problem = None
        except Exception as exc:  # noqa: BLE001 - a health check reports, it never raises
            problem = str(exc)
        checks["store"] = "ok" if problem is None else f"can't write: {problem}"
        checks["api"] = "ok" if self._runner is not None else "stopped"
        checks["startup"] = "ok" if self.ready else "starting"
        return checks

    def status(self) -> dict[str, Any]:
        cap = telemetry.capacity(self.cfg)
        members = roster.members(self.store)
        return {
            "name": self.ident.name,
            "domain": self.ident.domain,
            "node_id": self.ident.node_id,
            "address": self.address,
            "listen": self.listen,
            "uptime_s": round(self.uptime, 3),
            "started_at": self.started_at,
            "version": __version__,
            "preset": self.cfg.preset,
            "role": self.ident.info.role,
            "witness": self.cfg.witness,
            # Drained for maintenance (`meshd node drain`): bids on nothing.
            "draining": (
                self.placement.drains.draining(self.ident.name) if self.placement else False
            ),
            "ca_holder": self.ident.is_ca_holder,
            "ca_fingerprint": self.ident.ca_fingerprint,
            "capacity": cap.as_json(),
            "allocated": (
                self.placement.allocated()
                if self.placement
                else {"cpus": 0.0, "memory": 0, "disk": 0}
            ),
            "capabilities": (sorted(self.placement.capabilities.offers) if self.placement else []),
            # The DNS server's bound address (`meshd run --dns`), or None.
            "dns": (
                f"{self.dns.address[0]}:{self.dns.address[1]}"
                if self.dns is not None and self.dns.address
                else None
            ),
            "labels": self.cfg.label_map(),
            "members_alive": len(self.mesh.live_names()) if self.mesh else 1,
            "roster_size": len(members),
            # The sealing key's epoch: one more for each node removal (DESIGN.md §3).
            "key_epoch": self.mesh.keys.ring.current.epoch if self.mesh else 0,
            "rss_bytes": telemetry.rss_bytes(),
            # Whether the store can write (else the node refuses work, and says why).
            "store": (
                self.placement.health.as_json()
                if self.placement
                else {"writable": True, "problem": None, "since": None}
            ),
        }


async def serve(cfg: Config, ident: NodeIdentity) -> None:
    """Run a node until SIGTERM/SIGINT (what ``meshd run`` does)."""
    ensure_fd_room(cfg)
    loop_errors.install(asyncio.get_running_loop())
    lock = lock_data_dir(cfg.data_dir)
    try:
        with Store.open(cfg.store_path) as store:
            await Node(cfg, ident, store).run_until_stopped()
    finally:
        os.close(lock)
