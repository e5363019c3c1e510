"""A harness for integration tests: real ``meshd`` daemons as separate processes.

Every daemon is ``python -m meshd run`` in its own data directory, with its stderr
(the daemon's log) appended to ``DATA_DIR/meshd.log``. Readiness is what an operator
would check: the unix socket answers ``GET /v1/health`` with 200. A daemon that exits
or misses the deadline fails the test with the tail of its log.

:class:`Mesh` owns the daemons it made and :meth:`Mesh.close` ends each one by its own
pid (SIGTERM, then SIGKILL); the ``mesh_factory`` fixture in ``conftest.py`` calls it
in ``finally``. Everything binds 127.0.0.1 port 0, so meshes never collide.

Typical use::

    alpha = mesh.found("alpha")                 # init + run, ready
    beta = mesh.join("beta", via=alpha)         # token, init --join, run
    many = mesh.join_many(["n1", "n2"], via=alpha)  # enrol and start concurrently
    alpha.https_get("/v1/node", cert=beta.node_cert).status == 200
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from meshd.cli.client import DaemonClient
from meshd.errors import ApiError, DaemonError

MESHD = (sys.executable, "-m", "meshd")
DOMAIN = "lab.example"
LISTEN = "127.0.0.1:0"
READY_TIMEOUT_S = 30.0  # generous: 16 daemons starting at once on 2 cores
STOP_TIMEOUT_S = 10.0
CLI_TIMEOUT_S = 60.0
LOG_NAME = "meshd.log"

CertPair = tuple[Path, Path]  # (certificate, key) PEM files


class HarnessError(AssertionError):
    """A daemon did not start, answer or stop as the harness expected."""


def meshd(
    *args: str | Path,
    data_dir: Path | None = None,
    check: bool = False,
    timeout: float = CLI_TIMEOUT_S,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run one ``meshd`` CLI command to completion; ``check`` fails on a non-zero exit.

    ``prefix`` wraps the command, e.g. ``ip netns exec NS`` to run it on a test host.
    """
    argv = [*prefix, *MESHD, *map(str, args)]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=_child_env(),
        check=False,
    )
    if check and proc.returncode != 0:
        raise HarnessError(
            f"`meshd {' '.join(argv[3:])}` exited {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MESHD_DATA_DIR", None)  # every call names its --data-dir
    return env


# -- the TCP API (mTLS) ------------------------------------------------------------


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str

    def json(self) -> Any:
        return json.loads(self.body)


def client_context(ca_file: Path, cert: CertPair | None = None) -> ssl.SSLContext:
    """Trust only the mesh CA (no hostname: nodes are addressed by IP); maybe prove who we are."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def https_request(
    address: str,
    method: str,
    path: str,
    *,
    ca_file: Path,
    cert: CertPair | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> HttpResponse:
    """One request to a node's TCP API. TLS failures propagate (ssl.SSLError, OSError)."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPSConnection(
        host.strip("[]"), int(port), context=client_context(ca_file, cert), timeout=timeout
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return HttpResponse(resp.status, resp.read(), resp.getheader("Content-Type", ""))
    finally:
        conn.close()


# -- one daemon ----------------------------------------------------------------------


@dataclass
class Daemon:
    """One node: its data directory and, while it runs, its ``meshd run`` process."""

    name: str
    data_dir: Path
    preset: str = "local"
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)
    _address: str | None = field(default=None, repr=False)
    # Wraps every command of this node, e.g. ("ip", "netns", "exec", NS) for a test host.
    prefix: tuple[str, ...] = ()

    # -- files -----------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "meshd.sock"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "identity" / "ca.crt"

    @property
    def node_cert(self) -> CertPair:
        """This node's own certificate and key, usable as an API client certificate."""
        ident = self.data_dir / "identity"
        return ident / "node.crt", ident / "node.key"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log yet)"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"

    # -- CLI ---------------------------------------------------------------------------

    def cli(
        self, *args: str | Path, check: bool = False, timeout: float = CLI_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """``meshd ARGS --data-dir <this node>``."""
        return meshd(
            *args, data_dir=self.data_dir, check=check, timeout=timeout, prefix=self.prefix
        )

    def init(
        self,
        *,
        domain: str | None = DOMAIN,
        join: str | None = None,
        listen: str = LISTEN,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Found a mesh (``join`` None) or enrol with a token; ``listen`` goes to meshd.toml."""
        args: list[str] = ["init", "--name", self.name, "--listen", listen]
        if join is not None:
            args += ["--join", join]
        elif domain is not None:
            args += ["--domain", domain]
        return self.cli(*args, check=check)

    def init_command(self, join: str, listen: str = LISTEN) -> list[str]:
        return [
            *self.prefix,
            *MESHD,
            "init",
            "--name",
            self.name,
            "--join",
            join,
            "--listen",
            listen,
            "--data-dir",
            str(self.data_dir),
        ]

    def create_token(self, ttl: str | None = None) -> str:
        """A join token through the CLI (``meshd token create``), as an operator gets one."""
        args = ["token", "create"] + (["--ttl", ttl] if ttl else [])
        return self.cli(*args, check=True).stdout.strip()

    def api_token(self, ttl_s: float | None = None) -> str:
        """A join token through the running daemon's API (no CLI start-up: for many joins)."""
        body: dict[str, Any] = {} if ttl_s is None else {"ttl_s": ttl_s}
        doc = self.api("POST", "/v1/tokens", body)
        return str(doc["token"])

    # -- process -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise HarnessError(f"{self.name} was never started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, *extra: str) -> subprocess.Popen[bytes]:
        """Start ``meshd run`` without waiting; pair with :meth:`wait_ready`."""
        if self.running:
            raise HarnessError(f"{self.name} is already running (pid {self.pid})")
        self._close_log()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._address = None
        argv = [
            *self.prefix,
            *MESHD,
            "run",
            "--data-dir",
            str(self.data_dir),
            "--preset",
            self.preset,
            *extra,
        ]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=_child_env(),
        )
        return self.proc

    def start(self, *extra: str, timeout: float = READY_TIMEOUT_S) -> Daemon:
        self.spawn(*extra)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll ``GET /v1/health`` on the socket until 200; fail with the log tail."""
        deadline = time.monotonic() + timeout
        client = DaemonClient(self.socket_path, timeout=2.0)
        last = "no answer yet"
        while True:
            if self.proc is None:
                raise HarnessError(f"{self.name} was never started")
            code = self.proc.poll()
            if code is not None:
                raise HarnessError(
                    f"meshd {self.name} exited with {code} before it was ready; "
                    f"log tail:\n{self.log_tail()}"
                )
            if self.socket_path.exists():
                try:
                    client.request("GET", "/v1/health")
                    return
                except (DaemonError, ApiError) as exc:
                    last = str(exc)
            if time.monotonic() >= deadline:
                raise HarnessError(
                    f"meshd {self.name} (pid {self.proc.pid}) not ready after {timeout:.0f}s "
                    f"({last}); log tail:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def terminate(self) -> None:
        """Send SIGTERM without waiting (to stop many daemons at once)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_log()
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL (``kill -9``): no shutdown at all; the socket file stays behind."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- API -----------------------------------------------------------------------------

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A request over the unix socket (the local operator: every route allowed)."""
        return DaemonClient(self.socket_path, timeout=10.0).request(method, path, body)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.api("GET", "/v1/node")
        return doc

    @property
    def address(self) -> str:
        """The TCP address the running daemon bound (it changes across restarts: port 0)."""
        if self._address is None:
            self._address = str(self.status()["address"])
        return self._address

    def https(
        self,
        method: str,
        path: str,
        *,
        cert: CertPair | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        ca_file: Path | None = None,
    ) -> HttpResponse:
        return https_request(
            self.address,
            method,
            path,
            ca_file=ca_file or self.ca_file,
            cert=cert,
            body=body,
            headers=headers,
        )

    def https_get(self, path: str, cert: CertPair | None = None) -> HttpResponse:
        """``GET path`` on this node's TCP API, trusting its mesh CA, with ``cert`` or none."""
        return self.https("GET", path, cert=cert)


# -- a set of daemons ----------------------------------------------------------------


@dataclass
class Mesh:
    """Daemons under one base directory; :meth:`close` ends every one it started."""

    base: Path
    daemons: list[Daemon] = field(default_factory=list)

    def daemon(self, name: str, preset: str = "local") -> Daemon:
        d = Daemon(name, self.base / name, preset)
        self.daemons.append(d)
        return d

    __call__ = daemon

    def found(self, name: str = "alpha", domain: str = DOMAIN, start: bool = True) -> Daemon:
        d = self.daemon(name)
        d.init(domain=domain)
        return d.start() if start else d

    def join(self, name: str, via: Daemon, start: bool = True, token: str | None = None) -> Daemon:
        """Enrol ``name`` with a token from ``via`` (created with the CLI unless given)."""
        d = self.daemon(name)
        d.init(join=token or via.create_token())
        return d.start() if start else d

    def join_many(self, names: Sequence[str], via: Daemon, start: bool = True) -> list[Daemon]:
        """Enrol and start several nodes concurrently (tokens from ``via``'s API)."""
        nodes = [self.daemon(n) for n in names]
        procs = [
            (d, subprocess.Popen(d.init_command(via.api_token()), env=_child_env(), **_PIPES))
            for d in nodes
        ]
        failures = []
        try:
            for d, p in procs:
                _, err = p.communicate(timeout=CLI_TIMEOUT_S)
                if p.returncode != 0:
                    failures.append(f"{d.name}: {err.strip()}")
        finally:
            for _, p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if failures:
            raise HarnessError("enrolment failed: " + "; ".join(failures))
        if start:
            self.start_all(nodes)
        return nodes

    def start_cluster(
        self, names: Sequence[str], *run_args: str, timeout: float = 30.0
    ) -> list[Daemon]:
        """Found ``names[0]``, enrol the rest through it, run all with ``run_args`` (e.g.
        a declared capacity), and wait until every node sees every node alive."""
        founder = self.daemon(names[0])
        founder.init()
        founder.start(*run_args)
        others = self.join_many(names[1:], via=founder, start=False)
        for d in others:
            d.spawn(*run_args)
        for d in others:
            d.wait_ready()
        nodes = [founder, *others]
        wait_all_alive(nodes, timeout)
        return nodes

    def start_all(self, nodes: Iterable[Daemon]) -> None:
        nodes = list(nodes)
        for d in nodes:
            d.spawn()
        for d in nodes:
            d.wait_ready()

    def close(self) -> None:
        """SIGTERM every running daemon by pid, then wait; SIGKILL stragglers."""
        for d in self.daemons:
            d.terminate()
        errors = []
        for d in self.daemons:
            try:
                d.stop()
            except Exception as exc:  # keep ending the others
                errors.append(f"{d.name}: {exc}")
                with contextlib.suppress(Exception):
                    d.kill()
        if errors:
            raise HarnessError("could not stop: " + "; ".join(errors))


_PIPES: dict[str, Any] = {
    "stdin": subprocess.DEVNULL,
    "stdout": subprocess.PIPE,
    "stderr": subprocess.PIPE,
    "text": True,
}


def wait_all_alive(nodes: Sequence[Daemon], timeout: float = 30.0) -> None:
    """Until every node's membership view shows all of ``nodes`` alive."""
    names = {d.name for d in nodes}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views = [
            {p["name"] for p in d.api("GET", "/v1/peers") if p["state"] == "alive"} for d in nodes
        ]
        if all(names <= v for v in views):
            return
        time.sleep(0.1)
    raise HarnessError(f"nodes did not all see each other alive within {timeout}s")


def wait_for(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``check`` every 0.1 s until it is true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
