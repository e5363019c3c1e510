"""One supervised dnsmasq per guest bridge: DHCP only, for this node's guests.

The command line is :func:`meshd.core.guest_net.dnsmasq_argv`'s; this adapter runs it
(its own session, so a signal to meshd's group does not reach it), writes its hosts
file (``MAC,IP,hostname`` of this node's guests on the bridge) and sends SIGHUP when
that changes, frees a departed guest's lease with ``dhcp_release`` (removing the line
does not), restarts dnsmasq if it dies, and stops it when meshd stops. A meshd that
restarts adopts the dnsmasq its pidfile names if that process is still dnsmasq on this
bridge (its command line says so), else starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from meshd.adapters.drivers.qemu_host import run_tool
from meshd.core.guest_net import DnsmasqPaths, HostEntry, dnsmasq_argv, hosts_file
from meshd.core.network import Address, Network
from meshd.errors import DriverError

logger = logging.getLogger(__name__)
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _alive_as(pid: int, argv: list[str]) -> bool:
    """``pid`` runs and is this dnsmasq (same interface and hosts file)."""
    cmd = _cmdline(pid)
    want = [a for a in argv if a.startswith(("--interface=", "--dhcp-hostsfile="))]
    return bool(cmd) and Path(cmd[0]).name == "dnsmasq" and all(a in cmd for a in want)


class Dnsmasq:
    """dnsmasq on ``bridge`` serving ``net`` with this node's address ``node_ip``."""

    def __init__(
        self,
        bridge: str,
        net: Network,
        node_ip: Address,
        workdir: Path,
        *,
        binary: str = "dnsmasq",
        lease_s: int = 3600,
        timeout_s: float = 5.0,
        check_s: float = 1.0,
    ) -> None:
        self.bridge = bridge
        self.timeout_s = timeout_s
        self.check_s = check_s
        self.dir = workdir
        self.paths = DnsmasqPaths(
            hosts=str(workdir / f"{bridge}.hosts"),
            pidfile=str(workdir / f"{bridge}.pid"),
            leases=str(workdir / f"{bridge}.leases"),
        )
        self.argv = [
            *dnsmasq_argv(binary, bridge, net, node_ip, self.paths, lease_s),
            "--user=root",  # the hosts file is in meshd's private directory
        ]
        self.log = workdir / f"{bridge}.log"
        self.pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._hosts = ""
        self.restarts = 0

    async def start(self, entries: list[HostEntry]) -> None:
        """Write the hosts file, adopt the running dnsmasq or start one, supervise it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_hosts(entries)
        pid = self._pidfile()
        if pid is not None and _alive_as(pid, self.argv):
            self.pid = pid
            logger.info("dnsmasq adopted bridge=%s pid=%s", self.bridge, pid)
            os.kill(pid, signal.SIGHUP)  # the hosts file may have changed meanwhile
        else:
            if pid is not None and _cmdline(pid)[:1] and Path(_cmdline(pid)[0]).name == "dnsmasq":
                await self._kill(pid)  # an older dnsmasq of ours with other flags
            await self._spawn()
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    def _pidfile(self) -> int | None:
        try:
            return int(Path(self.paths.pidfile).read_text().strip())
        except (OSError, ValueError):
            return None

    async def _spawn(self) -> None:
        with self.log.open("ab") as log:
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            except OSError as exc:
                raise DriverError(
                    f"cannot run dnsmasq for bridge {self.bridge} ({exc.strerror}): "
                    "apt-get install dnsmasq-base"
                ) from exc
        self.pid = self._proc.pid
        self._save_pid(self.pid)
        # It fails fast on a bad flag or an address it can't bind: say so now.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 0.3)
            raise DriverError(
                f"dnsmasq for bridge {self.bridge} exited at once: {self._last_log()}"
            )
        logger.info("dnsmasq started bridge=%s pid=%s", self.bridge, self.pid)

    def _last_log(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "no log"

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.returncode is None
        return self.pid is not None and _alive_as(self.pid, self.argv)

    async def _supervise(self) -> None:
        delay = RESTART_FIRST_S
        while True:
            await asyncio.sleep(self.check_s)
            if self.running():
                delay = RESTART_FIRST_S
                continue
            logger.warning(
                "dnsmasq died bridge=%s last=%s; restarting", self.bridge, self._last_log()
            )
            try:
                await self._spawn()
                self.restarts += 1
            except DriverError as exc:
                logger.error("%s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX_S)

    def _write_hosts(self, entries: list[HostEntry]) -> bool:
        text = hosts_file(entries)
        if text == self._hosts and Path(self.paths.hosts).exists():
            return False
        tmp = Path(self.paths.hosts + ".tmp")
        tmp.write_text(text)
        tmp.replace(self.paths.hosts)
        self._hosts = text
        return True

    def set_hosts(self, entries: list[HostEntry]) -> None:
        """The guests dnsmasq answers; SIGHUP (re-reads the file) when it changed."""
        if self._write_hosts(entries) and self.pid is not None and self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGHUP)

    async def release(self, ip: Address, mac: str) -> None:
        """Drop the lease of a guest that left (else it comes back with a stale one)."""
        try:
            await run_tool(
                ["dhcp_release", self.bridge, str(ip), mac],
                f"cannot release the lease of {ip}",
                self.timeout_s,
            )
        except DriverError as exc:
            logger.warning("%s (apt-get install dnsmasq-utils)", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.pid is not None and self.running():
            await self._kill(self.pid)
            if self._proc is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._proc.wait(), self.timeout_s)
        self._save_pid(None)
        self.pid = None

    def _save_pid(self, pid: int | None) -> None:
        path = Path(self.paths.pidfile)
        if pid is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(f"{pid}\n")

    async def _kill(self, pid: int) -> None:
        """SIGTERM; for one we did not start (adopted), wait until it is gone."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if self._proc is not None:
            return
        for _ in range(max(1, int(self.timeout_s / 0.02))):
            if not _cmdline(pid):
                return
            await asyncio.sleep(0.02)
