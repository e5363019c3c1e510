"""meshd's membership beside HashiCorp Serf (memberlist: SWIM + Lifeguard), one harness.

Both are driven the same way, processes on loopback, runs alternated (meshd, serf,
meshd, serf, ...). For each size (``--nodes``) and load (``--loads``):

* every process is started at the same moment (a chassis after a power cut), each
  told one seed (the first node); meshd nodes were enrolled beforehand and keep their
  stores between runs, serf agents start empty;
* ``join_s``: from the spawn of the first process until every process's view holds
  every other one alive at once (from the processes' own logs, read as they are
  written: meshd's ``member <state> name=``, serf's ``EventMember*``); ``all_alive``
  says whether that happened within ``--join-timeout``;
* it then holds ``--hold`` seconds and counts ``false_dead_pairs`` (distinct
  (observer, member) pairs where a *running* member was held dead, over the whole
  run), ``false_dead_events`` and ``suspected_members`` (running members anybody
  suspected: meshd logs every suspicion it holds, serf the ones it originates);
* ``rss_mib`` and ``cpu_pct``: the median process's resident memory and CPU share
  over the hold;
* ``detect_s``: one node (never the seed) is killed with SIGKILL after the hold;
  the time until every survivor holds it dead.

Loads: ``idle``; ``busy`` (two processes spin on the two cores for the whole run);
``busy+sigstop`` (as busy, and every ``--stop-every`` seconds a random member is
stopped with SIGSTOP for 1 s). ``--timings serf`` runs meshd at memberlist's LAN
timings (probe 1 s / 500 ms, gossip 200 ms, suspicion multiplier 4) for the CPU
comparison at equal timings; the default is each one's own defaults (meshd's
``local`` preset, serf's ``lan`` profile).

Serf comes from Debian's ``serf`` package (installed here with apt-get when root and
missing). One JSON line per run, then one ``summary`` line per (size, load) with the
medians and the ratio meshd / serf of each figure.

Run: .venv/bin/python benchmarks/bench_serf.py [--nodes 16,32,64] [--loads idle,busy]
     [--runs 2] [--hold 20] [--timings own|serf] [--impl meshd,serf]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_daemon import compile_bytecode  # noqa: E402 - benchmarks/ is on sys.path

from tests.integration.daemon import MESHD, Daemon, Mesh  # noqa: E402

SERF_TIMINGS = (
    "membership.probe_interval_s=1s",
    "membership.probe_timeout_s=500ms",
    "membership.gossip_interval_s=200ms",
    "membership.suspicion_mult=4",
    "membership.suspicion_max_mult=24",
    "membership.push_pull_interval_s=30s",
)
MESHD_EVENT = re.compile(r'msg="member (alive|suspect|dead|left)" name=(\S+)')
MESHD_READY = re.compile(r'msg="meshd ready" name=(\S+)')
SERF_READY = re.compile(r"Serf agent running!")
SERF_EVENT = re.compile(r"serf: EventMember(Join|Failed|Leave|Reap): (\S+)")
SERF_SUSPECT = re.compile(r"memberlist: Suspect (\S+) has failed")
SERF_STATE = {"Join": "alive", "Failed": "dead", "Leave": "left", "Reap": "left"}


@dataclass
class Proc:
    """One member process and what its log said, stamped as each line arrived."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None
    events: list[tuple[float, str, str]] = field(default_factory=list)
    errors: int = 0
    tracebacks: int = 0
    log: Path | None = None
    _thread: threading.Thread | None = None

    def spawn(self, parse: Callable[[str], tuple[str, str] | None]) -> None:
        self.events = []
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        assert self.popen.stdout is not None
        out = self.popen.stdout
        self._thread = threading.Thread(target=self._read, args=(out, parse), daemon=True)
        self._thread.start()

    def _read(self, out: IO[bytes], parse: Callable[[str], tuple[str, str] | None]) -> None:
        keep = self.log.open("ab") if self.log is not None else None
        for raw in out:
            if keep is not None:
                keep.write(raw)
            now = time.monotonic()
            line = raw.decode(errors="replace")
            if "Traceback" in line:
                self.tracebacks += 1
            if "level=error" in line or "[ERR]" in line:
                self.errors += 1
            ev = parse(line)
            if ev is not None:
                self.events.append((now, *ev))
        if keep is not None:
            keep.close()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def end(self) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._thread is not None:
            self._thread.join(5)


def free_ports(n: int) -> list[int]:
    """``n`` ports free for both UDP and TCP on loopback right now."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as t, socket.socket(type=socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            if port not in ports:
                ports.append(port)
    return ports


class Cluster:
    impl = ""

    def __init__(self, base: Path, n: int) -> None:
        self.base = base
        self.n = n
        self.procs: list[Proc] = []

    def parse(self, line: str) -> tuple[str, str] | None:
        raise NotImplementedError

    def start(self, logs: Path | None = None) -> None:
        for p in self.procs:
            if logs is not None:
                logs.mkdir(parents=True, exist_ok=True)
                p.log = logs / f"{self.impl}-{self.n}-{p.name}.log"
            p.spawn(self.parse)

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                if p.popen is not None and p.popen.poll() is None:
                    p.popen.terminate()
        for p in self.procs:
            p.end()


class MeshdCluster(Cluster):
    impl = "meshd"

    def __init__(self, base: Path, n: int, timings: str) -> None:
        super().__init__(base, n)
        mesh = Mesh(base)
        ports = free_ports(n)
        founder = mesh.daemon("n0")
        founder.init(listen=f"127.0.0.1:{ports[0]}")
        founder.start()
        others = [mesh.daemon(f"n{i}") for i in range(1, n)]
        try:
            for batch in range(0, len(others), 16):  # enrolment: 16 at a time
                group = others[batch : batch + 16]
                procs = [
                    subprocess.Popen(
                        d.init_command(founder.api_token(), f"127.0.0.1:{ports[i + batch + 1]}"),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                    for i, d in enumerate(group)
                ]
                for d, p in zip(group, procs, strict=True):
                    _, err = p.communicate(timeout=120)
                    if p.returncode:
                        raise RuntimeError(f"enrolment of {d.name} failed: {err.decode()}")
        finally:
            founder.stop()
        extra = [a for s in (SERF_TIMINGS if timings == "serf" else ()) for a in ("--set", s)]
        seed = f"127.0.0.1:{ports[0]}"
        daemons: list[Daemon] = [founder, *others]
        for d in daemons:
            argv = [*MESHD, "run", "--data-dir", str(d.data_dir), "--preset", "local"]
            argv += ["--cpus", "2", "--memory", "1GiB", "--disk", "10GiB", *extra]
            if d is not founder:
                argv += ["--seed", seed]
            env = dict(os.environ)
            env.pop("MESHD_DATA_DIR", None)
            self.procs.append(Proc(d.name, argv, env))

    def parse(self, line: str) -> tuple[str, str] | None:
        if m := MESHD_EVENT.search(line):
            return (m.group(1), m.group(2))
        if m := MESHD_READY.search(line):
            return ("ready", m.group(1))
        return None


class SerfCluster(Cluster):
    impl = "serf"

    def __init__(self, base: Path, n: int) -> None:
        super().__init__(base, n)
        ports = free_ports(2 * n)
        seed = f"127.0.0.1:{ports[0]}"
        for i in range(n):
            argv = [
                "serf", "agent", f"-node=n{i}", f"-bind=127.0.0.1:{ports[i]}",
                f"-rpc-addr=127.0.0.1:{ports[n + i]}", "-log-level=info", "-profile=lan",
            ]  # fmt: skip
            if i:
                argv += [f"-retry-join={seed}", "-retry-interval=1s"]
            self.procs.append(Proc(f"n{i}", argv))

    def parse(self, line: str) -> tuple[str, str] | None:
        if m := SERF_EVENT.search(line):
            return (SERF_STATE[m.group(1)], m.group(2))
        if m := SERF_SUSPECT.search(line):
            return ("suspect-origin", m.group(1))
        if SERF_READY.search(line):
            return ("ready", "")
        return None


def views(procs: list[Proc], until: float | None = None) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for p in procs:
        v: dict[str, str] = {}
        for t, state, member in list(p.events):
            if until is not None and t > until:
                break
            if state not in ("suspect-origin", "ready") and member != p.name:
                v[member] = state
        out[p.name] = v
    return out


def joined_at(procs: list[Proc]) -> float | None:
    """The first moment every process held every other one alive."""
    names = {p.name for p in procs}
    merged = sorted((t, p.name, s, m) for p in procs for t, s, m in list(p.events))
    state: dict[tuple[str, str], str] = {}
    need = len(names) * (len(names) - 1)
    alive = 0
    for t, obs, s, m in merged:
        if s in ("suspect-origin", "ready") or m == obs or m not in names:
            continue
        old = state.get((obs, m))
        state[(obs, m)] = s
        alive += (s == "alive") - (old == "alive")
        if alive == need:
            return t
    return None


def sample(pids: list[int]) -> dict[int, tuple[float, int]]:
    """(CPU seconds, RSS bytes) of each pid."""
    tick = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
            out[pid] = ((int(stat[11]) + int(stat[12])) / tick, rss)
    return out


def run(cluster: Cluster, load: str, args: argparse.Namespace) -> dict[str, Any]:
    busy: list[subprocess.Popen[bytes]] = []
    if load.startswith("busy"):
        spin = "while True: pass"
        busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    stopper_done = threading.Event()
    stops: list[tuple[str, float, float]] = []
    procs = cluster.procs
    row: dict[str, Any] = {"impl": cluster.impl, "n": cluster.n, "load": load}
    try:
        t0 = time.monotonic()
        cluster.start(args.logs)
        deadline = t0 + args.join_timeout
        joined = None
        while time.monotonic() < deadline and joined is None:
            time.sleep(0.1)
            joined = joined_at(procs)
        row["join_s"] = round(joined - t0, 2) if joined is not None else None
        row["all_alive"] = joined is not None
        ready = [
            min((t for t, s, _ in list(p.events) if s == "ready"), default=None) for p in procs
        ]
        if all(r is not None for r in ready):
            row["ready_s"] = round(max(r for r in ready if r is not None) - t0, 2)
            if joined is not None:
                row["join_after_ready_s"] = round(max(0.0, joined - t0 - row["ready_s"]), 2)

        def stopper() -> None:
            rng = random.Random(7)
            while not stopper_done.wait(args.stop_every):
                p = rng.choice(procs[1:])
                with contextlib.suppress(ProcessLookupError):
                    t = time.monotonic()
                    os.kill(p.pid, signal.SIGSTOP)
                    time.sleep(1.0)
                    os.kill(p.pid, signal.SIGCONT)
                    stops.append((p.name, t, time.monotonic()))

        th = threading.Thread(target=stopper, daemon=True)
        if load == "busy+sigstop":
            th.start()
        pids = [p.pid for p in procs]
        time.sleep(min(5.0, args.hold / 4))  # the join's own work out of the figures
        s0, h0 = sample(pids), time.monotonic()
        time.sleep(args.hold)
        s1, h1 = sample(pids), time.monotonic()
        stopper_done.set()
        if th.is_alive():
            th.join()
        cpu = [(s1[p][0] - s0[p][0]) / (h1 - h0) * 100 for p in pids if p in s0 and p in s1]
        rss = [s1[p][1] / 2**20 for p in pids if p in s1]
        row["cpu_pct"] = round(statistics.median(cpu), 3) if cpu else None
        row["rss_mib"] = round(statistics.median(rss), 1) if rss else None
        row["stops"] = len(stops)
        # Detection: kill one (not the seed), wait for every survivor to hold it dead.
        victim = procs[len(procs) // 2]
        survivors = [p for p in procs if p is not victim]
        tk = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        detect = None
        while time.monotonic() < tk + args.detect_timeout:
            time.sleep(0.05)
            seen = [
                min((t for t, s, m in list(p.events) if m == victim.name and s == "dead"
                     and t >= tk), default=None)
                for p in survivors
            ]  # fmt: skip
            if all(x is not None for x in seen):
                detect = max(x for x in seen if x is not None) - tk
                break
        row["detect_s"] = round(detect, 2) if detect is not None else None
        # False deads and suspicions of running members, before the kill.
        pairs, events, suspected = set(), 0, set()
        for p in procs:
            for t, s, m in list(p.events):
                if t >= tk or m == p.name:
                    continue
                if s == "dead":
                    pairs.add((p.name, m))
                    events += 1
                if s in ("suspect", "suspect-origin"):
                    suspected.add(m)
        row["false_dead_pairs"] = len(pairs)
        row["false_dead_events"] = events
        row["suspected_members"] = len(suspected)
        row["error_lines"] = sum(p.errors for p in procs)
        row["tracebacks"] = sum(p.tracebacks for p in procs)
        row["exited"] = sum(1 for p in survivors if not p.alive())
    finally:
        stopper_done.set()
        for b in busy:
            b.kill()
            b.wait()
        cluster.close()
    return row


def ensure_serf() -> None:
    if shutil.which("serf"):
        return
    if os.geteuid() != 0:
        sys.exit("serf is not installed; run as root (apt-get install serf) or install it")
    subprocess.run(["apt-get", "install", "-y", "-q", "serf"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def summary(rows: list[dict[str, Any]], n: int, load: str) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": True, "n": n, "load": load}
    keys = (
        "join_s",
        "ready_s",
        "join_after_ready_s",
        "detect_s",
        "false_dead_pairs",
        "suspected_members",
        "rss_mib",
        "cpu_pct",
    )
    for key in keys:
        med = {}
        for impl in ("meshd", "serf"):
            vals = [r[key] for r in rows if r["impl"] == impl and r.get(key) is not None]
            missing = sum(1 for r in rows if r["impl"] == impl and r.get(key) is None)
            if vals:
                med[impl] = round(statistics.median(vals), 3)
                out[f"{impl}_{key}"] = med[impl]
            if missing:
                out[f"{impl}_{key}_missing"] = missing
        if "serf" in med and "meshd" in med and med["serf"]:
            out[f"ratio_{key}"] = round(med["meshd"] / med["serf"], 2)
    for impl in ("meshd", "serf"):
        runs = [r for r in rows if r["impl"] == impl]
        if runs:
            out[f"{impl}_all_alive_runs"] = f"{sum(r['all_alive'] for r in runs)}/{len(runs)}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="16,32,64")
    ap.add_argument("--loads", default="idle,busy,busy+sigstop")
    ap.add_argument("--impl", default="meshd,serf")
    ap.add_argument("--runs", type=int, default=2, help="runs per implementation")
    ap.add_argument("--hold", type=float, default=20.0, help="seconds held after the join")
    ap.add_argument("--join-timeout", type=float, default=90.0)
    ap.add_argument("--detect-timeout", type=float, default=60.0)
    ap.add_argument("--stop-every", type=float, default=3.0)
    ap.add_argument("--logs", type=Path, help="keep every process's log in this directory")
    ap.add_argument("--timings", choices=("own", "serf"), default="own")
    args = ap.parse_args()
    impls = args.impl.split(",")
    if "serf" in impls:
        ensure_serf()
    if "meshd" in impls:  # as installed: no daemon compiles meshd's sources at its start
        compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="bench-serf-") as tmp:
        for n in [int(x) for x in args.nodes.split(",")]:
            base = Path(tmp) / f"meshd-{n}"
            meshd_nodes = MeshdCluster(base, n, args.timings) if "meshd" in impls else None
            for load in args.loads.split(","):
                rows = []
                for _ in range(args.runs):
                    for impl in impls:
                        if impl == "meshd" and meshd_nodes is not None:
                            meshd_nodes.procs = [
                                Proc(p.name, p.argv, p.env) for p in meshd_nodes.procs
                            ]
                            cluster: Cluster = meshd_nodes
                        else:
                            cluster = SerfCluster(Path(tmp) / "serf", n)
                        row = run(cluster, load, args)
                        row["timings"] = args.timings
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                print(json.dumps(summary(rows, n, load)), flush=True)


if __name__ == "__main__":
    main()
