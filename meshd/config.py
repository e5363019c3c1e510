"""The one configuration object: every knob of a node, in sections, with presets.

Shape
-----
:class:`Config` is frozen and holds the node-level fields (preset, data_dir, listen,
advertise, seeds, mdns, witness, labels, declared capacity, logging) and one frozen section
per area: ``security``, ``api``, ``store``, ``membership``, ``dht``, ``auction`` and
``drivers`` (itself holding ``process``, ``qemu`` and ``firecracker``). Each core gets
its own section (the membership core ``cfg.membership``, the auction core
``cfg.auction``, the DHT ``cfg.dht``), so what a core may depend on is visible in its
signature. Field names inside a section carry no prefix: ``cfg.auction.window_s``.
Units are in the names (``_s`` seconds, ``_bytes`` and the capacity sizes in bytes,
``_days`` days).

Layers
------
A config is built as preset → TOML file → command-line flags, then validated; every
value remembers which layer set it (``meshd config show``). In the TOML file node
fields are top-level keys and sections are tables (``[auction]``,
``[drivers.qemu]``); ``preset = "local"`` selects the base preset when no ``--preset``
flag is given. Flags name node fields directly (``listen``) and section fields with a
dot (``--set auction.window_s=300ms``). Sizes may be written ``"2GiB"``, durations
``"250ms"``; NaN and infinity are refused everywhere. A key from the flat layout of
meshd ≤ 0.1 (``auction_window_s``) is refused with a sentence naming its new place.

Presets (like memberlist's ``DefaultLANConfig``/``DefaultLocalConfig``)
------------------------------------------------------------------------
* ``lan`` — blades on a real LAN, the default of ``meshd run``: listen on every
  interface; the field defaults below are tuned for it (sub-millisecond round trips,
  one datagram per Ethernet frame, the host's own load scored in bids).
* ``local`` — many daemons on one machine over loopback (tests, demos, the
  16-daemon benchmarks): listen on 127.0.0.1; ``auction.host_telemetry`` off, because
  the host's load and free memory are everybody's, not this node's, and declared
  capacity must rule. Timers that only wait for a process on the same machine are
  shorter: enrolment (5 s), one API request (10 s), the shutdown grace (1 s), the DHT
  bootstrap backoff (capped at 2 s: seeds start within seconds of each other), and
  the clock-skew window (10 s: every daemon reads the same clock, so skew is only
  queueing delay; the shorter window also lets the replay memory cover a higher
  datagram rate). Full-state push-pull runs every 15 s instead of 30 (memberlist's
  local value: loopback bandwidth is free and restarted daemons converge sooner).
  The event log keeps 10,000 events for a day: many daemons share one disk, and
  demos read the recent past. Failure-detection timers (probe interval and timeout,
  suspicion) stay as on the LAN: with many daemons on a few cores, scheduling delay
  is the slow path, and shortening them would buy false suspicions.
* ``sim`` — the deterministic simulator: listen on port 0 (no socket is opened),
  no shutdown grace, ``auction.host_telemetry`` off (there is no host; scenarios
  declare capacities). Every protocol timer is the ``lan`` value on purpose: the
  simulator exists to show what the LAN deployment does under loss, partitions and
  crashes, so its figures must speak for ``lan``.

No timing constant lives anywhere else in the code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from meshd.errors import ConfigError
from meshd.units import parse_duration, parse_hostport, parse_size

DEFAULT_PORT = 7420
DEFAULT_DATA_DIR = Path("/var/lib/meshd")
DATA_DIR_ENV = "MESHD_DATA_DIR"
PRESETS = ("lan", "local", "sim")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
FIRECRACKER_BOOTS = ("config-file", "api")
# rpcudp's 8 KiB request cap minus a record's fixed fields (684 B) and RPC framing (64 B).
DHT_MAX_VALUE_LIMIT = 8192 - 684 - 64


def default_data_dir() -> Path:
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else DEFAULT_DATA_DIR


class _Section:
    """What every section (and Config) shares: ``replace`` keeps the frozen object."""

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


# -- sections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SecurityConfig(_Section):
    """Who may talk to us and for how long: certificates, tokens, message freshness."""

    # Validity of the mesh CA certificate, in days: a mesh outlives its hardware.
    ca_validity_days: int = 3650
    # Validity of node and client certificates, in days (the CA/Browser ceiling, 825).
    cert_validity_days: int = 825
    # Default lifetime of a join token when `meshd token create` gets no --ttl.
    token_ttl_s: float = 3600.0
    # Timeout of each enrolment request to the seed while joining.
    enrol_timeout_s: float = 10.0
    # Largest clock difference tolerated between nodes; messages stamped further from
    # our clock are dropped as stale or future. Also the replay memory's time window.
    max_clock_skew_s: float = 30.0
    # Nonces remembered for replay detection; beyond this the oldest are forgotten and
    # anything older is refused (bounded memory under flood).
    replay_cache_size: int = 65536


@dataclass(frozen=True)
class ApiConfig(_Section):
    """The HTTP API on the unix socket and the mesh port."""

    # Upper bound on serving one API request (guards the loop against stuck clients).
    request_timeout_s: float = 30.0
    # How long a stopping daemon lets in-flight requests finish before closing them.
    shutdown_grace_s: float = 5.0


@dataclass(frozen=True)
class StoreConfig(_Section):
    """The node's SQLite store."""

    # The event log (`meshd events`, GET /v1/events) keeps at most this many events and
    # none older than events_max_age_s; every node records one per placement in the
    # mesh, so without a bound it would grow for ever. Checked once a minute.
    events_keep: int = 100_000
    events_max_age_s: float = 7 * 86400.0


@dataclass(frozen=True)
class MembershipConfig(_Section):
    """meshd.core.membership: SWIM with the Lifeguard extensions."""

    # Time between probes of one member (round-robin over a shuffled list).
    probe_interval_s: float = 0.5
    # Wait for a direct ack before asking k others to probe indirectly.
    probe_timeout_s: float = 0.2
    # Members asked to probe indirectly when the direct probe times out.
    indirect_probes: int = 5
    # Suspicion timeout (Lifeguard §4.2): starts at
    # suspicion_max_mult·log10(max(N,10))·probe_interval and shrinks towards
    # suspicion_mult·log10(max(N,10))·probe_interval as independent confirmations
    # arrive; `suspicion_confirmations` of them reach the minimum.
    suspicion_mult: float = 2.5
    suspicion_max_mult: float = 6.0
    suspicion_confirmations: int = 3
    # Lifeguard local health: probe timeout and interval scale by up to this factor
    # when this node misses acks or is itself suspected (it may be the slow one).
    awareness_max: int = 8
    # Gossip: every interval, piggyback pending broadcasts to this many random members.
    gossip_interval_s: float = 0.2
    gossip_nodes: int = 3
    # Each broadcast is retransmitted retransmit_mult * ceil(log10(N+1)) times.
    retransmit_mult: int = 4
    # Full state exchange with one random member (push-pull), and at join.
    push_pull_interval_s: float = 30.0
    # Anti-entropy for removals: gossip is best effort, so every interval each node that
    # knows revocations pushes them all to one random live member (mTLS).
    revocation_sync_interval_s: float = 10.0
    # A dead or left member's entry is forgotten after this long (its roster row stays).
    dead_reclaim_s: float = 3600.0
    # Largest membership datagram payload before signing and sealing. The compact
    # signature adds ~120 B and sealing 49 B, so 1200 keeps a datagram within one
    # 1500-byte Ethernet frame with IP/UDP headers: no fragments.
    max_gossip_bytes: int = 1200


@dataclass(frozen=True)
class DhtConfig(_Section):
    """meshd.adapters.dht: Kademlia with signed records."""

    # Kademlia bucket size k and lookup parallelism alpha (the paper's defaults).
    ksize: int = 20
    alpha: int = 3
    # One RPC's timeout: on a LAN a live peer answers in well under a millisecond, so
    # 0.5 s only waits for the dead (bare kademlia's fixed 5 s made 25 % of gets slow).
    rpc_timeout_s: float = 0.5
    # Bootstrap retries with exponential backoff from `initial` up to `max` between
    # attempts, for as long as no seed answers (seeds may start after us).
    bootstrap_initial_s: float = 0.25
    bootstrap_max_s: float = 10.0
    # A contact that failed an RPC is not re-learnt from third parties for this long.
    dead_contact_s: float = 30.0
    # Default lifetime of a record; its author republishes it at `republish_fraction`.
    record_ttl_s: float = 300.0
    republish_fraction: float = 0.5
    # Bounded storage: records held per node, per author, and the size of one value.
    max_records: int = 100_000
    max_records_per_author: int = 10_000
    max_value_bytes: int = 4096
    # Routing table refresh (bare kademlia: hourly).
    refresh_interval_s: float = 600.0


@dataclass(frozen=True)
class AuctionConfig(_Section):
    """meshd.core.auction: placement by auction, and the shell around it."""

    # How long an originator waits for bids before it closes the round with what it
    # has (a round also closes as soon as every candidate answered). 250 ms is the
    # Aether scheduler's window (DESIGN.md §12): many LAN round trips, short for a client.
    window_s: float = 0.25
    # How long the originator waits for the winner's Accept/Refuse before it withdraws
    # the award and tries the next-best bidder.
    award_timeout_s: float = 1.0
    # An award that fits one datagram travels as one (no TLS round trips) and is sent
    # again after this long without an answer, then after twice as long, and so on until
    # the award timeout; the winner answers every copy (committing is idempotent).
    award_resend_s: float = 0.1
    # Lifetime of a bidder's hold. It must outlive the window and both award attempts
    # (winner, then next-best), so a hold never expires under a live award; holds of an
    # originator that crashed go away on their own after this long.
    hold_ttl_s: float = 5.0
    # How long a winner that accepted waits for the originator's confirmation before it
    # broadcasts the placement itself (the originator may have crashed after the award).
    # Longer than the award timeout, so a live originator withdraws a late award first.
    confirm_timeout_s: float = 3.0
    # Up to this many eligible members, every one is asked to bid; beyond it a random
    # sample of ceil(sample_d * log2 N) (Sparrow's power of d choices). Measured on 16
    # daemons: asking the 8 sampled instead of all 16 cut the decision p50 from 30 to
    # 22 ms and raised throughput by ~40 %, for a packing loss the quality benchmark
    # bounds (benchmarks/bench_placement_quality.py).
    full_mesh_max: int = 8
    sample_d: float = 2.0
    # How far each resource may be promised beyond capacity (1.0: never overcommit).
    # CPU is commonly overcommitted for idle VMs; memory and disk rarely should be.
    cpu_overcommit: float = 1.0
    memory_overcommit: float = 1.0
    disk_overcommit: float = 1.0
    # Rounds per auction: a round whose sample finds no fit is followed by a wider one
    # (doubled; the last asks every eligible member). Rounds that fail only because
    # concurrent rounds hold capacity are retried for up to hold_ttl_s on top.
    max_rounds: int = 2
    # Score bids from the host's live load, free memory and disk (psutil) as well as the
    # ledger. Off when several daemons share one machine (the `local` preset): the
    # host's load is then everybody's, not this node's, and declared capacity rules.
    host_telemetry: bool = True
    # Anti-entropy: every interval the shell compares placement views with one random
    # member (bucket digests; only the buckets that differ travel), so nodes that
    # missed a confirmation (partition, restart) converge.
    sync_interval_s: float = 10.0
    # While this node's own auctions are in flight, a new submission waits this long
    # so the ones arriving together start together and share datagrams (an idle
    # originator starts at once: a lone submission never waits). 0: no batching.
    batch_linger_s: float = 0.005
    # Holds, bids and this node's copy of the placement view are written to the store
    # in groups, at most this long after they changed (promises are written at once;
    # see meshd/shell/journal.py for why losing these moments to a crash is safe).
    journal_lag_s: float = 0.05
    # Round records an originator keeps, in memory (`meshd auctions`) and on disk; older
    # final ones are pruned, leaving only their awarded generations (so none is
    # handed out twice). Nomad's evaluation GC plays the same part.
    rounds_keep: int = 1000


@dataclass(frozen=True)
class ProcessDriverConfig(_Section):
    """meshd.adapters.drivers.process: workloads as host processes."""

    # Exit detection period where pidfds are missing (kernels before 5.3, reattach).
    poll_interval_s: float = 0.5
    # Graceful-stop budget of destroy (SIGTERM, then SIGKILL).
    destroy_timeout_s: float = 10.0
    # How long SIGKILL may take before stop gives up (a process in D state).
    kill_wait_s: float = 5.0


@dataclass(frozen=True)
class QemuDriverConfig(_Section):
    """meshd.adapters.drivers.qemu: every timing bounds a wait on something outside us."""

    # The QEMU binary; unset: $MESHD_QEMU, else qemu-system-x86_64 on PATH.
    binary: str | None = None
    # Attach every guest's tap to this bridge (root only); unset: $MESHD_QEMU_BRIDGE,
    # else user-mode networking unless the workload names a bridge.
    bridge: str | None = None
    # qemu-img, genisoimage, ip: milliseconds normally; a hung NFS is not.
    tool_timeout_s: float = 30.0
    # The `qemu -daemonize` parent must exit within this.
    launch_timeout_s: float = 15.0
    # The QMP greeting; a socket held by another client hangs.
    qmp_connect_timeout_s: float = 2.0
    # One QMP command (query-status, quit).
    qmp_command_timeout_s: float = 2.0
    # How often the console is read for the ready marker while booting.
    console_poll_s: float = 0.02
    # How often /proc/<pid>/stat is read while waiting for an exit.
    exit_poll_s: float = 0.02
    # After `quit`, SIGKILL if QEMU is still there.
    quit_timeout_s: float = 2.0
    # After SIGKILL, give up (the process is a zombie or in D state).
    kill_timeout_s: float = 5.0
    # destroy's ACPI grace; 0 sends `quit` at once (the guest's data is going anyway).
    destroy_grace_s: float = 0.0
    # How long a guest has to print its ready marker when its spec names no
    # boot_timeout_s: a cloud image's first boot under TCG takes tens of seconds.
    boot_timeout_s: float = 60.0


@dataclass(frozen=True)
class FirecrackerDriverConfig(_Section):
    """meshd.adapters.drivers.firecracker: microVMs through Firecracker's API."""

    # The firecracker binary; unset: $MESHD_FIRECRACKER, else `firecracker` on PATH.
    binary: Path | None = None
    # "config-file": --config-file boots at once; "api": configure over the API, then start.
    boot: str = "config-file"
    # The KVM device checked before create/start.
    kvm_device: Path = Path("/dev/kvm")
    # Accept kvm_pvm's /dev/kvm anyway (stock guests do not boot under it).
    allow_kvm_pvm: bool = False
    # Time limit of one API request.
    api_timeout_s: float = 5.0
    # Between checks while waiting (API up, ready marker, process gone).
    boot_poll_s: float = 0.05
    # Between checks that a running VM's process still lives.
    poll_interval_s: float = 0.5
    # After SIGTERM before SIGKILL, and after SIGKILL before giving up.
    term_grace_s: float = 3.0
    # Graceful time destroy() gives a running VM before signals (0: signals at once).
    destroy_timeout_s: float = 0.0
    # How long a guest has to print its ready marker when its spec names no
    # boot_timeout_s (a microVM boots in well under a second; slow storage does not).
    boot_timeout_s: float = 60.0


@dataclass(frozen=True)
class DriversConfig(_Section):
    """The workload drivers' knobs; the registry hands each driver its own."""

    # Graceful-stop budget of `meshd workload stop` (ACPI power button, SIGTERM) when the
    # request names none; the driver forces the stop after it. A guest OS shutting down
    # cleanly takes seconds to tens of seconds.
    stop_timeout_s: float = 30.0
    process: ProcessDriverConfig = field(default_factory=ProcessDriverConfig)
    qemu: QemuDriverConfig = field(default_factory=QemuDriverConfig)
    firecracker: FirecrackerDriverConfig = field(default_factory=FirecrackerDriverConfig)


# -- the config -------------------------------------------------------------------------


@dataclass(frozen=True)
class Config(_Section):
    """Every knob of a node: node fields here, the rest in one section per area."""

    # Which preset this config started from; informational.
    preset: str = "lan"
    # Where the identity, the store and the API socket live (--data-dir or
    # $MESHD_DATA_DIR; not settable in the file, which lives there).
    data_dir: Path = field(default_factory=default_data_dir)
    # The mesh address: UDP (datagrams) and TCP (mTLS API, enrolment) on one port.
    # Port 0 asks the OS for a free port (tests); the bound port is recorded in the store.
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    # The address peers should use when `listen` is a wildcard or behind NAT; None picks
    # the listen address, or the first non-loopback IPv4 address when listening on 0.0.0.0.
    advertise: str | None = None
    # Seed addresses (HOST:PORT) to join through; the join token's seeds are added.
    seeds: tuple[str, ...] = ()
    # Announce and browse mDNS on the interface holding this address; None disables mDNS.
    mdns: str | None = None
    # A witness votes and serves as a seed but never bids or runs workloads.
    witness: bool = False
    # Labels the operator sets on this node ("rack=a", "ssd=yes"): a workload submitted
    # with --label K=V is placed only on nodes carrying every label it names.
    labels: tuple[str, ...] = ()

    # Declared capacity (labs, tests): CPUs, memory bytes, disk bytes; None means
    # measured from the host with psutil.
    cpus: float | None = None
    memory: int | None = None
    disk: int | None = None

    # Logging: level and format (`text` is key=value for humans, `json` for collectors).
    log_level: str = "info"
    log_format: str = "text"

    security: SecurityConfig = field(default_factory=SecurityConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    dht: DhtConfig = field(default_factory=DhtConfig)
    auction: AuctionConfig = field(default_factory=AuctionConfig)
    drivers: DriversConfig = field(default_factory=DriversConfig)

    def override(self, values: Mapping[str, Any]) -> Config:
        """A copy with ``{"auction.window_s": "300ms", "listen": ...}`` applied.

        Keys are dotted paths; values are coerced as in the TOML file (durations,
        sizes). Not validated: call :meth:`validate` on the result.
        """
        new: Config = _apply(self, {key: _coerce(key, value) for key, value in values.items()})
        return new

    def get(self, key: str) -> Any:
        """The value at a dotted path (``"auction.window_s"``)."""
        obj: Any = self
        for part in _leaf(key).split("."):
            obj = getattr(obj, part)
        return obj

    def items(self) -> Iterator[tuple[str, Any]]:
        """Every leaf value as ``("section.field", value)``, in declaration order."""
        for key in KEYS:
            yield key, self.get(key)

    def label_map(self) -> dict[str, str]:
        """``labels`` as a mapping; ConfigError for one that is not KEY=VALUE."""
        out = {}
        for item in self.labels:
            key, sep, value = item.partition("=")
            if not sep or not key or not value or len(item.encode()) > 255:
                raise ConfigError(f"a label must be KEY=VALUE (at most 255 bytes), got {item!r}")
            out[key] = value
        return out

    def validate(self) -> Config:
        """Return self if every knob is sane; else raise ConfigError naming the knob."""
        for key, value in self.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; use one of {', '.join(PRESETS)}")
        parse_hostport(self.listen, "listen")
        if self.advertise is not None:
            host, port = parse_hostport(self.advertise, "advertise")
            if port == 0 or host in ("0.0.0.0", "::"):  # noqa: S104 - refusing a wildcard
                raise ConfigError("advertise must be a concrete HOST:PORT peers can reach")
        for seed in self.seeds:
            host, port = parse_hostport(seed, "seed")
            if port == 0:
                raise ConfigError(f"seed {seed!r} needs a port")
        self.label_map()
        for name in ("cpus", "memory", "disk"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive when declared")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        # Every count and timing must be positive, except those below that say otherwise.
        may_be_zero = {
            "api.shutdown_grace_s",
            "auction.batch_linger_s",
            "drivers.qemu.destroy_grace_s",
            "drivers.firecracker.destroy_timeout_s",
        }
        for key, value in self.items():
            if key in _NODE_KEYS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if key in may_be_zero:
                if value < 0:
                    raise ConfigError(f"{key} must not be negative, got {value!r}")
            elif value <= 0:
                raise ConfigError(f"{key} must be positive, got {value!r}")
        _check_relations(self)
        return self

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "meshd.sock"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "meshd.db"


def _check_relations(cfg: Config) -> None:
    """The knobs that constrain each other; each message names both and says why."""
    sec, a, d, m = cfg.security, cfg.auction, cfg.dht, cfg.membership
    if sec.cert_validity_days > sec.ca_validity_days:
        raise ConfigError("security.cert_validity_days can't exceed security.ca_validity_days")
    if m.probe_timeout_s >= m.probe_interval_s:
        raise ConfigError(
            "membership.probe_timeout_s must be shorter than membership.probe_interval_s"
        )
    if m.suspicion_max_mult < m.suspicion_mult:
        raise ConfigError("membership.suspicion_max_mult can't be below membership.suspicion_mult")
    if d.max_value_bytes > DHT_MAX_VALUE_LIMIT:
        raise ConfigError(
            f"dht.max_value_bytes can be at most {DHT_MAX_VALUE_LIMIT}: a record must fit "
            "one 8 KiB DHT datagram with its signature and framing"
        )
    if not 0 < d.republish_fraction < 1:
        raise ConfigError("dht.republish_fraction must be between 0 and 1")
    if a.hold_ttl_s <= a.window_s + 2 * a.award_timeout_s:
        raise ConfigError(
            "auction.hold_ttl_s must exceed auction.window_s + 2 x auction.award_timeout_s "
            "(a hold must outlive the window and both award attempts)"
        )
    if a.award_resend_s >= a.award_timeout_s:
        raise ConfigError(
            "auction.award_resend_s must be shorter than auction.award_timeout_s "
            "(an award is sent again before it is given up)"
        )
    if a.confirm_timeout_s <= a.award_timeout_s:
        raise ConfigError(
            "auction.confirm_timeout_s must exceed auction.award_timeout_s "
            "(a live originator withdraws a late award before the winner confirms it)"
        )
    fc = cfg.drivers.firecracker
    if fc.boot not in FIRECRACKER_BOOTS:
        raise ConfigError(
            f"drivers.firecracker.boot must be one of {', '.join(FIRECRACKER_BOOTS)}, "
            f"got {fc.boot!r}"
        )


# -- presets ----------------------------------------------------------------------------


def lan() -> Config:
    """Blades on a LAN: listen on every interface; the field defaults."""
    return Config(preset="lan")


def local() -> Config:
    """Many daemons on one machine over loopback; see the module docstring for why."""
    base = Config()
    return base.replace(
        preset="local",
        listen=f"127.0.0.1:{DEFAULT_PORT}",
        security=base.security.replace(enrol_timeout_s=5.0, max_clock_skew_s=10.0),
        api=base.api.replace(request_timeout_s=10.0, shutdown_grace_s=1.0),
        store=base.store.replace(events_keep=10_000, events_max_age_s=86400.0),
        membership=base.membership.replace(push_pull_interval_s=15.0),
        dht=base.dht.replace(bootstrap_max_s=2.0),
        auction=base.auction.replace(host_telemetry=False),
    )


def sim() -> Config:
    """The deterministic simulator: no sockets, no host; protocol timers as on a LAN."""
    base = Config()
    return base.replace(
        preset="sim",
        listen="127.0.0.1:0",
        api=base.api.replace(shutdown_grace_s=0.0),
        auction=base.auction.replace(host_telemetry=False),
    )


_PRESET_FACTORIES = {"lan": lan, "local": local, "sim": sim}


def preset(name: str) -> Config:
    try:
        return _PRESET_FACTORIES[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}") from None


# -- the schema: dotted keys, their types, the old flat names ----------------------------


def _walk(cls: type, prefix: str = "") -> Iterator[tuple[str, Any]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            yield from _walk(hint, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hint


_TYPES: dict[str, Any] = dict(_walk(Config))
KEYS: tuple[str, ...] = tuple(_TYPES)
SECTIONS: tuple[str, ...] = tuple(
    sorted({k.rsplit(".", 1)[0] for k in KEYS if "." in k} | {"drivers"})
)
_NODE_KEYS = frozenset(k for k in KEYS if "." not in k)
# Keys that only the command line sets (the file lives in the data dir).
_FLAG_ONLY = frozenset({"data_dir"})
_SIZE_KEYS = frozenset({"memory", "disk"})

# The flat names of meshd ≤ 0.1's config, and where each lives now.
_MOVED_PREFIXED = {"dht_": "dht", "auction_": "auction"}
_MOVED_PLAIN = {
    "ca_validity_days": "security",
    "cert_validity_days": "security",
    "token_ttl_s": "security",
    "enrol_timeout_s": "security",
    "max_clock_skew_s": "security",
    "replay_cache_size": "security",
    "api_request_timeout_s": "api.request_timeout_s",
    "shutdown_grace_s": "api",
    "events_keep": "store",
    "events_max_age_s": "store",
    "cpu_overcommit": "auction",
    "memory_overcommit": "auction",
    "disk_overcommit": "auction",
    "host_telemetry": "auction",
}


def moved_to(key: str) -> str | None:
    """Where a flat key of the old layout lives now (``"auction.window_s"``), or None."""
    if key in _MOVED_PLAIN:
        place = _MOVED_PLAIN[key]
        return place if "." in place else f"{place}.{key}"
    for prefix, section in _MOVED_PREFIXED.items():
        if key.startswith(prefix) and f"{section}.{key[len(prefix) :]}" in _TYPES:
            return f"{section}.{key[len(prefix) :]}"
    if f"membership.{key}" in _TYPES:
        return f"membership.{key}"
    return None


def _place(key: str) -> str:
    """``auction.window_s`` as an operator writes it in the file: ``[auction] window_s``."""
    section, _, name = key.rpartition(".")
    return f"[{section}] {name}" if section else name


def _unknown(key: str, where: str = "") -> ConfigError:
    """The sentence for a key that is not a setting: moved, a section, or unknown."""
    new = moved_to(key)
    if new is not None:
        return ConfigError(f"{key} moved to {_place(new)}{where}")
    if key in SECTIONS:
        return ConfigError(f"{key} is a section ([{key}]), not a value{where}")
    section, _, name = key.rpartition(".")
    if section and section not in SECTIONS:
        return ConfigError(f"unknown section [{section}]{where}; sections: {', '.join(SECTIONS)}")
    if section:
        known = [k.rpartition(".")[2] for k in KEYS if k.rpartition(".")[0] == section]
        known += [f"[{s}]" for s in SECTIONS if s.rpartition(".")[0] == section]
        return ConfigError(
            f"unknown key {name!r} in [{section}]{where}; known keys: {', '.join(known)}"
        )
    return ConfigError(
        f"unknown key {key!r}{where}; top-level keys: {', '.join(sorted(_NODE_KEYS))}; "
        f"sections: {', '.join(SECTIONS)}"
    )


def _leaf(key: str) -> str:
    if key not in _TYPES:
        raise _unknown(key)
    return key


def _finite(key: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")


def _coerce(key: str, value: Any) -> Any:
    """Turn a TOML or flag value into the field's type, or raise a readable ConfigError."""
    hint = _TYPES[_leaf(key)]
    name = key.rpartition(".")[2]
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    if optional:
        if value is None:
            return None
        (hint,) = [t for t in typing.get_args(hint) if t is not type(None)]
    _finite(key, value)
    if key in _SIZE_KEYS or (name.endswith("_bytes") and isinstance(value, str)):
        return parse_size(value, key)
    if name.endswith("_s"):
        return parse_duration(value, key)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{key} must be a path, got {value!r}")
        return Path(value)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            what = '"KEY=VALUE"' if key == "labels" else "HOST:PORT"
            raise ConfigError(f"{key} must be a list of {what} strings")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _apply(obj: Any, values: Mapping[str, Any]) -> Any:
    """``obj`` with dotted ``values`` set, rebuilding each frozen section on the way."""
    here: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        head, dot, rest = key.partition(".")
        if dot:
            nested.setdefault(head, {})[rest] = value
        else:
            here[head] = value
    for head, sub in nested.items():
        here[head] = _apply(getattr(obj, head), sub)
    return dataclasses.replace(obj, **here) if here else obj


# -- the file and the layers -------------------------------------------------------------


def _flatten(raw: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """A parsed TOML document as ``{"section.field": value}``, refusing unknown keys."""
    out: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            if key not in SECTIONS:
                if key in _TYPES:
                    raise ConfigError(f"{key} must be a value, not a table{where}")
                raise (
                    _unknown(key, where)
                    if moved_to(key)
                    else ConfigError(
                        f"unknown section [{key}]{where}; sections: {', '.join(SECTIONS)}"
                    )
                )
            out.update(_flatten(value, where, f"{key}."))
        elif key in _TYPES:
            if key in _FLAG_ONLY:
                raise ConfigError(
                    f"{key} can't be set in the config file{where}; "
                    f"use --data-dir or ${DATA_DIR_ENV}"
                )
            out[key] = value
        elif key in SECTIONS:
            raise ConfigError(f"{key} is a section: write it as [{key}]{where}")
        else:
            raise _unknown(key, where)
    return out


def read_file(path: Path) -> dict[str, Any]:
    """The file's settings as ``{"section.field": raw value}``; every key checked."""
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"can't read config file {path}: {exc.strerror}") from exc
    return _flatten(raw, f" in {path}")


@dataclass(frozen=True)
class Resolved:
    """A validated config and, for every dotted key, the layer that set its value."""

    config: Config
    # "preset:lan", "file:/var/lib/meshd/meshd.toml", "flag", "env:MESHD_DATA_DIR".
    sources: Mapping[str, str]


def resolve(
    path: Path | None = None,
    preset_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    override_sources: Mapping[str, str] | None = None,
) -> Resolved:
    """Preset, then file, then flags (``overrides``; None values ignored), validated.

    ``override_sources`` labels overrides that did not come from a flag (an
    environment variable, say); the rest are labelled ``flag``.
    """
    file_values = read_file(path) if path is not None else {}
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    chosen = flags.pop("preset", None) or preset_name
    if chosen is not None:
        name, name_source = str(chosen), "flag"
    elif "preset" in file_values:
        name, name_source = str(file_values["preset"]), f"file:{path}"
    else:
        name, name_source = "lan", "preset:lan"
    file_values.pop("preset", None)
    cfg = preset(name)
    sources = dict.fromkeys(KEYS, f"preset:{name}")
    sources["preset"] = name_source
    values: dict[str, Any] = {}
    for key, value in file_values.items():
        values[key] = _coerce(key, value)
        sources[key] = f"file:{path}"
    for key, value in flags.items():
        values[key] = _coerce(key, value)
        sources[key] = (override_sources or {}).get(key, "flag")
    new: Config = _apply(cfg, values)
    return Resolved(new.validate(), sources)


def load(
    path: Path | None = None,
    preset_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Preset, then file, then flags (``overrides``, None values ignored), validated."""
    return resolve(path, preset_name, overrides).config


def parse_assignment(text: str) -> tuple[str, Any]:
    """``--set auction.window_s=300ms``: the key and its value, typed as TOML would.

    A value that is not a TOML literal (``300ms``, ``10.0.0.1:7420``) is a string.
    """
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise ConfigError(f"--set wants KEY=VALUE (e.g. auction.window_s=300ms), got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


# -- showing a config (`meshd config show`) ---------------------------------------------


def _plain(value: Any) -> Any:
    """A value as JSON has it: paths as strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def as_json(resolved: Resolved) -> dict[str, dict[str, Any]]:
    """``{"auction.window_s": {"value": 0.25, "source": "preset:lan"}, ...}``, every key."""
    return {
        key: {"value": _plain(value), "source": resolved.sources[key]}
        for key, value in resolved.config.items()
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(_plain(value))  # JSON strings and string lists are TOML values


def as_toml(resolved: Resolved) -> str:
    """The effective config as a TOML document, grouped by section, each value's source
    in a comment on its right. Unset values and ``data_dir`` (which only a flag or the
    environment sets) are comments, so the text loads back as a config file."""
    rows: list[tuple[str, str]] = [
        ("# The effective configuration (preset, then file, then flags); each value's", ""),
        ("# source is on its right. Loadable as meshd.toml.", ""),
        ("", ""),
    ]
    section = ""
    for key, value in resolved.config.items():
        head, _, name = key.rpartition(".")
        if head != section:
            rows.append(("", ""))
            rows.append((f"[{head}]", ""))
            section = head
        source = resolved.sources[key]
        if value is None:
            rows.append((f"# {name} is not set", source))
        elif key in _FLAG_ONLY:
            rows.append((f"# {name} = {_toml_value(value)}", source))
        else:
            rows.append((f"{name} = {_toml_value(value)}", source))
    width = max(len(text) for text, source in rows if source)
    lines = [f"{text:<{width}}  # {source}" if source else text for text, source in rows]
    return "\n".join(lines) + "\n"
