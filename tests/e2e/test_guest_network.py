"""Guests on a network shared by three blades (issue 13's e2e), root, QEMU under TCG.

The lab is tests/e2e/blades.py with ``guests=True``: three blade namespaces, each with
its own guest bridge ``br0`` whose uplink joins one L2 segment through the switch
namespace, and a probe namespace on that segment (LAB-NOTES "VM networking across
blades"). The guest is bootstrap/guest-image.sh's busybox, driven by its kernel
command line (``meshd.ip``, ``meshd.meta``, ``meshd.ping``, ``meshd.http``,
``meshd.spoof``), printing ``MESHD-*`` lines on its console.

Parts that need no meshd, and run now:
* the lab and two hand-made-tap guests on two blades with static addresses: each pings
  the other across the switch, the probe pings one and reads its HTTP answer over TCP;
  a cut blade's guest is unreachable until the blade is healed;
* the guest's DHCP side against a hand-run dnsmasq and a tiny metadata server in one
  blade: the lease (address, MAC, the classless static route to 169.254.169.254), its
  own instance-id and user-data fetched and printed, a ping to its blade; a request
  from another guest's address (``meshd.spoof``) really leaves from that address, and
  the guest gives that address back.

Through meshd (skipped, with the reason, until the address allocator h13-addr and the
host side h13-host are merged): two guests submitted with ``nics`` get distinct DHCP
addresses on two blades (the addresses of ``workload show --json``, MACs of
``meshd.core.nic.mac_for``), ping each other, print their own instance-id and
user-data; asking from the other's address gets nothing; ``meshd resolve`` answers the
guest's address and a TCP connection to it gets the guest's HTTP answer; a cut blade's
guest comes back on a survivor with the same IP and MAC and answers ping again.

Every namespace is named ``h13l<pid>...`` and removed in ``finally``, every QEMU and
helper process killed by its pid.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.adapters.drivers.procfs import find_by_cmdline, processes
from meshd.core.nic import mac_for
from tests.e2e.blades import (
    GUEST_BRIDGE,
    Chassis,
    chassis,
    console,
    show,
    submit,
    wait_running,
)
from tests.e2e.guests import (
    fields,
    first_reply,
    hand_guest,
    in_ns,
    meshd_networking_missing,
    wait_console,
)
from tests.e2e.needs import QEMU, skip_reason

reason = skip_reason(
    "guest networking e2e needs root (namespaces, taps, QEMU)",
    QEMU,
    ("ip", "the `ip` tool (iproute2) is not installed"),
)
pytestmark = [
    pytest.mark.skipif(reason is not None, reason=reason or ""),
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.timeout(300),
]

META_IP = "169.254.169.254"
HTTP_PORT = 8080


@pytest.fixture
def base() -> Iterator[Path]:
    """A short base directory: QMP sockets are unix sockets (paths under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="h13l", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def http_get(lab: Chassis, ip: str, port: int) -> str:
    """GET / from the probe, over TCP; the body, or '' if it could not connect."""
    code = (
        "import socket,sys\n"
        "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5)\n"
        "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n');b=b''\n"
        "while (c:=s.recv(4096)): b+=c\n"
        "print(b.decode(errors='replace'))\n"
    )
    proc = subprocess.run(
        lab.probe([sys.executable, "-c", code, ip, str(port)]),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.stdout if proc.returncode == 0 else ""


# -- without meshd ---------------------------------------------------------------------


def test_hand_made_taps_carry_guests_of_two_blades_across_the_switch(
    base: Path, guest: dict[str, str]
) -> None:
    with chassis(
        base, ["b1", "b2", "b3"], guests=True, daemons=False, prefix="h13l", tag="t"
    ) as lab:
        b1, b2 = lab.blade("b1"), lab.blade("b2")
        net = lab.guest_subnet
        ip1, ip2 = f"{net}.11", f"{net}.12"
        g1 = hand_guest(
            b1.ns, GUEST_BRIDGE, base / "g1", "hand-1",
            f"meshd.ip={ip1}/24 meshd.ping={ip2} meshd.http={HTTP_PORT}", guest,
        )  # fmt: skip
        g2 = hand_guest(
            b2.ns, GUEST_BRIDGE, base / "g2", "hand-2", f"meshd.ip={ip2}/24 meshd.ping={ip1}", guest
        )
        try:
            for g, ip in ((g1, ip1), (g2, ip2)):
                line, _ = g.wait_line("MESHD-LEASE", 60)
                got = fields(line)
                assert float(got.pop("up")) > 0
                assert got == {"ip": ip, "mac": mac_for(g.wid, 0), "src": "static"}
            assert g1.wait_line("MESHD-PING", 90)[0] == f"MESHD-PING {ip2} ok"
            assert g2.wait_line("MESHD-PING", 90)[0] == f"MESHD-PING {ip1} ok"
            assert first_reply(lab.probe_ns, ip1, 10) is not None
            assert f"MESHD-HTTP meshd-guest {ip1}" in http_get(lab, ip1, HTTP_PORT)

            b2.cut()  # its guest uplink goes with its mesh link
            assert first_reply(lab.probe_ns, ip2, 2) is None
            assert first_reply(lab.probe_ns, ip1, 5) is not None
            b2.heal()
            assert first_reply(lab.probe_ns, ip2, 10) is not None
        finally:
            g1.close()
            g2.close()
        links = subprocess.run(
            in_ns(b1.ns, ["ip", "-o", "link", "show", "master", GUEST_BRIDGE]),
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert g1.tap not in links  # close removed the hand-made tap


# A metadata server for one guest, in a blade's namespace: 169.254.169.254:80 answers
# the guest at argv[1] only; every request's source address is logged to argv[2].
META_SERVER = r"""
import http.server, sys
guest, log, iid, ud = sys.argv[1:5]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(log, "a") as f:
            f.write(f"{self.client_address[0]} {self.path}\n")
        body = {"/latest/meta-data/instance-id": iid, "/latest/user-data": ud}.get(self.path)
        if self.client_address[0] != guest or body is None:
            self.send_response(404); self.end_headers(); return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("169.254.169.254", 80), H).serve_forever()
"""


def test_the_guest_applies_its_lease_and_reads_its_metadata(
    base: Path, guest: dict[str, str]
) -> None:
    if not shutil.which("dnsmasq"):
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
    with chassis(base, ["b1"], guests=True, daemons=False, prefix="h13l", tag="d") as lab:
        b1, net = lab.blade("b1"), lab.guest_subnet
        node_ip, guest_ip, other_ip = f"{net}.1", f"{net}.21", f"{net}.22"
        wid = "dhcp-guest"
        subprocess.run(
            in_ns(b1.ns, ["ip", "addr", "add", f"{node_ip}/24", "dev", GUEST_BRIDGE]), check=True
        )
        subprocess.run(
            in_ns(b1.ns, ["ip", "addr", "add", f"{META_IP}/32", "dev", GUEST_BRIDGE]), check=True
        )
        hosts = base / "dhcp-hosts"
        hosts.write_text(f"{mac_for(wid, 0)},{guest_ip},{wid}\n")
        log = base / "meta.log"
        log.write_text("")
        procs: list[subprocess.Popen[bytes]] = []
        g = None
        try:
            procs.append(subprocess.Popen(in_ns(b1.ns, [
                "dnsmasq", "--keep-in-foreground", "--port=0", "--conf-file=/dev/null",
                "--user=root", f"--interface={GUEST_BRIDGE}", "--bind-interfaces",
                f"--dhcp-range={net}.0,static,255.255.255.0,1h", f"--dhcp-hostsfile={hosts}",
                "--dhcp-ignore=tag:!known", f"--dhcp-leasefile={base / 'leases'}",
                f"--dhcp-option=121,{META_IP}/32,{node_ip}", "--dhcp-option=6,192.0.2.53",
            ]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
            procs.append(subprocess.Popen(in_ns(b1.ns, [
                sys.executable, "-c", META_SERVER, guest_ip, str(log), f"i-{wid}", "hello guest",
            ]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
            g = hand_guest(
                b1.ns, GUEST_BRIDGE, base / "g", wid,
                f"meshd.ip=dhcp meshd.meta=1 meshd.ping={node_ip} meshd.spoof={other_ip}",
                guest,
            )  # fmt: skip
            lease = fields(g.wait_line("MESHD-LEASE", 60)[0])
            assert lease["ip"] == guest_ip and lease["mac"] == mac_for(wid, 0)
            assert lease["src"] == "dhcp" and lease["prefix"] == "24"
            assert lease["dns"] == "192.0.2.53"
            assert 0 < float(lease["asked"]) <= float(lease["up"])
            assert f"{META_IP}/32,{node_ip};" in lease["routes"]
            assert g.wait_line("MESHD-META", 60)[0] == f"MESHD-META instance-id=i-{wid}"
            assert g.wait_line("MESHD-USERDATA", 30)[0] == "MESHD-USERDATA hello guest"
            assert g.wait_line("MESHD-PING", 60)[0] == f"MESHD-PING {node_ip} ok"
            assert g.wait_line("MESHD-SPOOF", 30)[0] == "MESHD-SPOOF instance-id="
            seen = log.read_text().splitlines()
            assert f"{guest_ip} /latest/meta-data/instance-id" in seen
            assert f"{other_ip} /latest/meta-data/instance-id" in seen  # it did ask as the other
            assert first_reply(lab.probe_ns, guest_ip, 10) is not None
            assert first_reply(lab.probe_ns, other_ip, 1) is None  # it gave the address back
        finally:
            if g is not None:
                g.close()
            for p in procs:
                p.kill()
                p.wait()


# -- through meshd (issue 13) ------------------------------------------------------------

GUESTS_TOML = "\n[guests]\ncreate_bridges = false\n"


# -- meshd's QEMU driver in the lab, before issue 13: one bridge, static addresses ------

BRIDGE_TOML = f'\n[drivers.qemu]\nbridge = "{GUEST_BRIDGE}"\n'


def qemu_running(marker: str) -> bool:
    """A live QEMU's command line holds ``marker`` (a workload id)."""
    return any(st.comm.startswith("qemu-") for st in find_by_cmdline(marker))


def qemu_zombies(lab: Chassis, blade: str) -> list[int]:
    """Zombie QEMU processes whose parent is ``blade``'s meshd (host pids; a zombie has
    left its namespaces, so only its parent tells whose it is)."""
    parent = lab.blade(blade).daemon.main_pid()
    return [
        st.pid
        for st in processes()
        if st.state == "Z" and st.ppid == parent and st.comm.startswith("qemu-")
    ]


def test_meshd_runs_guests_on_the_blades_segment_and_replaces_a_cut_ones(
    base: Path, guest: dict[str, str]
) -> None:
    """Today's path (``[drivers.qemu] bridge``: every guest's tap on br0, its address on
    its kernel command line): two guests placed on two blades ping each other across the
    switch; the probe reaches one over TCP; its blade cut, it is fenced and runs again on
    a survivor, at the same address, reachable again."""
    with chassis(
        base, ["b1", "b2", "b3"], guests=True, prefix="h13l", tag="q", toml=BRIDGE_TOML
    ) as lab:
        net = lab.guest_subnet
        ip_a, ip_b = f"{net}.31", f"{net}.32"
        common = {
            "cpus": 1, "memory": 128 * 1024 * 1024, "driver": "qemu",
            "kernel": guest["MESHD_GUEST_VMLINUX"], "initrd": guest["MESHD_GUEST_INITRD"],
            "ready_marker": guest["MESHD_GUEST_MARKER"], "boot_timeout_s": 90,
        }  # fmt: skip
        wa = submit(lab, "b1", common | {
            "name": "ga", "cmdline": f"meshd.ip={ip_a}/24 meshd.ping={ip_b} meshd.http={HTTP_PORT}",
        })  # fmt: skip
        owner_a = wait_running(lab, "b1", wa)
        wb = submit(lab, "b1", common | {
            "name": "gb", "anti_affinity": ["ga"],
            "cmdline": f"meshd.ip={ip_b}/24 meshd.ping={ip_a}",
        })  # fmt: skip
        owner_b = wait_running(lab, "b1", wb)
        assert owner_a != owner_b
        for wid, peer in ((wa, ip_b), (wb, ip_a)):
            ping = wait_console(console(lab, "b1", wid), "MESHD-PING", 90)[0]
            assert ping == f"MESHD-PING {peer} ok"
        assert f"MESHD-HTTP meshd-guest {ip_a}" in http_get(lab, ip_a, HTTP_PORT)
        # meshd is pid 1 of each blade: it waits for the orphans QEMU's -daemonize leaves
        assert not qemu_zombies(lab, owner_a) and not qemu_zombies(lab, owner_b)

        lab.blade(owner_a).cut()
        survivor = next(b.name for b in lab.blades if b.name != owner_a)
        new_owner = wait_running(lab, survivor, wa, not_on=owner_a)
        assert new_owner != owner_a
        lease = fields(wait_console(console(lab, survivor, wa), "MESHD-LEASE", 60)[0])
        assert lease["ip"] == ip_a
        assert first_reply(lab.probe_ns, ip_a, 30) is not None
        # A removed guest's QEMU exits; meshd, pid 1 of its blade, waits for it too.
        lab.blade(survivor).daemon.api("DELETE", f"/v1/workloads/{wb}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (qemu_running(wb) or qemu_zombies(lab, owner_b)):
            time.sleep(0.2)
        assert not qemu_running(wb) and not qemu_zombies(lab, owner_b)


def test_guests_get_addresses_metadata_and_names_through_meshd(
    base: Path, guest: dict[str, str]
) -> None:
    missing = meshd_networking_missing()
    if missing:
        pytest.skip(missing)
    with chassis(
        base, ["b1", "b2", "b3"], guests=True, prefix="h13l", tag="m", toml=GUESTS_TOML
    ) as lab:
        net = lab.guest_subnet
        lab.blade("b1").daemon.cli(
            "network", "create", "gnet", "--subnet", f"{net}.0/24", "--bridge", GUEST_BRIDGE,
            check=True,
        )  # fmt: skip
        common = {
            "cpus": 1, "memory": 128 * 1024 * 1024, "driver": "qemu",
            "kernel": guest["MESHD_GUEST_VMLINUX"], "initrd": guest["MESHD_GUEST_INITRD"],
            "ready_marker": guest["MESHD_GUEST_MARKER"], "boot_timeout_s": 90,
            "nics": [{"network": "gnet"}],
        }  # fmt: skip
        wa = submit(lab, "b1", common | {
            "name": "ga", "user_data": "ud-of-ga",
            "cmdline": f"meshd.ip=dhcp meshd.meta=1 meshd.http={HTTP_PORT}",
            "services": [{"name": "web", "port": HTTP_PORT}],
        })  # fmt: skip
        owner_a = wait_running(lab, "b1", wa)
        addr_a = show(lab, "b1", wa)["addresses"]
        assert [a["network"] for a in addr_a] == ["gnet"] and addr_a[0]["mac"] == mac_for(wa, 0)
        ip_a = addr_a[0]["ip"]
        wb = submit(lab, "b1", common | {
            "name": "gb", "user_data": "ud-of-gb", "anti_affinity": ["ga"],
            "cmdline": f"meshd.ip=dhcp meshd.meta=1 meshd.ping={ip_a} meshd.spoof={ip_a}",
        })  # fmt: skip
        owner_b = wait_running(lab, "b1", wb)
        assert owner_a != owner_b
        ip_b = show(lab, "b2", wb)["addresses"][0]["ip"]
        assert ip_a != ip_b

        # DHCP from meshd: each guest's lease is its assigned address and MAC.
        for wid, ip in ((wa, ip_a), (wb, ip_b)):
            lease = fields(wait_console(console(lab, "b1", wid), "MESHD-LEASE", 60)[0])
            assert (lease["ip"], lease["mac"], lease["src"]) == (ip, mac_for(wid, 0), "dhcp")
            meta = wait_console(console(lab, "b1", wid), "MESHD-META", 60)[0]
            assert meta == f"MESHD-META instance-id={wid}"
            ud = wait_console(console(lab, "b1", wid), "MESHD-USERDATA", 30)[0]
            assert ud == f"MESHD-USERDATA ud-of-{'ga' if wid == wa else 'gb'}"
        assert wait_console(console(lab, "b1", wb), "MESHD-PING", 90)[0] == f"MESHD-PING {ip_a} ok"
        # gb asking from ga's address: nothing of ga's.
        spoof = wait_console(console(lab, "b1", wb), "MESHD-SPOOF", 30)[0]
        assert spoof == "MESHD-SPOOF instance-id="  # not ga's id, not gb's own either

        # Names reach the guest.
        out = lab.blade("b3").daemon.cli("resolve", f"@web@*@{'lab.example'}", "--json", check=True)
        assert ip_a in {row["address"] for row in json.loads(out.stdout)}
        assert f"MESHD-HTTP meshd-guest {ip_a}" in http_get(lab, ip_a, HTTP_PORT)

        # Cut ga's blade: ga comes back on a survivor, same IP and MAC, reachable.
        lab.blade(owner_a).cut()
        survivor = next(b.name for b in lab.blades if b.name != owner_a)
        new_owner = wait_running(lab, survivor, wa, not_on=owner_a)
        again = show(lab, survivor, wa)["addresses"]
        assert again == addr_a
        lease = fields(wait_console(console(lab, survivor, wa), "MESHD-LEASE", 60)[0])
        assert (lease["ip"], lease["mac"]) == (ip_a, mac_for(wa, 0))
        assert new_owner != owner_a
        assert first_reply(lab.probe_ns, ip_a, 30) is not None
