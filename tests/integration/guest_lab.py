"""Blades and guests as network namespaces, for guest networking without QEMU.

A switch namespace holds the shared segment (a bridge); each blade namespace links its
guest bridge to it by a veth (``up0``) and runs ``guest_blade.py`` (meshd's
GuestNetworks: dnsmasq, the nftables guard, the metadata server). A "guest" is a
namespace whose ``eth0`` is the peer of a veth named like the workload's tap, on its
blade's bridge, so DHCP and metadata see it exactly as they would see a VM's tap.
Every namespace and process is named with ``prefix`` and removed by :meth:`close`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshd.core.nic import mac_for, tap_name

HERE = Path(__file__).parent
BRIDGE = "h13hbr0"
SUBNET = "10.77.0.0/24"
NETWORK = "lab"

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    set -- $staticroutes
    while [ $# -ge 2 ]; do ip route replace "$1" via "$2" dev "$interface"; shift 2; done
    printf '{"ip":"%s","serverid":"%s","router":"%s","staticroutes":"%s","mask":"%s"}\\n' \\
      "$ip" "$serverid" "$router" "$staticroutes" "$mask" \\
      > "$(dirname "$0")/lease-$interface-$(ip netns identify)"
    ;;
esac
"""

FETCH = """
import sys, time, urllib.request, urllib.error, json
out = []
for path in sys.argv[2:]:
    t = time.perf_counter()
    try:
        url = "http://169.254.169.254" + path
        with urllib.request.urlopen(url, timeout=float(sys.argv[1])) as r:
            out.append([r.status, r.read().decode(), time.perf_counter() - t])
    except urllib.error.HTTPError as e:
        out.append([e.code, e.read().decode(), time.perf_counter() - t])
    except Exception as e:
        out.append([0, repr(e), time.perf_counter() - t])
print(json.dumps(out))
"""


def run(
    argv: list[str], check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def usable() -> str | None:
    """Why this host can't run the lab (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "bridge", "nft", "dnsmasq", "dhcp_release", "busybox"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@dataclass
class Blade:
    name: str
    ns: str
    node_ip: str
    proc: subprocess.Popen[str] | None = None
    offers: list[str] = field(default_factory=list)

    def send(self, line: str) -> str:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()


@dataclass
class Guest:
    ns: str
    wid: str
    ip: str
    mac: str
    tap: str


class Lab:
    def __init__(self, prefix: str = "h13h") -> None:
        self.tag = f"{prefix}-{os.getpid()}"
        self.namespaces: list[str] = []
        self.blades: dict[str, Blade] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-lab-"))
        (self.tmp / "udhcpc.sh").write_text(UDHCPC_SCRIPT)
        (self.tmp / "udhcpc.sh").chmod(0o755)
        (self.tmp / "fetch.py").write_text(FETCH)
        self.sw = self._netns("sw")
        self._in(self.sw, "ip", "link", "add", "sw", "type", "bridge", "stp_state", "0",
                 "forward_delay", "0")  # fmt: skip
        self._in(self.sw, "ip", "link", "set", "sw", "up")
        self.workloads: list[dict[str, Any]] = []

    def _netns(self, suffix: str) -> str:
        ns = f"{self.tag}-{suffix}"
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        self._in(ns, "ip", "link", "set", "lo", "up")
        for name in ("iptables", "arptables", "ip6tables"):
            self._in(ns, "sysctl", "-qw", f"net.bridge.bridge-nf-call-{name}=0", check=False)
        return ns

    def _in(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", ns, *argv], check=check)

    def workload(self, wid: str, name: str, ip: str, user_data: str | None = None) -> None:
        self.workloads.append(
            {"id": wid, "name": name, "ip": ip, "network": NETWORK, "user_data": user_data}
        )

    def blade(
        self, name: str, node_ip: str, *, create: bool, attach: list[str], eager: bool = False
    ) -> Blade:
        ns = self._netns(name)
        # The blade's uplink: up0 here, its peer on the switch's bridge.
        peer = f"to-{name}"[:15]
        self._in(self.sw, "ip", "link", "add", peer, "type", "veth", "peer", "name", "up0",
                 "netns", ns)  # fmt: skip
        self._in(self.sw, "ip", "link", "set", peer, "master", "sw", "up")
        self._in(ns, "ip", "link", "set", "up0", "up")
        if not create:  # the operator's bridge
            self._in(ns, "ip", "link", "add", BRIDGE, "type", "bridge", "stp_state", "0",
                     "forward_delay", "0")  # fmt: skip
            self._in(ns, "ip", "link", "set", "up0", "master", BRIDGE)
        conf = {
            "node": name,
            "node_ip": node_ip,
            "network": NETWORK,
            "subnet": SUBNET,
            "bridge": BRIDGE,
            "create": create,
            "uplink": "up0",
            "workdir": str(self.tmp / name),
            "workloads": self.workloads,
            "attach": attach,
            "eager": eager,
        }
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(conf))
        b = Blade(name, ns, node_ip)
        self.blades[name] = b
        self._launch(b)
        return b

    def _launch(self, b: Blade) -> None:
        env = dict(os.environ, PYTHONPATH=str(HERE.parent.parent))
        path = self.tmp / f"{b.name}.json"
        b.proc = subprocess.Popen(
            ["ip", "netns", "exec", b.ns, sys.executable, str(HERE / "guest_blade.py"), str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.tmp / f"{b.name}.err", "a"),  # noqa: SIM115 - lives with the lab
            text=True,
            env=env,
        )
        line = b.proc.stdout.readline() if b.proc.stdout else ""
        if not line.startswith("READY"):
            raise RuntimeError(f"blade {b.name} did not start: {self.errors(b.name)}")
        b.offers = json.loads(line.split(" ", 1)[1])

    def crash_and_restart(self, b: Blade, attach: list[str]) -> None:
        """SIGKILL the blade's meshd (its dnsmasq, in its own session, lives on), then
        start it again on the same directory, attaching ``attach`` as a restarted node
        reattaches its running workloads."""
        assert b.proc is not None
        b.proc.kill()
        b.proc.wait()
        path = self.tmp / f"{b.name}.json"
        conf = json.loads(path.read_text())
        path.write_text(json.dumps(conf | {"attach": attach}))
        self._launch(b)

    def errors(self, blade: str) -> str:
        try:
            return (self.tmp / f"{blade}.err").read_text()[-3000:]
        except OSError:
            return ""

    def guest(
        self, blade: Blade, wid: str, ip: str, *, port: str | None = None, mac: str | None = None
    ) -> Guest:
        """A guest namespace whose eth0's peer is ``port`` (default: the tap of ``wid``)
        on ``blade``'s bridge, with ``mac`` (default: the NIC's own)."""
        ns = self._netns(f"g{len(self.namespaces)}")
        tap = port or tap_name(wid, 0)
        mac = mac or mac_for(wid, 0)
        self._in(blade.ns, "ip", "link", "add", tap, "type", "veth", "peer", "name", "eth0",
                 "address", mac, "netns", ns)  # fmt: skip
        self._in(blade.ns, "ip", "link", "set", tap, "master", BRIDGE, "up")
        self._in(ns, "ip", "link", "set", "eth0", "up")
        return Guest(ns, wid, ip, mac, tap)

    def dhcp(self, g: Guest) -> dict[str, str] | None:
        """Run busybox udhcpc in the guest; what it was offered, or None."""
        lease = self.tmp / f"lease-eth0-{g.ns}"
        lease.unlink(missing_ok=True)
        self._in(g.ns, "busybox", "udhcpc", "-i", "eth0", "-f", "-n", "-q", "-t", "6", "-T",
                 "1", "-s", str(self.tmp / "udhcpc.sh"), check=False)  # fmt: skip
        if not lease.exists():
            return None
        data: dict[str, str] = json.loads(lease.read_text())
        return data

    def fetch(self, g: Guest, *paths: str, timeout: float = 3.0) -> list[tuple[int, str, float]]:
        out = self._in(g.ns, sys.executable, str(self.tmp / "fetch.py"), str(timeout), *paths)
        return [(int(s), str(b), float(t)) for s, b, t in json.loads(out.stdout)]

    def wget(self, g: Guest, path: str) -> str:
        out = self._in(g.ns, "timeout", "5", "busybox", "wget", "-q", "-O", "-",
                       f"http://169.254.169.254{path}", check=False)  # fmt: skip
        return out.stdout

    def close(self) -> None:
        for b in self.blades.values():
            if b.proc is not None:
                try:
                    if b.proc.stdin:
                        b.proc.stdin.write("quit\n")
                        b.proc.stdin.flush()
                    b.proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    b.proc.kill()
                    b.proc.wait()
        for ns in reversed(self.namespaces):
            # Whatever still runs in it (a dnsmasq the blade could not stop), by its pid.
            pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                run(["kill", "-9", pid], check=False)
            run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
