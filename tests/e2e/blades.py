"""Blades with BMCs on one machine: network namespaces, real daemons, the Redfish emulator.

The lab (root only) is three kinds of network namespace, all named after this
process's pid and removed by those names in :meth:`Chassis.teardown`:

* ``<p>sw``, the mesh switch: a bridge the blades' mesh links (``eth0``) plug into;
* ``<p>bmc``, the BMC network: a second bridge holding the emulator's address, which
  every blade reaches on its own second link (``eth1``); the sushy-tools emulator
  (:class:`tests.integration.sushy.Emulator`, TLS, Basic auth, one system per blade)
  runs inside it;
* ``<p>b<i>``, one per blade, running that blade's ``meshd run`` (the ``lan`` preset,
  with ``host_telemetry = false`` in its ``meshd.toml``: every blade shares this
  machine's load; see LAB-NOTES "Many daemons on one machine"), configured with
  ``meshd bmc set`` for its own system.

So a blade's mesh link can be cut (:meth:`Blade.cut`: its veth on the mesh switch
set down; ``tc netem`` is not available here) while it still reaches its BMC.

With ``guests=True`` (the guest-networking lab of LAB-NOTES "VM networking across
blades") the switch namespace also holds ``brg``, the guests' L2 segment: every blade
gets its own guest bridge ``br0`` (STP off, forward delay 0, multicast snooping off, a
fixed MAC) linked to ``brg`` by a veth (``up0`` in the blade, ``g<i>`` on ``brg``), and
a probe namespace ``<p>probe`` sits on ``brg`` too, at ``<guest subnet>.250``: an
observer on the guests' segment (pings, TCP connections) that is no blade. br_netfilter
is off in every lab namespace (``bridge-nf-call-*`` = 0; new namespaces start at 1).
:meth:`Blade.cut` then cuts the guest uplink too. The bridge is the operator's: meshd
is given it (a network created with ``--bridge br0``), it does not create it.

The emulator's fake driver only flips a flag. :class:`PowerWatch` makes it a power
switch: it reads the emulator's state (its sqlite file, the way the fake driver
applies a pending change: at ``apply_time``) every 50 ms and, while a blade's system is
Off, SIGKILLs every process in that blade's namespace (the daemon and the workloads
it started), by pid. Powering a blade back on is ``fence_redfish --action on`` then
:meth:`Blade.boot`. Nothing here touches the root namespace's network.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from tests.integration.daemon import Daemon, Mesh
    from tests.integration.sushy import Emulator, system_uuid
except ImportError:  # pragma: no cover - tests/integration on sys.path instead
    from daemon import Daemon, Mesh  # type: ignore[no-redef]
    from sushy import Emulator, system_uuid  # type: ignore[no-redef]

INIT = Path(__file__).with_name("blade_init.py")
PORT = 7946
BMC_HOST = 254  # the emulator's address on the BMC network: <bmc subnet>.254
CAPACITY = ("--cpus", "4", "--memory", "4GiB", "--disk", "20GiB")
TELEMETRY_OFF = "\n[auction]\nhost_telemetry = false\n"
WATCH_S = 0.05
GUEST_BRIDGE = "br0"  # each blade's guest bridge
GUEST_UPLINK = "up0"  # its veth to the guests' segment (``brg`` in the switch namespace)
PROBE_HOST = 250  # the probe's address on the guests' segment: <guest subnet>.250


def _run(argv: Sequence[str], check: bool = True, timeout: float = 30) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


def _ip(*args: str, ns: str) -> None:
    _run(["ip", "-n", ns, *args])


def _bridge(ns: str, name: str, mac: str | None = None) -> None:
    _ip("link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0", ns=ns)
    _ip("link", "set", name, "type", "bridge", "mcast_snooping", "0", ns=ns)
    if mac is not None:  # else it follows its ports' MACs as they come and go
        _ip("link", "set", name, "address", mac, ns=ns)
    _ip("link", "set", name, "up", ns=ns)


def _no_bridge_nf(ns: str) -> None:
    """Bridged frames skip iptables/arptables in ``ns`` (br_netfilter is built in here
    and a new namespace starts with these at 1); absent without br_netfilter: fine."""
    for fam in ("iptables", "arptables", "ip6tables"):
        _run(
            ["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.bridge.bridge-nf-call-{fam}=0"],
            check=False,
        )


def ns_pids(ns: str) -> list[int]:
    """Pids of every process in namespace ``ns`` (``ip netns pids``)."""
    out = _run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.split()]


@dataclass
class BladeDaemon(Daemon):
    """A blade's daemon: ``meshd run`` as pid 1 of a PID namespace of its own
    (blade_init.py), so blades see only their own processes, as separate machines do.
    CLI commands run in the blade's network namespace only."""

    def spawn(self, *extra: str) -> subprocess.Popen[bytes]:
        cli_prefix = self.prefix
        self.prefix = (*cli_prefix, sys.executable, str(INIT))
        try:
            return super().spawn(*extra)
        finally:
            self.prefix = cli_prefix

    def main_pid(self) -> int:
        """The ``meshd run`` process itself (blade_init's child), for SIGSTOP."""
        task = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        children = task.read_text().split()
        if not children:
            raise AssertionError(f"{self.name}: blade_init {self.pid} has no child")
        return int(children[0])


@dataclass
class Blade:
    name: str
    ns: str
    mesh_addr: str
    bmc_addr: str
    switch_ns: str
    veth: str  # this blade's mesh port, on the mesh switch
    daemon: BladeDaemon
    run_args: tuple[str, ...] = ()
    guest_veth: str | None = None  # its port on the guests' segment (guests=True)

    @property
    def listen(self) -> str:
        return f"{self.mesh_addr}:{PORT}"

    def cmd(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def cut(self) -> None:
        """Cut this blade's mesh link (and its guest uplink); its BMC link stays up."""
        for port in (self.veth, self.guest_veth):
            if port is not None:
                _ip("link", "set", port, "down", ns=self.switch_ns)

    def heal(self) -> None:
        for port in (self.veth, self.guest_veth):
            if port is not None:
                _ip("link", "set", port, "up", ns=self.switch_ns)

    def boot(self) -> None:
        """Start this blade's daemon again (after a power-on), and wait until it answers."""
        self.daemon.start(*self.run_args)

    def pids(self) -> list[int]:
        return ns_pids(self.ns)


@dataclass
class Chassis:
    """The namespaces, the emulator and the daemons of one test; see the module doc."""

    base: Path
    prefix: str
    mesh_subnet: str
    bmc_subnet: str
    guest_subnet: str | None = None  # "a.b.c": the guests' segment /24 (guests=True)
    blades: list[Blade] = field(default_factory=list)
    emulator: Emulator | None = None
    mesh: Mesh | None = None
    watch: PowerWatch | None = None
    namespaces: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.prefix}sw"

    @property
    def bmc_ns(self) -> str:
        return f"{self.prefix}bmc"

    @property
    def bmc_ip(self) -> str:
        return f"{self.bmc_subnet}.{BMC_HOST}"

    @property
    def probe_ns(self) -> str:
        return f"{self.prefix}probe"

    @property
    def probe_ip(self) -> str:
        assert self.guest_subnet is not None, "a lab without guests=True has no probe"
        return f"{self.guest_subnet}.{PROBE_HOST}"

    def probe(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in the probe namespace, on the guests' segment."""
        return ["ip", "netns", "exec", self.probe_ns, *argv]

    def blade(self, name: str) -> Blade:
        return next(b for b in self.blades if b.name == name)

    # -- set-up ----------------------------------------------------------------------

    def _netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        _ip("link", "set", "lo", "up", ns=name)
        if self.guest_subnet is not None:
            _no_bridge_nf(name)

    def _guest_segment(self) -> None:
        """``brg`` on the switch, and the probe on it (see the module doc)."""
        assert self.guest_subnet is not None
        _bridge(self.switch, "brg")
        self._netns(self.probe_ns)
        _ip("link", "add", "eth0", "type", "veth", "peer", "name", "gp", ns=self.probe_ns)
        _ip("link", "set", "gp", "netns", self.switch, ns=self.probe_ns)
        _ip("link", "set", "gp", "master", "brg", "up", ns=self.switch)
        _ip("addr", "add", f"{self.probe_ip}/24", "dev", "eth0", ns=self.probe_ns)
        _ip("link", "set", "eth0", "up", ns=self.probe_ns)
        # Resolve a guest's MAC within 50 ms of it coming up, not the default 1 s.
        _run(self.probe(["sysctl", "-qw", "net.ipv4.neigh.eth0.retrans_time_ms=50"]))

    def _guest_bridge(self, ns: str, i: int) -> str:
        """Blade ``i``'s guest bridge and its uplink; returns the uplink's switch port."""
        _bridge(ns, GUEST_BRIDGE, mac=f"0a:00:00:00:{i // 256:02x}:{i % 256:02x}")
        port = f"g{i}"
        _ip("link", "add", GUEST_UPLINK, "type", "veth", "peer", "name", port, ns=ns)
        _ip("link", "set", port, "netns", self.switch, ns=ns)
        _ip("link", "set", port, "master", "brg", "up", ns=self.switch)
        _ip("link", "set", GUEST_UPLINK, "master", GUEST_BRIDGE, "up", ns=ns)
        return port

    def build_network(self, names: Sequence[str]) -> None:
        self._netns(self.switch)
        _bridge(self.switch, "br0")
        if self.guest_subnet is not None:
            self._guest_segment()
        self._netns(self.bmc_ns)
        _bridge(self.bmc_ns, "brb")
        _ip("addr", "add", f"{self.bmc_ip}/24", "dev", "brb", ns=self.bmc_ns)
        self.mesh = Mesh(self.base)
        for i, name in enumerate(names, start=1):
            ns = f"{self.prefix}b{i}"
            self._netns(ns)
            # Mesh link: eth0 here, m<i> on the mesh switch.
            _ip("link", "add", "eth0", "type", "veth", "peer", "name", f"m{i}", ns=ns)
            _ip("link", "set", f"m{i}", "netns", self.switch, ns=ns)
            _ip("link", "set", f"m{i}", "master", "br0", "up", ns=self.switch)
            # BMC link: eth1 here, k<i> on the BMC bridge.
            _ip("link", "add", "eth1", "type", "veth", "peer", "name", f"k{i}", ns=ns)
            _ip("link", "set", f"k{i}", "netns", self.bmc_ns, ns=ns)
            _ip("link", "set", f"k{i}", "master", "brb", "up", ns=self.bmc_ns)
            mesh_addr, bmc_addr = f"{self.mesh_subnet}.{i}", f"{self.bmc_subnet}.{i}"
            _ip("addr", "add", f"{mesh_addr}/24", "dev", "eth0", ns=ns)
            _ip("addr", "add", f"{bmc_addr}/24", "dev", "eth1", ns=ns)
            _ip("link", "set", "eth0", "up", ns=ns)
            _ip("link", "set", "eth1", "up", ns=ns)
            guest_veth = self._guest_bridge(ns, i) if self.guest_subnet is not None else None
            daemon = BladeDaemon(name, self.base / name, "lan", prefix=("ip", "netns", "exec", ns))
            self.mesh.daemons.append(daemon)
            blade = Blade(name, ns, mesh_addr, bmc_addr, self.switch, f"m{i}", daemon)
            blade.guest_veth = guest_veth
            self.blades.append(blade)

    def start_emulator(self, systems: Sequence[str], delay_s: int | None) -> Emulator:
        self.emulator = Emulator(
            self.base / "bmc",
            dict.fromkeys(systems, "On"),
            delay_s=delay_s,
            listen_ip=self.bmc_ip,
            prefix=("ip", "netns", "exec", self.bmc_ns),
        ).start()
        return self.emulator

    def start_mesh(
        self,
        witness: str | None = None,
        timeout: float = 30.0,
        toml: str = "",
        dns_port: int | None = None,
    ) -> None:
        """Found the mesh on the first blade, enrol the others, run all, wait all alive;
        ``toml`` is appended to every blade's meshd.toml; ``dns_port``: each blade also
        serves DNS for mesh names on its mesh address (``meshd run --dns``)."""
        first, *rest = self.blades
        for b in self.blades:
            b.run_args = ("--witness",) if b.name == witness else CAPACITY
            if dns_port is not None:
                b.run_args = (*b.run_args, "--dns", f"{b.mesh_addr}:{dns_port}")
        first.daemon.init(listen=first.listen)
        _telemetry_off(first.daemon, toml)
        first.boot()
        for b in rest:
            b.daemon.init(join=first.daemon.create_token(), listen=b.listen)
            _telemetry_off(b.daemon, toml)
        for b in rest:
            b.daemon.spawn(*b.run_args)
        for b in rest:
            b.daemon.wait_ready()
        self.wait_alive([b.name for b in self.blades], timeout)

    def wait_alive(self, names: Sequence[str], timeout: float = 30.0) -> None:
        want = set(names)
        deadline = time.monotonic() + timeout
        views: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            views = [peer_states(self.blade(n).daemon) for n in names]
            if all({p for p, s in v.items() if s == "alive"} >= want for v in views):
                return
            time.sleep(0.1)
        raise AssertionError(f"blades did not all see each other alive in {timeout}s: {views}")

    def set_bmcs(self, names: Sequence[str]) -> None:
        """``meshd bmc set`` on each blade for its own system, then ``bmc check``."""
        emu = self.emulator
        assert emu is not None and emu.ca is not None
        pw = self.base / "bmc-password"
        pw.write_text(emu.password + "\n")
        pw.chmod(0o600)
        for name in names:
            d = self.blade(name).daemon
            d.cli(
                "bmc", "set", "--url", emu.url, "--user", emu.user, "--password-file", pw,
                "--system", name, "--ca-file", emu.ca_file, check=True,
            )  # fmt: skip

    def start_watch(self) -> PowerWatch:
        assert self.emulator is not None
        self.watch = PowerWatch(self.emulator, {b.name: b.ns for b in self.blades})
        self.watch.start()
        return self.watch

    # -- looking at the BMCs from outside meshd ----------------------------------------

    def fence_redfish(self, name: str, action: str, timeout: float = 60) -> tuple[int, str]:
        """Debian's ``fence_redfish --action ACTION`` on ``name``'s system, from the BMC
        network (an independent Redfish client); returns (exit code, output)."""
        emu = self.emulator
        assert emu is not None
        argv = [
            "ip", "netns", "exec", self.bmc_ns, "fence_redfish",
            "--ip", emu.listen_ip, "--ipport", str(emu.port), "--ssl-insecure",
            "--username", emu.user, "--password", emu.password,
            "--systems-uri", f"/redfish/v1/Systems/{system_uuid(name)}",
            "--action", action, "--power-wait", "1", "--power-timeout", "60",
        ]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        return proc.returncode, proc.stdout + proc.stderr

    def resets(self, name: str) -> int:
        """POSTs to ``name``'s Reset action the emulator served (every ForceOff sent)."""
        assert self.emulator is not None
        path = f"/redfish/v1/Systems/{system_uuid(name)}/Actions/ComputerSystem.Reset"
        return sum(1 for m, p, _ in self.emulator.requests() if m == "POST" and p == path)

    # -- teardown ------------------------------------------------------------------------

    def teardown(self) -> None:
        errors: list[str] = []
        if self.watch is not None:
            self.watch.stop()
        if self.mesh is not None:
            try:
                self.mesh.close()
            except Exception as exc:  # keep tearing down
                errors.append(str(exc))
        if self.emulator is not None:
            self.emulator.close()
        # Workloads the daemons started live in the blades' namespaces: end them by pid.
        # Hand-made guests and probes live in the blades' and the probe's namespaces too.
        spaces = [b.ns for b in self.blades]
        if self.probe_ns in self.namespaces:
            spaces.append(self.probe_ns)
        for ns in spaces:
            for pid in ns_pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self.namespaces.clear()
        if errors:
            raise AssertionError("teardown: " + "; ".join(errors))


def _telemetry_off(d: Daemon, extra: str = "") -> None:
    toml = d.data_dir / "meshd.toml"
    toml.write_text(toml.read_text() + TELEMETRY_OFF + extra)


def peer_states(d: Daemon) -> dict[str, str]:
    try:
        return {p["name"]: p["state"] for p in d.api("GET", "/v1/peers")}
    except Exception:  # a daemon starting or powered off: no view
        return {}


def workloads(d: Daemon) -> dict[str, dict[str, Any]]:
    return {w["workload"]: w for w in d.api("GET", "/v1/workloads")}


def show(lab: Chassis, node: str, wid: str) -> dict[str, Any]:
    """``meshd workload show WID --json`` on ``node``."""
    out = lab.blade(node).daemon.cli("workload", "show", wid, "--json", check=True).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def console(lab: Chassis, via: str, wid: str) -> Path:
    """The console file of ``wid`` on the blade that owns it in ``via``'s view."""
    owner = workloads(lab.blade(via).daemon)[wid]["owner"]
    return Path(lab.blade(owner).daemon.data_dir / "workloads" / wid / "console.log")


def submit(lab: Chassis, via: str, body: dict[str, Any], timeout: float = 30) -> str:
    """POST the workload on ``via``, retried while the blades are still learning the
    network; AssertionError naming it after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(lab.blade(via).daemon.api("POST", "/v1/workloads", body)["workload"])
        except Exception as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"submit {body['name']}: {exc}") from exc
            time.sleep(0.5)


def wait_running(lab: Chassis, node: str, wid: str, not_on: str | None = None) -> str:
    """The owner of ``wid`` once ``node`` sees it running (not on ``not_on``)."""
    deadline = time.monotonic() + 120
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            row = workloads(lab.blade(node).daemon).get(wid, {})
            if row.get("state") == "running" and row.get("owner") not in (None, not_on):
                return str(row["owner"])
        time.sleep(0.2)
    raise AssertionError(f"{wid} is not running (not on {not_on}) in {node}'s view: {row}")


def submit_sleepers(d: Daemon, n: int) -> dict[str, str]:
    """``n`` process workloads (`sleep 9000<k>`: the argument tells them apart in
    /proc); returns workload id -> the sleep argument."""
    marks = {}
    for k in range(n):
        arg = f"9000{k}"
        body = {
            "name": f"sleeper{k}",
            "driver": "process",
            "command": f"sleep {arg}",
            "cpus": 1,
            "memory": 32 * 1024 * 1024,
        }
        marks[d.api("POST", "/v1/workloads", body)["workload"]] = arg
    return marks


def running_in(blade: Blade, arg: str) -> int:
    """How many `sleep ARG` processes run in ``blade``'s namespace."""
    count = 0
    for pid in ns_pids(blade.ns):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", arg.encode()] or argv[-2:-1] == [arg.encode()]:
            count += 1
    return count


class PowerWatch:
    """Power the blades' namespaces from the emulator's power state; see the module doc."""

    def __init__(self, emulator: Emulator, blades: dict[str, str]) -> None:
        self.db = emulator.dir / "state" / "fakedriver.sqlite"
        self.blades = blades  # name -> namespace
        self.off_at: dict[str, float] = {}  # name -> wall time it was first seen Off
        # name -> apply_time of the last pending power change seen (the fake driver's
        # delay: the system changes at that wall time, not when it was asked).
        self.applies_at: dict[str, float] = {}
        # Blades whose power switch is not wired (a test keeps one running while Off).
        self.unwired: set[str] = set()
        self.killed: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="power-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def power(self) -> dict[str, str]:
        """Each system's power as the fake driver will report it on its next read."""
        with contextlib.closing(sqlite3.connect(self.db, timeout=1.0)) as db:
            rows = db.execute("SELECT value FROM cache").fetchall()
        now = time.time()
        out = {}
        for (blob,) in rows:
            # The fake driver's own state (plain dicts it pickled) in our test's state dir.
            system: dict[str, Any] = pickle.loads(blob)
            state = system["power_state"]
            pending = system.get("pending_power")
            if pending:
                self.applies_at[system["name"]] = float(pending["apply_time"])
            if pending and now >= pending["apply_time"] and "Restart" not in pending["power_state"]:
                state = pending["power_state"]
            out[system["name"]] = state
        return out

    def _loop(self) -> None:
        while not self._stop.wait(WATCH_S):
            try:
                power = self.power()
            except sqlite3.Error:
                continue
            for name, ns in self.blades.items():
                if power.get(name) != "Off" or name in self.unwired:
                    self.off_at.pop(name, None)
                    continue
                self.off_at.setdefault(name, time.time())
                for pid in ns_pids(ns):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        self.killed[name] = self.killed.get(name, 0) + 1


@contextlib.contextmanager
def chassis(
    base: Path,
    names: Sequence[str],
    *,
    delay_s: int | None = 0,
    witness: str | None = None,
    tag: str = "",
    guests: bool = False,
    daemons: bool = True,
    prefix: str = "mf",
    toml: str = "",
) -> Iterator[Chassis]:
    """Blades ``names`` (one of them maybe a witness, without a BMC) in namespaces, with
    the emulator and a running mesh; everything ended in ``finally``. ``guests``: with
    the guests' segment (module doc); ``daemons=False``: the network alone (no
    emulator, no mesh). Namespaces are named ``<prefix><pid><tag>...``; ``toml`` is
    appended to every blade's meshd.toml."""
    pid = os.getpid()
    lab = Chassis(
        base=base,
        prefix=f"{prefix}{pid}{tag}",
        mesh_subnet=f"10.215.{pid % 250 + 1}",
        bmc_subnet=f"10.216.{pid % 250 + 1}",
        guest_subnet=f"10.217.{pid % 250 + 1}" if guests else None,
    )
    blades = [n for n in names if n != witness]
    try:
        lab.build_network(names)
        if daemons:
            lab.start_emulator(blades, delay_s)
            lab.start_mesh(witness=witness, toml=toml)
            lab.set_bmcs(blades)
            lab.start_watch()
        yield lab
    finally:
        lab.teardown()
