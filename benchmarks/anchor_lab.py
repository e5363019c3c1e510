"""The HA anchor's lab: corosync + pacemaker nodes in namespaces, their BMCs reachable.

Used by ``benchmarks/anchor_pacemaker.py`` (see LAB-NOTES "The HA anchor"). Root only.

* **Packages**: Debian 12's corosync, pacemaker (with pacemaker-cli-utils' cibadmin and
  crm_mon) and fence-agents' ``fence_redfish``; :func:`ensure_packages` installs what is
  missing with apt-get when root, or says why it can't.
* **Nodes**: the cluster network is ``tests/e2e/netns.py``'s lab (a bridge in a switch
  namespace, one network namespace per node; a partition is a veth set down). Each
  node runs in ``ip netns exec NS unshare -m -u -p --fork --mount-proc --kill-child``:
  its own mount, UTS and PID namespaces, with tmpfs on ``/run`` and ``/dev/shm`` and
  per-node bind mounts over ``/etc/corosync``, ``/var/lib/corosync``,
  ``/var/lib/pacemaker``, ``/var/log/corosync`` and ``/var/log/pacemaker`` (libqb's IPC
  uses abstract sockets, which the network namespace separates, and ring buffers in
  ``/dev/shm``). The node's init is a shell that starts ``corosync -f`` then
  ``pacemakerd``. Killing the namespace's init (by its pid) makes the kernel kill every
  process of the node: what a power-off does. ``unshare`` runs under
  ``setpriv --pdeathsig KILL``, so a benchmark that dies takes its nodes with it.
* **BMCs**: one sushy-tools emulator (``tests/integration/sushy.py``) in the root
  namespace on 127.0.0.1. The nodes reach it over a separate management path, as
  blades reach their iLOs: :func:`forward` (run as its own process) listens on
  127.0.0.1:PORT inside each node's network namespace and relays each connection to
  the emulator, so TLS (the test CA, bind-mounted in each node's mount namespace as
  the system CA bundle) and Basic auth are end to end. Cutting a node's cluster link
  leaves its BMC path up: the case where a minority can still reach every BMC.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = {
    "corosync": "corosync",
    "pacemakerd": "pacemaker",
    "cibadmin": "pacemaker-cli-utils",
    "crm_mon": "pacemaker-cli-utils",
    "fence_redfish": "fence-agents",
}
TOOLS = ("ip", "unshare", "nsenter", "mount", "setpriv")
CLONE_NEWNET = 0x40000000


def ensure_packages() -> str | None:
    """None when every package is there (installed now if needed), else why not."""
    missing = sorted({pkg for tool, pkg in PACKAGES.items() if _which(tool) is None})
    if not missing:
        return None
    if os.geteuid() != 0:
        return f"{', '.join(missing)} missing and not root to apt-get them"
    if shutil.which("apt-get") is None:
        return f"{', '.join(missing)} missing and no apt-get (Debian 12 is the anchor)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    last = ""
    for _ in range(10):  # other sessions may hold the dpkg lock for a while
        proc = subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", *missing],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
            check=False,
        )
        if proc.returncode == 0:
            break
        last = (proc.stderr or proc.stdout)[-400:]
        if "lock" not in last:
            break
        time.sleep(6)
    still = sorted({pkg for tool, pkg in PACKAGES.items() if _which(tool) is None})
    if still:
        return f"apt-get install {' '.join(missing)} failed: {last.strip()}"
    return None


def available() -> str | None:
    """None if this machine can run the lab, else the reason it can't."""
    if os.geteuid() != 0:
        return "the anchor needs root (namespaces, mounts, corosync)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    return None


def _which(tool: str) -> str | None:
    return shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")


# -- corosync configuration -------------------------------------------------------------


def corosync_conf(nodes: Sequence[tuple[str, str]], token_ms: int | None) -> str:
    """Debian's shipped corosync.conf for these nodes; the token set only when tuned.

    A tuned token is the token itself: ``token_coefficient: 0``, or corosync adds
    650 ms per node beyond two (3,650 ms shipped at 3 nodes).
    """
    token = f"\ttoken: {token_ms}\n\ttoken_coefficient: 0\n" if token_ms is not None else ""
    nodelist = "".join(
        f"\tnode {{\n\t\tname: {name}\n\t\tnodeid: {i}\n\t\tring0_addr: {addr}\n\t}}\n"
        for i, (name, addr) in enumerate(nodes, start=1)
    )
    return (
        "totem {\n\tversion: 2\n\tcluster_name: anchor\n"
        f"\tcrypto_cipher: none\n\tcrypto_hash: none\n{token}}}\n"
        "logging {\n\tfileline: off\n\tto_stderr: no\n\tto_logfile: yes\n"
        "\tlogfile: /var/log/corosync/corosync.log\n\tto_syslog: no\n"
        "\ttimestamp: hires\n\tdebug: off\n}\n"
        "quorum {\n\tprovider: corosync_votequorum\n}\n"
        f"nodelist {{\n{nodelist}}}\n"
    )


# -- one node ----------------------------------------------------------------------------

_NODE_SH = r"""
set -e
hostname "$NODE"
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount --bind "$D/etc-corosync" /etc/corosync
mount --bind "$D/var-lib-corosync" /var/lib/corosync
mount --bind "$D/var-lib-pacemaker" /var/lib/pacemaker
mount --bind "$D/var-log-corosync" /var/log/corosync
mount --bind "$D/var-log-pacemaker" /var/log/pacemaker
mount --bind "$D/ca.pem" /etc/ssl/certs/ca-certificates.crt
corosync -f > "$D/corosync.out" 2>&1 &
i=0
until corosync-cfgtool -s > /dev/null 2>&1; do
  i=$((i + 1)); [ "$i" -lt 300 ] || { echo "corosync did not start" >&2; exit 3; }
  sleep 0.1
done
pacemakerd > "$D/pacemakerd.out" 2>&1 &
echo started > "$D/started"
wait
"""

_PACEMAKER_DIRS = ("cib", "pengine", "blackbox", "cores")


@dataclass
class Node:
    """One cluster node: its namespaces, its files under ``dir``, its processes."""

    name: str
    ns: str
    addr: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    init_pid: int = 0

    def prepare(self, conf: str, ca_pem: bytes) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        for sub in ("etc-corosync", "var-lib-corosync", "var-log-corosync"):
            (self.dir / sub).mkdir(parents=True)
        (self.dir / "etc-corosync" / "corosync.conf").write_text(conf)
        uidgid = Path("/etc/corosync/uidgid.d")
        if uidgid.is_dir():
            shutil.copytree(uidgid, self.dir / "etc-corosync" / "uidgid.d")
        lib = self.dir / "var-lib-pacemaker"
        for sub in _PACEMAKER_DIRS:
            (lib / sub).mkdir(parents=True)
        logs = self.dir / "var-log-pacemaker"
        logs.mkdir()
        (logs / "bundles").mkdir()
        for path, mode in [(lib, 0o755), *((lib / s, 0o750) for s in _PACEMAKER_DIRS)]:
            shutil.chown(path, "hacluster", "haclient")
            path.chmod(mode)
        shutil.chown(logs, "hacluster", "haclient")
        logs.chmod(0o770)
        (self.dir / "ca.pem").write_bytes(ca_pem)

    def start(self) -> None:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NODE": self.name, "D": str(self.dir)}
        # setpriv: if this benchmark dies however it dies, unshare gets SIGKILL, and with
        # it (--kill-child) the namespace's init and every process of the node.
        argv = [
            "setpriv", "--pdeathsig", "KILL",
            "ip", "netns", "exec", self.ns,
            "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
            "--propagation", "private", "--kill-child=SIGKILL",
            "sh", "-c", _NODE_SH,
        ]  # fmt: skip
        with (self.dir / "init.out").open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        end = time.monotonic() + 10
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        while time.monotonic() < end:
            with contextlib.suppress(OSError, ValueError):
                pids = children.read_text().split()
                if pids:
                    self.init_pid = int(pids[0])
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError(f"{self.name}: the node's namespaces did not start: {self.log()}")

    def started(self) -> bool:
        return (self.dir / "started").exists()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "init.out").read_text(errors="replace")[-800:]
        return ""

    def run(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``argv`` inside this node's namespaces (network, mount, UTS, PID)."""
        if not self.init_pid:
            raise RuntimeError(f"{self.name} is not running")
        cmd = ["nsenter", "-t", str(self.init_pid), "-n", "-m", "-u", "-p", "--", *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def kill(self) -> None:
        """Power the node off: its namespace's init by pid, then ``unshare`` by pid."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for pid in (self.init_pid, proc.pid):
            if pid and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


# -- the management path: 127.0.0.1:PORT in each node's netns relays to the emulator ----


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def listen_in(netns: Sequence[str], port: int) -> list[socket.socket]:
    """A listening socket on 127.0.0.1:``port`` inside each named network namespace."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    socks: list[socket.socket] = []
    try:
        for name in netns:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                _setns(fd)
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen(64)
                sock.setblocking(False)
                socks.append(sock)
            finally:
                os.close(fd)
                _setns(home)
    finally:
        os.close(home)
    return socks


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _forward(netns: Sequence[str], port: int) -> None:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    servers = [await asyncio.start_server(relay, sock=s) for s in listen_in(netns, port)]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def forward(netns: Sequence[str], port: int) -> None:
    """Relay 127.0.0.1:``port`` in each namespace to 127.0.0.1:``port`` here (until killed)."""
    asyncio.run(_forward(netns, port))


def start_forwarder(netns: Sequence[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """:func:`forward` as its own process; returns once it listens everywhere."""
    argv = ["setpriv", "--pdeathsig", "KILL", sys.executable, __file__, "forward", str(port)]
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*argv, *netns],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        end_process(proc)
        raise RuntimeError(f"the BMC relay did not start: {log.read_text(errors='replace')}")
    return proc


def end_process(proc: subprocess.Popen[bytes]) -> None:
    """End one process we started, by its pid: TERM, then KILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "forward":
    forward(sys.argv[3:], int(sys.argv[2]))
