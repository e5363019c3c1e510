"""The one configuration object: every knob of a node, with presets.

Like memberlist's ``DefaultLANConfig``/``DefaultLocalConfig``, a preset is a complete,
coherent set of values for one kind of deployment:

* ``lan``: blades on a real LAN (the default for ``meshd run``);
* ``local``: many daemons on one machine over loopback (tests, demos);
* ``sim``: the deterministic simulator (virtual time, no sockets).

A config is built as preset → TOML file → command-line flags, then validated; the
result is frozen. No timing constant lives anywhere else in the code.

The TOML file uses the field names below as top-level keys. Sizes may be written as
``"2GiB"`` and durations as ``"250ms"``; ``preset = "local"`` in the file selects the
base preset when no ``--preset`` flag is given.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshd.errors import ConfigError
from meshd.units import parse_duration, parse_hostport, parse_size

DEFAULT_PORT = 7420
DEFAULT_DATA_DIR = Path("/var/lib/meshd")
PRESETS = ("lan", "local", "sim")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
# rpcudp's 8 KiB request cap minus a record's fixed fields (684 B) and RPC framing (64 B).
DHT_MAX_VALUE_LIMIT = 8192 - 684 - 64


def default_data_dir() -> Path:
    env = os.environ.get("MESHD_DATA_DIR")
    return Path(env) if env else DEFAULT_DATA_DIR


@dataclass(frozen=True)
class Config:
    """Every knob of a node. Units are in the field names (``_s`` seconds, bytes)."""

    # Which preset this config started from; informational.
    preset: str = "lan"
    # Where the identity, the store and the API socket live.
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

    # Declared capacity (labs, tests); None means measured from the host with psutil.
    cpus: float | None = None
    memory: int | None = None
    disk: int | None = None

    # Validity of the mesh CA certificate, in days: a mesh outlives its hardware.
    ca_validity_days: int = 3650
    # Validity of node and client certificates, in days (the CA/Browser ceiling, 825).
    cert_validity_days: int = 825
    # Default lifetime of a join token when `meshd token create` gets no --ttl.
    token_ttl_s: float = 3600.0

    # Largest clock difference tolerated between nodes; messages stamped further from
    # our clock are dropped as stale or future. Also the replay memory's time window.
    max_clock_skew_s: float = 30.0
    # Nonces remembered for replay detection; beyond this the oldest are forgotten and
    # anything older is refused (bounded memory under flood).
    replay_cache_size: int = 65536

    # Upper bound on serving one API request (guards the loop against stuck clients).
    api_request_timeout_s: float = 30.0
    # Timeout of each enrolment request to the seed while joining.
    enrol_timeout_s: float = 10.0
    # How long a stopping daemon lets in-flight requests finish before closing them.
    shutdown_grace_s: float = 5.0
    # The event log (`meshd events`, GET /v1/events) keeps at most this many events and
    # none older than events_max_age_s; every node records one per placement in the
    # mesh, so without a bound it would grow for ever. Checked once a minute.
    events_keep: int = 100_000
    events_max_age_s: float = 7 * 86400.0

    # -- dht (meshd.dht) ------------------------------------------------------------
    # Kademlia bucket size k and lookup parallelism alpha (the paper's defaults).
    dht_ksize: int = 20
    dht_alpha: int = 3
    # One RPC's timeout: on a LAN a live peer answers in well under a millisecond, so
    # 0.5 s only waits for the dead (bare kademlia's fixed 5 s made 25 % of gets slow).
    dht_rpc_timeout_s: float = 0.5
    # Bootstrap retries with exponential backoff from `initial` up to `max` between
    # attempts, for as long as no seed answers (seeds may start after us).
    dht_bootstrap_initial_s: float = 0.25
    dht_bootstrap_max_s: float = 10.0
    # A contact that failed an RPC is not re-learnt from third parties for this long.
    dht_dead_contact_s: float = 30.0
    # Default lifetime of a record; its author republishes it at `republish_fraction`.
    dht_record_ttl_s: float = 300.0
    dht_republish_fraction: float = 0.5
    # Bounded storage: records held per node, per author, and the size of one value.
    dht_max_records: int = 100_000
    dht_max_records_per_author: int = 10_000
    dht_max_value_bytes: int = 4096
    # Routing table refresh (bare kademlia: hourly).
    dht_refresh_interval_s: float = 600.0

    # -- membership (meshd.membership, SWIM + Lifeguard) -----------------------------
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

    # -- placement (meshd.auction) --------------------------------------------------
    # How long an originator waits for bids before it closes the round with what it
    # has (a round also closes as soon as every candidate answered). 250 ms is the
    # Aether scheduler's window (DESIGN.md §12): many LAN round trips, short for a client.
    auction_window_s: float = 0.25
    # How long the originator waits for the winner's Accept/Refuse before it withdraws
    # the award and tries the next-best bidder.
    auction_award_timeout_s: float = 1.0
    # An award that fits one datagram travels as one (no TLS round trips) and is sent
    # again after this long without an answer, then after twice as long, and so on until
    # the award timeout; the winner answers every copy (committing is idempotent).
    auction_award_resend_s: float = 0.1
    # Lifetime of a bidder's hold. It must outlive the window and both award attempts
    # (winner, then next-best), so a hold never expires under a live award; holds of an
    # originator that crashed go away on their own after this long.
    auction_hold_ttl_s: float = 5.0
    # How long a winner that accepted waits for the originator's confirmation before it
    # broadcasts the placement itself (the originator may have crashed after the award).
    # Longer than the award timeout, so a live originator withdraws a late award first.
    auction_confirm_timeout_s: float = 3.0
    # Up to this many eligible members, every one is asked to bid; beyond it a random
    # sample of ceil(auction_sample_d * log2 N) (Sparrow's power of d choices). Measured
    # on 16 daemons: asking the 8 sampled instead of all 16 cut the decision p50 from
    # 30 to 22 ms and raised throughput by ~40 %, for a packing loss the quality
    # benchmark bounds (benchmarks/bench_placement_quality.py).
    auction_full_mesh_max: int = 8
    auction_sample_d: float = 2.0
    # How far each resource may be promised beyond capacity (1.0: never overcommit).
    # CPU is commonly overcommitted for idle VMs; memory and disk rarely should be.
    cpu_overcommit: float = 1.0
    memory_overcommit: float = 1.0
    disk_overcommit: float = 1.0
    # Rounds per auction: a round whose sample finds no fit is followed by a wider one
    # (doubled; the last asks every eligible member). Rounds that fail only because
    # concurrent rounds hold capacity are retried for up to auction_hold_ttl_s on top.
    auction_max_rounds: int = 2
    # Score bids from the host's live load, free memory and disk (psutil) as well as the
    # ledger. Off when several daemons share one machine (the `local` preset): the
    # host's load is then everybody's, not this node's, and declared capacity rules.
    host_telemetry: bool = True
    # Anti-entropy: every interval the shell compares placement views with one random
    # member (bucket digests; only the buckets that differ travel), so nodes that
    # missed a confirmation (partition, restart) converge.
    auction_sync_interval_s: float = 10.0
    # While this node's own auctions are in flight, a new submission waits this long
    # so the ones arriving together start together and share datagrams (an idle
    # originator starts at once: a lone submission never waits).
    auction_batch_linger_s: float = 0.005
    # Holds, bids and this node's copy of the placement view are written to the store
    # in groups, at most this long after they changed (promises are written at once;
    # see meshd/journal.py for why losing these moments to a crash is safe).
    auction_journal_lag_s: float = 0.05
    # Round records an originator keeps, in memory (`meshd auctions`) and on disk; older
    # final ones are pruned, leaving only their awarded generations (so none is
    # handed out twice). Nomad's evaluation GC plays the same part.
    auction_rounds_keep: int = 1000

    # Logging: level and format (`text` is key=value for humans, `json` for collectors).
    log_level: str = "info"
    log_format: str = "text"

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

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
        positive = (
            "ca_validity_days",
            "cert_validity_days",
            "token_ttl_s",
            "max_clock_skew_s",
            "replay_cache_size",
            "api_request_timeout_s",
            "enrol_timeout_s",
            "events_keep",
            "events_max_age_s",
            "dht_ksize",
            "dht_alpha",
            "dht_rpc_timeout_s",
            "dht_bootstrap_initial_s",
            "dht_bootstrap_max_s",
            "dht_dead_contact_s",
            "dht_record_ttl_s",
            "dht_max_records",
            "dht_max_records_per_author",
            "dht_max_value_bytes",
            "dht_refresh_interval_s",
            "probe_interval_s",
            "probe_timeout_s",
            "indirect_probes",
            "suspicion_mult",
            "suspicion_max_mult",
            "suspicion_confirmations",
            "awareness_max",
            "gossip_interval_s",
            "gossip_nodes",
            "retransmit_mult",
            "push_pull_interval_s",
            "revocation_sync_interval_s",
            "dead_reclaim_s",
            "max_gossip_bytes",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        # -- placement (meshd.auction)
        for name in (
            "auction_window_s",
            "auction_award_timeout_s",
            "auction_award_resend_s",
            "auction_hold_ttl_s",
            "auction_confirm_timeout_s",
            "auction_full_mesh_max",
            "auction_sample_d",
            "cpu_overcommit",
            "memory_overcommit",
            "disk_overcommit",
            "auction_max_rounds",
            "auction_sync_interval_s",
            "auction_journal_lag_s",
            "auction_rounds_keep",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.auction_hold_ttl_s <= self.auction_window_s + 2 * self.auction_award_timeout_s:
            raise ConfigError(
                "auction_hold_ttl_s must exceed auction_window_s + 2 x auction_award_timeout_s "
                "(a hold must outlive the window and both award attempts)"
            )
        if self.auction_batch_linger_s < 0:
            raise ConfigError(
                f"auction_batch_linger_s must be 0 (no batching) or more, "
                f"got {self.auction_batch_linger_s!r}"
            )
        if self.auction_award_resend_s >= self.auction_award_timeout_s:
            raise ConfigError(
                "auction_award_resend_s must be shorter than auction_award_timeout_s "
                "(an award is sent again before it is given up)"
            )
        if self.auction_confirm_timeout_s <= self.auction_award_timeout_s:
            raise ConfigError(
                "auction_confirm_timeout_s must exceed auction_award_timeout_s "
                "(a live originator withdraws a late award before the winner confirms it)"
            )
        if self.dht_max_value_bytes > DHT_MAX_VALUE_LIMIT:
            raise ConfigError(
                f"dht_max_value_bytes can be at most {DHT_MAX_VALUE_LIMIT}: a record must fit "
                "one 8 KiB DHT datagram with its signature and framing"
            )
        if not 0 < self.dht_republish_fraction < 1:
            raise ConfigError("dht_republish_fraction must be between 0 and 1")
        if self.probe_timeout_s >= self.probe_interval_s:
            raise ConfigError("probe_timeout_s must be shorter than probe_interval_s")
        if self.suspicion_max_mult < self.suspicion_mult:
            raise ConfigError("suspicion_max_mult can't be below suspicion_mult")
        if self.shutdown_grace_s < 0:
            raise ConfigError("shutdown_grace_s must not be negative")
        if self.cert_validity_days > self.ca_validity_days:
            raise ConfigError("cert_validity_days can't exceed ca_validity_days")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        return self

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "meshd.sock"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "meshd.db"


def lan() -> Config:
    """Blades on a LAN: listen on every interface, production timeouts."""
    return Config(preset="lan")


def local() -> Config:
    """Many daemons on one machine: loopback only, short timeouts."""
    return Config(
        preset="local",
        listen=f"127.0.0.1:{DEFAULT_PORT}",
        enrol_timeout_s=5.0,
        shutdown_grace_s=1.0,
        api_request_timeout_s=10.0,
        host_telemetry=False,
    )


def sim() -> Config:
    """The deterministic simulator: no sockets are opened; timings are virtual."""
    return Config(preset="sim", listen="127.0.0.1:0", shutdown_grace_s=0.0)


_PRESET_FACTORIES = {"lan": lan, "local": local, "sim": sim}


def preset(name: str) -> Config:
    try:
        return _PRESET_FACTORIES[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}") from None


_SIZE_FIELDS = {"memory", "disk"}
_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    """Turn a TOML or flag value into the field's type, or raise a readable ConfigError."""
    if name in _SIZE_FIELDS:
        return None if value is None else parse_size(value, name)
    if name.endswith("_s"):
        return parse_duration(value, name)
    if name == "data_dir":
        return Path(value)
    if name == "seeds":
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError("seeds must be a list of HOST:PORT strings")
        return tuple(str(v) for v in value)
    if name == "labels":
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError('labels must be a list of "KEY=VALUE" strings')
        return tuple(str(v) for v in value)
    default = _FIELDS[name].default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if name == "cpus" or isinstance(default, float):
        if value is None and name == "cpus":
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"can't read config file {path}: {exc.strerror}") from exc
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} in {path}; known keys: {', '.join(sorted(_FIELDS))}"
        )
    return raw


def load(
    path: Path | None = None,
    preset_name: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Preset, then file, then flags (``overrides``, None values ignored), validated."""
    file_values = read_file(path) if path is not None else {}
    name = preset_name or str(file_values.get("preset", "lan"))
    cfg = preset(name)
    values: dict[str, Any] = {}
    for key, value in file_values.items():
        if key != "preset":
            values[key] = _coerce(key, value)
    for key, value in (overrides or {}).items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown setting {key!r}")
        if value is not None:
            values[key] = _coerce(key, value)
    return cfg.replace(**values).validate()
