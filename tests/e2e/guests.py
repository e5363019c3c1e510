"""The test guest (bootstrap/guest-image.sh) outside meshd, and an ICMP prober (root).

:func:`hand_guest` is the baseline of issue 13's figure and the part of the guest
networking e2e that needs no meshd: in a blade's namespace it makes a tap by hand
(``ip tuntap``, on the blade's guest bridge), then starts QEMU with the command line
meshd's own QEMU driver builds (``qemu_args.argv``: microvm, the cloud vmlinux and the
busybox initramfs), the MAC and tap name of ``meshd.core.nic`` for a made-up workload
id, and ``cmdline`` (e.g. ``meshd.ip=10.217.3.11/24 meshd.ping=10.217.3.12``). The
console is a file; :meth:`HandGuest.wait_line` reads the guest's ``MESHD-*`` lines from
it. :meth:`HandGuest.close` kills QEMU by its pid and deletes the tap.

:func:`first_reply` pings an address from a namespace (raw ICMP echo every 20 ms,
``python pinger``-style, in a child process in that namespace) and returns the
``time.monotonic()`` of the first reply (CLOCK_MONOTONIC is one clock for every
namespace): the moment a guest answers ping.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from meshd import config
from meshd.adapters.drivers.qemu_args import (
    LaunchPlan,
    argv,
    choose_accel,
    kernel_args,
    read_tsc_khz,
)
from meshd.core.nic import mac_for, tap_name

MIB = 1024 * 1024

# Run as `python -c PINGER ADDR TIMEOUT_S` inside a namespace: prints one JSON line,
# {"ok": bool, "t": monotonic time of the first echo reply, "sent": n}.
PINGER = r"""
import json, os, select, socket, struct, sys, time
addr, timeout = sys.argv[1], float(sys.argv[2])
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack(f"!{len(b)//2}H", b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
ident = os.getpid() & 0xFFFF
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
deadline = time.monotonic() + timeout
seq = 0
while time.monotonic() < deadline:
    seq = (seq + 1) & 0xFFFF
    body = struct.pack("!d", time.monotonic())
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + body), ident, seq) + body
    try:
        sock.sendto(pkt, (addr, 0))
    except OSError:
        pass  # no neighbour yet: EHOSTUNREACH after a failed ARP; keep trying
    until = time.monotonic() + 0.02
    while (left := until - time.monotonic()) > 0:
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            break
        data, src = sock.recvfrom(2048)
        ihl = (data[0] & 0x0F) * 4
        typ, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if src[0] == addr and typ == 0 and rid == ident:
            print(json.dumps({"ok": True, "t": time.monotonic(), "sent": seq}))
            sys.exit(0)
print(json.dumps({"ok": False, "t": time.monotonic(), "sent": seq}))
"""


def in_ns(ns: str, cmd: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def start_pinger(ns: str, addr: str, timeout_s: float) -> subprocess.Popen[str]:
    """The prober, started now (see the module doc); :func:`pinger_result` reads it."""
    return subprocess.Popen(
        in_ns(ns, [sys.executable, "-c", PINGER, addr, str(timeout_s)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def pinger_result(proc: subprocess.Popen[str], timeout_s: float) -> float | None:
    """The monotonic time of the first reply, or None if none came."""
    try:
        out, err = proc.communicate(timeout=timeout_s + 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = out.strip().splitlines()
    if not lines:
        raise AssertionError(f"the pinger printed nothing: {err[-500:]}")
    got = json.loads(lines[-1])
    return float(got["t"]) if got["ok"] else None


def first_reply(ns: str, addr: str, timeout_s: float) -> float | None:
    return pinger_result(start_pinger(ns, addr, timeout_s), timeout_s)


def build_guest(cache: str | None = None) -> dict[str, str]:
    """The test guest's files (``MESHD_GUEST_*`` -> path) from bootstrap/guest-image.sh,
    built and cached on first use (``cache``: its ``MESHD_CACHE``); raises
    CalledProcessError if it can't be built."""
    env = dict(os.environ) | ({"MESHD_CACHE": cache} if cache else {})
    out = subprocess.run(
        ["bash", str(Path(__file__).resolve().parents[2] / "bootstrap/guest-image.sh")],
        capture_output=True, text=True, check=True, env=env, timeout=600,
    ).stdout  # fmt: skip
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@dataclass
class HandGuest:
    ns: str
    wid: str
    dir: Path
    tap: str
    mac: str
    started: float  # time.monotonic() just before QEMU was started
    pid: int | None = None

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    def wait_line(self, prefix: str, timeout_s: float = 60.0) -> tuple[str, float]:
        """The first console line starting with ``prefix`` and when it was first seen
        (polled every 20 ms); fails with the console's tail after ``timeout_s``."""
        return wait_console(self.console, prefix, timeout_s)

    def close(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            for _ in range(100):  # its tap can only go once QEMU has let go of it
                if not Path(f"/proc/{self.pid}").exists():
                    break
                time.sleep(0.02)
            self.pid = None
        subprocess.run(
            in_ns(self.ns, ["ip", "link", "del", self.tap]), capture_output=True, check=False
        )


def wait_console(console: Path, prefix: str, timeout_s: float) -> tuple[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        now = time.monotonic()
        try:
            text = console.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        # Whole lines only: the guest may be half-way through writing the last one.
        for ln in text.split("\n")[:-1]:
            if ln.strip().startswith(prefix):
                return ln.strip(), now
        if now > deadline:
            raise AssertionError(f"no {prefix!r} on {console} in {timeout_s}s: {text[-1500:]}")
        time.sleep(0.02)


def fields(line: str) -> dict[str, str]:
    """``MESHD-LEASE ip=A mac=M ...`` → {"ip": "A", "mac": "M", ...}."""
    return dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)


def hand_guest(
    ns: str, bridge: str, wdir: Path, wid: str, cmdline: str, guest: dict[str, str]
) -> HandGuest:
    """Start the test guest on a hand-made tap on ``bridge`` in ``ns`` (module doc)."""
    wdir.mkdir(parents=True, exist_ok=True)
    tap, mac = tap_name(wid, 0), mac_for(wid, 0)
    subprocess.run(in_ns(ns, ["ip", "tuntap", "add", "dev", tap, "mode", "tap"]), check=True)
    subprocess.run(in_ns(ns, ["ip", "link", "set", tap, "master", bridge, "up"]), check=True)
    plan = LaunchPlan(
        binary="qemu-system-x86_64",
        name=f"h13l-{wid}"[:64],
        accel=choose_accel().name,
        machine="microvm",
        memory_mib=128,
        smp=1,
        console=wdir / "console.log",
        qmp=wdir / "qmp.sock",
        pidfile=wdir / "qemu.pid",
        kernel=guest["MESHD_GUEST_VMLINUX"],
        initrd=guest["MESHD_GUEST_INITRD"],
        append=kernel_args("microvm", read_tsc_khz(), cmdline),
        tap=tap,
        bridge=bridge,
        mac=mac,
    )
    g = HandGuest(ns=ns, wid=wid, dir=wdir, tap=tap, mac=mac, started=time.monotonic())
    proc = subprocess.run(
        in_ns(ns, argv(plan)), capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        g.close()
        raise AssertionError(f"qemu exited {proc.returncode}: {proc.stderr[-1000:]}")
    g.pid = int((wdir / "qemu.pid").read_text().strip())
    return g


def meshd_networking_missing() -> str | None:
    """None when this meshd has what issue 13's e2e drives (the address allocator's
    ``[addresses]`` and the host side's ``[guests]`` config sections, ``submit --net``),
    else a sentence naming what is missing and the branch that brings it."""
    cfg = config.lan()
    missing = [
        what
        for what, there in (
            ("the [addresses] config section (branch h13-addr)", hasattr(cfg, "addresses")),
            ("the [guests] config section (branch h13-host)", hasattr(cfg, "guests")),
        )
        if not there
    ]
    help_text = subprocess.run(
        [sys.executable, "-m", "meshd", "submit", "--help"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    if "--net" not in help_text:
        missing.append("`meshd submit --net` (branch h13-addr)")
    if not missing:
        return None
    return "this meshd lacks " + ", ".join(missing) + "; merge them to run the meshd part"
