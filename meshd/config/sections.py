"""The config's sections: one frozen dataclass per area, every field documented.

Each field carries its unit in its name and a comment saying what it is for; the
defaults are the ``lan`` preset's (``meshd.config`` builds the others).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

DEFAULT_PORT = 7420
PRESETS = ("lan", "local", "sim")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
FIRECRACKER_BOOTS = ("config-file", "api")
# rpcudp's 8 KiB request cap minus a record's fixed fields (684 B) and RPC framing (64 B).
DHT_MAX_VALUE_LIMIT = 8192 - 684 - 64


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
    # Nonces remembered for replay detection, per sender (a source address, or a
    # signed message's author); beyond this that sender's oldest are forgotten and
    # anything it stamped earlier is refused, so a flood raises only its own floor.
    replay_cache_size: int = 16384
    # Senders whose nonces are remembered; the least recently heard is forgotten past
    # this (it loses only what was in flight then). Memory: senders x cache size x ~80 B
    # at worst, reached only by members flooding from many source addresses.
    replay_senders: int = 1024
    # How long a mesh key still opens datagrams after a newer one (a rotation on node
    # removal) was installed here: members that haven't got the new key yet still get
    # through meanwhile, and fetch it on the first datagram they can't open.
    key_grace_s: float = 15.0


@dataclass(frozen=True)
class ApiConfig(_Section):
    """The HTTP API on the unix socket and the mesh port."""

    # Upper bound on serving one API request (guards the loop against stuck clients).
    request_timeout_s: float = 30.0
    # How long a stopping daemon lets in-flight requests finish before closing them.
    shutdown_grace_s: float = 5.0
    # Exposure of the mesh TCP port to callers we don't know yet (meshd/api/listener.py).
    # A TLS 1.3 handshake is one round trip; a peer that has not finished it in this
    # many seconds is stalling, and its connection is closed.
    tls_handshake_timeout_s: float = 5.0
    # Seconds a connection may take, once set up, to send its first request's headers
    # (a real client sends them at once; a slow-loris sends a byte a second). Also on
    # the unix socket.
    header_timeout_s: float = 10.0
    # An idle kept-alive connection (between requests) is closed after this long.
    keepalive_timeout_s: float = 30.0
    # Connections the TCP port holds open at once; more are closed at accept. Bounded so
    # a flood can't take every file descriptor (the daemon checks RLIMIT_NOFILE leaves
    # room for these, the unix socket's, and its own files).
    max_connections: int = 256
    # Connections one peer address may hold open on the TCP port. A node relays at most
    # 100 at once (aiohttp's connector), so a well-behaved peer stays below 64.
    max_connections_per_peer: int = 64
    # Connections the unix socket (the local operator) holds open at once: its own
    # budget, so a TCP flood never locks out the local CLI.
    unix_max_connections: int = 64
    # Largest request body, in bytes, of the routes that carry data: a workload
    # submission (cloud-init user-data) and mesh-internal messages.
    max_body_bytes: int = 1024**2
    # Largest request body, in bytes, of every other route (enrolment: a token and a
    # CSR; services; tokens; and the routes that take no body at all).
    max_small_body_bytes: int = 64 * 1024
    # Seconds between two log lines of one kind of refusal (failed handshake, missing
    # certificate, malformed request...); the ones in between are only counted
    # (meshd_api_refused_total), so strangers can't fill the log.
    refusal_log_interval_s: float = 10.0


@dataclass(frozen=True)
class StoreConfig(_Section):
    """The node's SQLite store."""

    # The event log (`meshd events`, GET /v1/events) keeps at most this many events and
    # none older than events_max_age_s; every node records one per placement in the
    # mesh, so without a bound it would grow for ever. Checked once a minute.
    events_keep: int = 100_000
    events_max_age_s: float = 7 * 86400.0
    # After a write to the store failed (disk full, I/O error, read-only), the node
    # bids and accepts nothing until a probe write succeeds; the first probe comes
    # this long after the failure, each next one twice as late, up to probe_max_s.
    probe_s: float = 1.0
    probe_max_s: float = 30.0
    # Free space (bytes) the store's filesystem must keep for the node to count its
    # store as writable: a full-size award record (256 KiB of spec) and its WAL frames
    # must fit, and SQLite may report success on a full disk by reusing WAL space.
    reserve_bytes: int = 1024 * 1024


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
    # A timer that rings this much later than it was due means this node's own event
    # loop stalled (a starved CPU, a stopped process, a clock jump): the probe in
    # flight is not evidence against its target, the stall does not count against the
    # members it suspects (their timers move on by its length, and one that came due
    # waits a probe interval for refutations queued behind it), and the local health
    # score rises (probes slow down; see core/membership/awareness.py).
    stall_s: float = 0.15
    # Seeds and remembered addresses contacted at once when joining; the next ones on
    # each retry while nobody answers (a restarted chassis must not storm itself with
    # a full-state exchange from every node to every node).
    join_fanout: int = 3
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
    # signature adds ~120 B and sealing 60 B (72 over IPv6), so 1200 keeps a datagram within one
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
    # The host's 1-minute load per core past which a node refuses to bid (with host
    # telemetry); below it load only lowers the score. A busy but healthy host sits at
    # 1-3; Aether's 2.0 kept refusing those (benchmarks/bench_placement_quality.py).
    max_load_per_core: float = 4.0
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
class FencingConfig(_Section):
    """meshd.core.fencing: powering a dead node off by quorum (DESIGN.md §7)."""

    # How long this node's own direct check of a node membership holds dead may take
    # before it counts as unreachable, and how often a node that found it reachable
    # checks again. On the path from "dead" to "off", so short on a LAN.
    check_s: float = 0.2
    # How long a vote (a grant to one coordinator's ballot) binds its voter: no other
    # ballot for that node and epoch is granted before it expires, on the voter's own
    # clock. A coordinator's power-off must end within it (minus drift), so it bounds
    # the Redfish client's total deadline; it also delays a takeover after a
    # coordinator dies mid-fence.
    lease_s: float = 20.0
    # Silence (no request or progress from the round's coordinator) after which the
    # next member in the rotation takes over as coordinator.
    takeover_s: float = 1.0
    # How often a coordinator repeats its request to the voters (lost datagrams), and
    # half as often while it powers off, says it is still at it.
    resend_s: float = 0.05
    # Bound on how much any two nodes' clocks may differ in rate (0.01: 1 %). The
    # coordinator's power-off deadline is shortened by it so no lease it relies on
    # can have expired on its voter's clock (see meshd/core/fencing/fencer.py).
    drift: float = 0.01
    # Self-fence: a node cut off from a quorum of the roster for longer than
    # self_fence_after_s stops its own workloads (and starts them again once it is
    # back with a quorum and they are still its own). Off by default: with a working
    # BMC the majority powers the node off instead. Turn it on where a blade's BMC may
    # be unreachable and an operator may confirm it off by hand (meshd fence confirm).
    self_fence: bool = False
    self_fence_after_s: float = 10.0


@dataclass(frozen=True)
class AddressesConfig(_Section):
    """meshd.core.addresses: NIC addresses by majority grants (issue 13, item 2)."""

    # How long a claim of one address waits for a majority of the roster to answer
    # before the claimer tries the next candidate (lost datagrams are resent to the
    # silent voters four times within it). On the submit path, so short on a LAN.
    claim_timeout_s: float = 0.5
    # Candidates one NIC tries before the submission is refused: concurrent originators
    # that drew the same address, or a pool nearly full.
    attempts: int = 8
    # In a small or nearly full pool, the free addresses a claimer picks its candidates
    # from (the first ones, in random order); a pool of at least 8x this many hosts has
    # its candidates drawn at random from all of it. Either way concurrent originators
    # rarely draw the same one.
    window: int = 64
    # A grant no placement in the voter's view backs is freed after this long: longer
    # than a submission can take (its auction included), so a grant is never freed
    # while the placement that will carry it is still on its way.
    grant_ttl_s: float = 120.0
    # How often each node sweeps its grants (tombstoned holders, expired grants).
    sweep_s: float = 2.0
    # While this node has other submissions in flight, a claim waits this long for the
    # ones arriving behind it: they leave as one datagram per voter, and each voter
    # writes its grants for all of them in one transaction (one fsync) and answers in
    # one datagram. An idle node claims at once. 0: no batching.
    batch_linger_s: float = 0.015
    # Addresses each node keeps per network it has been asked for, granted by a majority
    # ahead of demand in blocks of 16 and handed out to its own submissions without a
    # claim (topped up as half of them are gone; all nodes' pools together take at most
    # an eighth of a network, so a small network keeps none). A fixed address is claimed
    # as before. 0: every address is claimed on the submit path. Each top-up costs each
    # voter asked one fsynced write however many blocks it claims, so a larger pool
    # costs fewer writes per address (bench_addresses.py measured 512 against 128).
    pool: int = 512


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
    # Upper bound on any stop's graceful budget, whatever `?timeout` asked (the API
    # accepts up to 3600 s): past it the driver forces the stop (SIGKILL to the whole
    # process group, QEMU `quit` then SIGKILL), so a workload that ignores SIGTERM can
    # hold its workload's lock, and `meshd workload rm` behind it, only this long.
    stop_timeout_max_s: float = 300.0
    process: ProcessDriverConfig = field(default_factory=ProcessDriverConfig)
    qemu: QemuDriverConfig = field(default_factory=QemuDriverConfig)
    firecracker: FirecrackerDriverConfig = field(default_factory=FirecrackerDriverConfig)


@dataclass(frozen=True)
class BmcConfig(_Section):
    """meshd.adapters.redfish: every timing bounds a wait on a BMC (iLO, sushy-tools)."""

    # One HTTP request to the BMC; clipped to what is left of the deadline. iLO 5 answers
    # in tens to hundreds of milliseconds; a TLS handshake to a busy one can take seconds.
    request_timeout_s: float = 5.0
    # Extra tries of one request after a timeout, a refused connection or a 5xx (a 4xx
    # is an answer and is not retried); each waits retry_backoff_s x 2^n first.
    retries: int = 2
    retry_backoff_s: float = 0.25
    # Between PowerState reads after a ForceOff: iLO takes a second or more to report
    # Off, the sushy-tools fake driver 1-11 s.
    poll_interval_s: float = 0.5
    # Whole budget of one fence (login, read, ForceOff, polling until Off) and of one
    # `meshd bmc check`. No request starts that could end after it.
    deadline_s: float = 30.0


@dataclass(frozen=True)
class GuestsConfig(_Section):
    """Guests' networking on this node (meshd.shell.guests): bridges, DHCP, metadata."""

    # Create a network's bridge when it does not exist here (stp off, forward delay 0,
    # a fixed MAC); off: only networks whose bridge the operator made are offered
    # (capability network:NAME), and a NIC on another is refused.
    create_bridges: bool = False
    # The interface a created bridge is linked to (the guests' segment); with a network's
    # VLAN, its 802.1Q sub-interface (where the kernel allows). Empty: none.
    uplink: str = ""
    # Set a network whose bridge exists here up (this node's address on it, DHCP,
    # metadata) as soon as it is offered, so the first guest starts as fast as the next;
    # off, or a bridge meshd creates: with its first NIC.
    prepare: bool = True
    # Serve DHCP to this node's guests (one dnsmasq per bridge, DHCP only).
    dhcp: bool = True
    # Serve metadata (EC2 and OpenStack paths) on 169.254.169.254.
    metadata: bool = True
    # The metadata server's port (80 for guests; tests may move it).
    metadata_port: int = 80
    # DHCP lease time offered to guests; they renew at half of it.
    lease_s: int = 3600
    # Bound on each ip/bridge/nft/dhcp_release call.
    tool_timeout_s: float = 10.0
    # How often dnsmasq is checked (and restarted if it died).
    check_interval_s: float = 1.0
    # The dnsmasq binary (Debian: dnsmasq-base).
    dnsmasq: str = "dnsmasq"
    # Announcements of a guest's (IP, MAC) on its bridge when its NIC is attached
    # (gratuitous ARP / unsolicited NA, as arping -U -c N): peers replace a neighbour
    # entry still holding an old MAC (a reused address) and switches learn the port of
    # a moved guest. 0: none.
    announce_count: int = 3
    # Seconds between those announcements (a booting guest is reachable only later).
    announce_interval_s: float = 1.0


@dataclass(frozen=True)
class DnsConfig(_Section):
    """meshd.shell.dns: the optional DNS server for mesh names (``meshd run --dns``)."""

    # The TTL of every answer: short, because a dead node's names stop answering as soon
    # as membership declares it dead and clients should ask again soon.
    ttl_s: float = 5.0
    # How long one DHT lookup answers repeated questions (0: ask the DHT every time).
    cache_s: float = 2.0
    # Lookups remembered at once; past it the cache starts over.
    cache_entries: int = 4096
