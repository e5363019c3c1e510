"""The one configuration object: every knob of a node, in sections, with presets.

Shape
-----
:class:`Config` is frozen and holds the node-level fields (preset, data_dir, listen,
advertise, seeds, mdns, witness, labels, declared capacity, logging) and one frozen section
per area: ``security``, ``api``, ``store``, ``membership``, ``dht``, ``auction``,
``fencing``, ``drivers`` (itself holding ``process``, ``qemu`` and ``firecracker``) and
``bmc``. Each core gets its own section (the membership core ``cfg.membership``, the
auction core ``cfg.auction``, the DHT ``cfg.dht``), so what a core may depend on is
visible in its signature. Field names inside a section carry no prefix: ``cfg.auction.window_s``.
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
  The API's per-address connection budget is its total: every daemon calls from
  127.0.0.1. The event log keeps 10,000 events for a day: many daemons share one disk, and
  demos read the recent past. A BMC's power state is polled every 100 ms instead of
  500 (the Redfish emulator runs on the same machine). Failure-detection timers
  (probe interval and timeout, suspicion) stay as on the LAN: with many daemons on a
  few cores, scheduling delay is the slow path, and shortening them would buy false suspicions.
* ``sim`` — the deterministic simulator: listen on port 0 (no socket is opened),
  no shutdown grace, ``auction.host_telemetry`` off (there is no host; scenarios
  declare capacities). Every protocol timer is the ``lan`` value on purpose: the
  simulator exists to show what the LAN deployment does under loss, partitions and
  crashes, so its figures must speak for ``lan``.

No timing constant lives anywhere else in the code.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshd.config.sections import (
    DEFAULT_PORT,
    DHT_MAX_VALUE_LIMIT,
    FIRECRACKER_BOOTS,
    LOG_FORMATS,
    LOG_LEVELS,
    PRESETS,
    AddressesConfig,
    ApiConfig,
    AuctionConfig,
    BmcConfig,
    DhtConfig,
    DnsConfig,
    DriversConfig,
    FencingConfig,
    FirecrackerDriverConfig,
    GuestsConfig,
    MembershipConfig,
    ProcessDriverConfig,
    QemuDriverConfig,
    SecurityConfig,
    StoreConfig,
    _Section,
)
from meshd.data_dir import DATA_DIR_ENV, DEFAULT_DATA_DIR, default_data_dir
from meshd.errors import ConfigError
from meshd.units import parse_duration, parse_hostport, parse_size

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_DATA_DIR",
    "DEFAULT_PORT",
    "DHT_MAX_VALUE_LIMIT",
    "FIRECRACKER_BOOTS",
    "KEYS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "PRESETS",
    "SECTIONS",
    "AddressesConfig",
    "ApiConfig",
    "AuctionConfig",
    "BmcConfig",
    "Config",
    "DhtConfig",
    "DnsConfig",
    "DriversConfig",
    "FencingConfig",
    "FirecrackerDriverConfig",
    "GuestsConfig",
    "MembershipConfig",
    "ProcessDriverConfig",
    "QemuDriverConfig",
    "SecurityConfig",
    "StoreConfig",
    "default_data_dir",
    "lan",
    "local",
    "moved_to",
    "preset",
    "sim",
]

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
    # Serve DNS for the mesh's names on this UDP address (HOST:PORT); None: no DNS server.
    dns_listen: str | None = None
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
    fencing: FencingConfig = field(default_factory=FencingConfig)
    addresses: AddressesConfig = field(default_factory=AddressesConfig)
    drivers: DriversConfig = field(default_factory=DriversConfig)
    bmc: BmcConfig = field(default_factory=BmcConfig)
    guests: GuestsConfig = field(default_factory=GuestsConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)

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
            "addresses.batch_linger_s",
            "addresses.pool",  # 0: no pools, every address claimed on the submit path
            "api.shutdown_grace_s",
            "auction.batch_linger_s",
            "bmc.retries",
            "dns.cache_s",
            "drivers.qemu.destroy_grace_s",
            "drivers.firecracker.destroy_timeout_s",
            "guests.announce_count",  # 0: guests' addresses are not announced
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
    if cfg.drivers.stop_timeout_s > cfg.drivers.stop_timeout_max_s:
        raise ConfigError(
            "drivers.stop_timeout_s can't exceed drivers.stop_timeout_max_s; raise the maximum"
        )
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
    fe = cfg.fencing
    if not fe.drift < 0.1:
        raise ConfigError("fencing.drift must be below 0.1 (a clock 10 % off is broken)")
    if fe.resend_s >= fe.takeover_s:
        raise ConfigError(
            "fencing.resend_s must be shorter than fencing.takeover_s "
            "(a live coordinator speaks before it is taken over)"
        )
    if fe.lease_s * (1 - fe.drift) / (1 + fe.drift) <= 2 * fe.check_s:
        raise ConfigError(
            "fencing.lease_s must exceed twice fencing.check_s (with drift): a power-off "
            "needs time inside the lease"
        )
    ad = cfg.addresses
    if ad.attempts < 1 or ad.window < 1:
        raise ConfigError("addresses.attempts and addresses.window must be at least 1")
    if ad.pool > 1024:
        raise ConfigError(f"addresses.pool must be at most 1024, got {ad.pool}")
    if not ad.claim_timeout_s > 0 or not ad.sweep_s > 0:
        raise ConfigError("addresses.claim_timeout_s and addresses.sweep_s must be positive")
    if ad.batch_linger_s * 4 >= ad.claim_timeout_s:  # the first resend comes at a quarter
        raise ConfigError(
            "addresses.batch_linger_s must be under a quarter of addresses.claim_timeout_s: "
            "a claim waits it before it leaves"
        )
    submission_s = a.max_rounds * (a.window_s + 3 * a.award_timeout_s) + 5.0
    if ad.grant_ttl_s <= submission_s + ad.attempts * ad.claim_timeout_s:
        raise ConfigError(
            "addresses.grant_ttl_s must exceed the longest a submission can take "
            f"({submission_s + ad.attempts * ad.claim_timeout_s:.0f} s with these settings): "
            "a grant must outlive the submission whose placement will back it"
        )
    api = cfg.api
    if api.max_connections_per_peer > api.max_connections:
        raise ConfigError("api.max_connections_per_peer can't exceed api.max_connections")
    if api.max_small_body_bytes > api.max_body_bytes:
        raise ConfigError("api.max_small_body_bytes can't exceed api.max_body_bytes")
    if cfg.bmc.request_timeout_s > cfg.bmc.deadline_s:
        raise ConfigError("bmc.request_timeout_s can't exceed bmc.deadline_s")
    if cfg.store.probe_max_s < cfg.store.probe_s:
        raise ConfigError("store.probe_max_s can't be below store.probe_s")
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
        # Every daemon on the machine calls from 127.0.0.1: a per-address budget would
        # be one budget for the whole mesh, so it is the total here.
        api=base.api.replace(
            request_timeout_s=10.0,
            shutdown_grace_s=1.0,
            max_connections_per_peer=base.api.max_connections,
        ),
        store=base.store.replace(events_keep=10_000, events_max_age_s=86400.0),
        membership=base.membership.replace(push_pull_interval_s=15.0),
        dht=base.dht.replace(bootstrap_max_s=2.0),
        auction=base.auction.replace(host_telemetry=False),
        # Busy shared cores: a starved daemon answers a check late; take over later.
        fencing=base.fencing.replace(check_s=1.0, takeover_s=3.0, resend_s=0.2),
        # Busy shared cores answer late: wait longer before moving to another address.
        addresses=base.addresses.replace(claim_timeout_s=2.0),
        # The emulator runs on the same machine: a read costs milliseconds.
        bmc=base.bmc.replace(poll_interval_s=0.1),
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
