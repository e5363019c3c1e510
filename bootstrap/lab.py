"""The main job as root: three blades in network namespaces, their BMCs, two QEMU guests.

Run by ``bash bootstrap/demo.sh`` (as root), which installs what it needs first, then
starts this script detached (``setsid``) and follows its output. The lab is
tests/e2e/blades.py's chassis with the guests' segment (three blade namespaces on a mesh
switch, a BMC network holding the sushy-tools emulator, one guest L2 segment joining
the blades' ``br0`` bridges, a probe namespace on it), every namespace named
``<prefix>sw``, ``<prefix>bmc``, ``<prefix>probe``, ``<prefix>b1..3``. The script:

1. builds the namespaces; 2. starts the BMC emulator; 3. founds the mesh on blade1,
enrols blade2 and blade3 with join tokens, runs all three (``--dns`` on each) and waits
until they see each other; 4. gives each blade its BMC and wires the power switch
(:class:`tests.e2e.blades.PowerWatch`); 5. defines a network on the blades' bridge;
6. places two QEMU guests by auction with ``--net`` (DHCP from meshd, metadata) and
shows their console lines; 7. resolves the web service to the guest's address
(``meshd resolve`` and ``dig`` against the blades' DNS); 8. cuts the first guest's
blade from the mesh and the guests' segment: the survivors vote, one powers it off
through its BMC, the guest runs again on a survivor with the same address and MAC.

Each step is narrated with its time; each step's duration (and the whole run's) goes to
``<dir>/timings.jsonl`` as JSON lines. Then the lab stays up (this process is the power
switch and the daemons' parent) until SIGTERM (``demo.sh down``), which stops
everything and removes the namespaces; ``demo.sh down`` then removes the directory.

Usage: python bootstrap/lab.py DIR PREFIX  (root; DIR short: QMP sockets live under it)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meshd.core.nic import mac_for  # noqa: E402
from tests.e2e import blades  # noqa: E402
from tests.e2e.blades import (  # noqa: E402
    GUEST_BRIDGE,
    Chassis,
    console,
    ns_pids,
    show,
)
from tests.e2e.guests import first_reply, wait_console  # noqa: E402
from tests.integration.daemon import DOMAIN  # noqa: E402

BLADES = ("blade1", "blade2", "blade3")
DNS_PORT = 5353
HTTP_PORT = 8080
GUESTS_TOML = "\n[guests]\ncreate_bridges = false\n"


class Clock:
    """Step timings: narrated on stdout, and one JSON line each in ``<dir>/timings.jsonl``."""

    def __init__(self, out: Path, t0: float) -> None:
        self.out = out
        self.t0 = t0  # wall time demo.sh started (install included)
        self.steps: list[dict[str, Any]] = []

    def since(self) -> float:
        return time.time() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.since():6.1f}s] {text}", flush=True)

    def record(self, step: str, seconds: float) -> None:
        row = {"step": step, "s": round(seconds, 2), "at_s": round(self.since(), 2)}
        self.steps.append(row)
        with self.out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    @contextlib.contextmanager
    def step(self, step: str, text: str) -> Iterator[None]:
        print(flush=True)
        self.say(f"== {text}")
        start = time.monotonic()
        yield
        took = time.monotonic() - start
        self.record(step, took)
        self.say(f"   ({step}: {took:.1f}s)")


def guest_paths() -> dict[str, str]:
    proc = subprocess.run(
        ["bash", str(REPO / "bootstrap/guest-image.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def submit(lab: Chassis, via: str, body: dict[str, Any]) -> str:
    """POST /v1/workloads on ``via`` (what ``meshd submit`` sends; the CLI has no flag
    for a guest's kernel command line), retried while the blades learn the network."""
    shown = {k: v for k, v in body.items() if k not in ("kernel", "initrd")}
    print(f"   POST /v1/workloads {json.dumps(shown)}   (on {via})", flush=True)
    try:
        return blades.submit(lab, via, body)
    except AssertionError as exc:
        raise SystemExit(f"lab: {exc}") from exc


def wait_running(lab: Chassis, node: str, wid: str, not_on: str | None = None) -> str:
    try:
        return blades.wait_running(lab, node, wid, not_on)
    except AssertionError as exc:
        raise SystemExit(f"lab: {exc}") from exc


def meshd_shown(lab: Chassis, node: str, *args: str) -> None:
    """Run ``meshd ARGS`` on ``node``, printing the command and its output, indented."""
    print(f"   $ meshd {' '.join(args)}   (on {node})", flush=True)
    proc = lab.blade(node).daemon.cli(*args)
    for line in (proc.stdout + proc.stderr).rstrip().splitlines():
        print(f"     {line}", flush=True)


def console_lines(path: Path, prefixes: tuple[str, ...], timeout: float = 60) -> None:
    for prefix in prefixes:
        line, _ = wait_console(path, prefix, timeout)
        print(f"     console: {line}", flush=True)


def dig(lab: Chassis, node: str, name: str, rtype: str = "A") -> str:
    if not shutil.which("dig"):
        return "(dig not installed: apt-get install dnsutils)"
    server = lab.blade(node).mesh_addr
    argv = ["dig", "+short", "+time=2", "+tries=2", f"@{server}", "-p", str(DNS_PORT), name, rtype]
    proc = subprocess.run(lab.blade(node).cmd(argv), capture_output=True, text=True, check=False)
    return proc.stdout.strip() or proc.stderr.strip() or "(no answer)"


def run(lab: Chassis, clock: Clock, guest: dict[str, str]) -> None:
    with clock.step("namespaces", "three blades as network namespaces on a mesh switch, "
                    "a BMC network, and a guest L2 segment joining their br0 bridges"):  # fmt: skip
        lab.build_network(BLADES)
        for b in lab.blades:
            clock.say(f"   {b.name}: netns {b.ns}, mesh {b.mesh_addr}, BMC link {b.bmc_addr}")
        clock.say(f"   BMC emulator at {lab.bmc_ip} (netns {lab.bmc_ns})")
        clock.say(f"   guests' segment {lab.guest_subnet}.0/24, probe at {lab.probe_ip}")
    with clock.step("bmcs", "the sushy-tools Redfish emulator stands in for the blades' iLOs"):
        emu = lab.start_emulator(BLADES, 0)
        clock.say(f"   {emu.url}/redfish/v1/Systems: one system per blade, all On")
    with clock.step("mesh", f"blade1 founds mesh {DOMAIN}; blade2 and blade3 enrol with "
                    "single-use join tokens; all run, DNS on each"):  # fmt: skip
        lab.start_mesh(toml=GUESTS_TOML, dns_port=DNS_PORT)
        meshd_shown(lab, "blade3", "peers")
    with clock.step("fencing", "each blade is given its BMC; a powered-off blade's "
                    "processes die (the emulator drives the power switch)"):  # fmt: skip
        lab.set_bmcs(BLADES)
        lab.start_watch()
        meshd_shown(lab, "blade1", "bmc", "check")
    net = lab.guest_subnet
    with clock.step("network", f"a network on the blades' bridge: {net}.0/24 on {GUEST_BRIDGE}"):
        lab.blade("blade1").daemon.cli(
            "network", "create", "gnet", "--subnet", f"{net}.0/24", "--bridge", GUEST_BRIDGE,
            check=True,
        )  # fmt: skip
        meshd_shown(lab, "blade2", "network", "ls")
    common: dict[str, Any] = {
        "driver": "qemu", "cpus": 1, "memory": 128 * 1024 * 1024, "nics": [{"network": "gnet"}],
        "kernel": guest["MESHD_GUEST_VMLINUX"], "initrd": guest["MESHD_GUEST_INITRD"],
        "ready_marker": guest["MESHD_GUEST_MARKER"], "boot_timeout_s": 90,
    }  # fmt: skip
    with clock.step("guest_a", "guest ga placed by auction on network gnet: DHCP from meshd, "
                    "metadata, a web server on port 8080 published as service web"):  # fmt: skip
        wa = submit(lab, "blade1", common | {
            "name": "ga", "user_data": "hello from ga",
            "cmdline": f"meshd.ip=dhcp meshd.meta=1 meshd.http={HTTP_PORT}",
            "services": [{"name": "web", "port": HTTP_PORT}],
        })  # fmt: skip
        owner_a = wait_running(lab, "blade1", wa)
        addr_a = show(lab, "blade1", wa)["addresses"]
        ip_a = addr_a[0]["ip"]
        clock.say(f"   ga ({wa[:12]}) runs on {owner_a}; address {ip_a}, MAC {addr_a[0]['mac']}")
        console_lines(console(lab, "blade1", wa), ("MESHD-LEASE", "MESHD-META", "MESHD-USERDATA"))
    with clock.step("guest_b", "guest gb placed away from ga (anti-affinity); it pings ga"):
        wb = submit(lab, "blade1", common | {
            "name": "gb", "user_data": "hello from gb", "anti_affinity": ["ga"],
            "cmdline": f"meshd.ip=dhcp meshd.meta=1 meshd.ping={ip_a}",
        })  # fmt: skip
        owner_b = wait_running(lab, "blade1", wb)
        ip_b = show(lab, "blade1", wb)["addresses"][0]["ip"]
        clock.say(f"   gb ({wb[:12]}) runs on {owner_b}; address {ip_b}")
        console_lines(console(lab, "blade1", wb), ("MESHD-LEASE", "MESHD-META", "MESHD-PING"), 90)
        meshd_shown(lab, "blade3", "workloads")
    with clock.step("resolve", "the service name resolves to ga's address"):
        meshd_shown(lab, "blade3", "resolve", f"@web@*@{DOMAIN}")
        clock.say(f"   $ dig @{lab.blade('blade3').mesh_addr} -p {DNS_PORT} web.{DOMAIN}  "
                  f"(from blade3's netns) -> {dig(lab, 'blade3', f'web.{DOMAIN}')}")  # fmt: skip
    survivor = next(n for n in BLADES if n != owner_a)
    with clock.step("fence", f"{owner_a} is cut off (its mesh and guest links down): "
                    "the others vote, one powers it off through its BMC"):  # fmt: skip
        lab.blade(owner_a).cut()
        state = "alive"
        deadline = time.monotonic() + 60
        while state != "fenced" and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                view = {
                    p["name"]: p["state"]
                    for p in lab.blade(survivor).daemon.api("GET", "/v1/peers")
                }
                state = view.get(owner_a, "?")
            time.sleep(0.1)
        if state != "fenced":
            meshd_shown(lab, survivor, "fence", "status")
            raise SystemExit(f"lab: {owner_a} was not fenced in 60s ({state})")
        assert lab.watch is not None  # the emulator's own state (it serves in its netns)
        power = lab.watch.power().get(owner_a)
        clock.say(f"   {survivor} holds {owner_a} fenced; its BMC says PowerState {power}")
        meshd_shown(lab, survivor, "fence", "status")
        dead = lab.blade(owner_a)
        for _ in range(100):  # the power switch ends its processes within 50 ms of Off
            if not ns_pids(dead.ns):
                break
            time.sleep(0.05)
        left = ns_pids(dead.ns)
        clock.say(f"   {owner_a}'s namespace: " + (f"{len(left)} processes left" if left else
                  "no process left (its daemon and guest died with its power)"))  # fmt: skip
    with clock.step("replace", "ga runs again on a survivor, same address and MAC"):
        new_owner = wait_running(lab, survivor, wa, not_on=owner_a)
        again = show(lab, survivor, wa)["addresses"]
        clock.say(f"   ga runs on {new_owner}; address {again[0]['ip']}, MAC {again[0]['mac']} "
                  f"(was {ip_a}, {addr_a[0]['mac']}; MAC of the id: {mac_for(wa, 0)})")  # fmt: skip
        console_lines(console(lab, survivor, wa), ("MESHD-LEASE",))
        replied = first_reply(lab.probe_ns, ip_a, 30)
        clock.say(f"   the probe on the guests' segment pings {ip_a}: "
                  f"{'answers' if replied is not None else 'NO ANSWER'}")  # fmt: skip
        meshd_shown(lab, survivor, "workloads")
        if again != addr_a or replied is None:
            raise SystemExit("lab: ga did not come back with its address")


def explore(lab: Chassis, base: Path) -> None:
    meshd = REPO / ".venv/bin/meshd"
    live = [b for b in lab.blades if b.daemon.running]
    print(flush=True)
    print("The lab stays up. Explore it (as root):", flush=True)
    for b in live:
        print(f"   ip netns exec {b.ns} {meshd} --data-dir {b.daemon.data_dir} peers", flush=True)
    b = live[0]
    print(f"   ip netns exec {b.ns} {meshd} --data-dir {b.daemon.data_dir} workloads", flush=True)
    print(
        f"   ip netns exec {b.ns} {meshd} --data-dir {b.daemon.data_dir} fence status", flush=True
    )
    print(f"   ip netns exec {b.ns} dig @{b.mesh_addr} -p {DNS_PORT} web.{DOMAIN}", flush=True)
    print(f"   guests' consoles: {base}/blade*/workloads/*/console.log", flush=True)
    print(f"   timings: {base}/timings.jsonl; logs: {base}/blade*/meshd.log", flush=True)
    print("Remove it all: bash bootstrap/demo.sh down", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or os.geteuid() != 0:
        print("usage (root): python bootstrap/lab.py DIR PREFIX", file=sys.stderr)
        return 2
    base, prefix = Path(argv[0]), argv[1]
    t0 = float(os.environ.get("MESHD_LAB_T0", time.time()))
    clock = Clock(base / "timings.jsonl", t0)
    if "MESHD_LAB_INSTALL_S" in os.environ:
        clock.record("install", float(os.environ["MESHD_LAB_INSTALL_S"]))
    stop = threading.Event()
    up = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        if not up.is_set():  # still coming up: stop the run where it is, then tear down
            raise SystemExit(f"stopped by signal {signum} while coming up")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    lab = Chassis(
        base=base,
        prefix=prefix,
        mesh_subnet="10.215.251",
        bmc_subnet="10.216.251",
        guest_subnet="10.217.251",
    )
    (base / "lab.pid").write_text(f"{os.getpid()}\n")
    code = 0
    try:
        with clock.step("guest_image", "the test guest (bootstrap/guest-image.sh, cached)"):
            guest = guest_paths()
        run(lab, clock, guest)
        clock.record("total", clock.since())
        print(flush=True)
        clock.say(f"== the whole run took {clock.since():.1f}s; per step (JSON lines):")
        for row in clock.steps:
            print(json.dumps(row), flush=True)
        explore(lab, base)
        up.set()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure: say it, tear down
        print(f"lab: FAILED: {exc}", flush=True)
        code = 1
    finally:
        (base / ("ready" if code == 0 else "failed")).write_text("\n")
        sys.stdout.flush()
    while code == 0 and not stop.wait(1):
        pass
    print("lab: stopping: daemons, guests, emulator, namespaces", flush=True)
    lab.teardown()
    with contextlib.suppress(FileNotFoundError):
        (base / "lab.pid").unlink()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
