"""Start-up and footprint of the CLI and the daemon (issue 15, items 2 and 3).

Prints one JSON line per figure (``"bench": "startup"``):

* ``python_pass``: ``python -c pass``, the anchor: no Python program starts faster here.
* ``cli``: ``meshd --version``, ``meshd --help``, and ``meshd status`` / ``meshd peers``
  against a running daemon: wall time and CPU time (user + system, from ``wait4``'s
  rusage of that one child) and max RSS, medians of ``--runs`` runs.
* ``cli_imports``: how many modules a light command loads, and whether any heavy one
  (aiohttp, cryptography, the daemon's shell, kademlia, zeroconf, qemu) is among them.
* ``daemon_ready``: ``meshd run --preset local`` (one node founded by ``meshd init``)
  from spawn to the first 200 from ``GET /v1/health`` on the unix socket: wall time and
  the daemon's CPU time when it answered.
* ``daemon_idle``: that daemon after ``--idle`` seconds: RSS, USS/PSS (smaps_rollup),
  and its CPU time over a further ``--idle`` seconds as a percentage of one core.
* ``rss_steps``: where the RSS goes: one process importing, in order, the interpreter's
  own start, the stdlib the daemon uses, each third-party dependency, then the daemon's
  own modules; the RSS after each step (the floor is the third-party line).
* ``daemons_together``: ``--together`` single-node daemons spawned at once: wall time
  until every one answers, their summed CPU time by then, and after ``--idle``
  seconds the mean RSS and PSS per daemon (PSS shares the libraries' pages between
  them: what each daemon really costs the host when many run).
* ``smaps``: the idle daemon's mappings summed by kind (anonymous heap, each shared
  library), largest first.
* ``importtime``: the slowest imports (cumulative, ``-X importtime``) of ``meshd``'s CLI
  entry and of the daemon's composition root.

Wall times on a shared machine are noisy; CPU times much less so. Everything runs in a
temporary directory; every daemon is stopped by its pid whatever happens.

Usage: .venv/bin/python benchmarks/bench_startup.py [--runs 10] [--starts 5] [--idle 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench_daemon import (  # benchmarks/ is on sys.path when run as a script
    compile_bytecode,
    wait_ready,
)

MESHD = (sys.executable, "-m", "meshd")
HEAVY = ("aiohttp", "cryptography", "meshd.shell", "kademlia", "zeroconf", "qemu", "apsw")

# The RSS breakdown's steps: (label, modules imported at that step).
RSS_STEPS: list[tuple[str, list[str]]] = [
    ("stdlib", ["asyncio", "ssl", "json", "dataclasses", "inspect", "subprocess", "tomllib"]),
    ("uvloop", ["uvloop"]),
    ("msgspec+orjson", ["msgspec", "orjson"]),
    ("cryptography", ["cryptography.x509", "cryptography.hazmat.primitives.asymmetric.ed25519"]),
    ("pynacl", ["nacl.signing", "nacl.secret", "nacl.public", "nacl.pwhash"]),
    ("apsw", ["apsw"]),
    ("aiohttp", ["aiohttp", "aiohttp.web"]),
    ("kademlia", ["kademlia.network"]),
    ("psutil", ["psutil"]),
    ("meshd daemon", ["meshd.cli.main", "meshd.cli.commands", "meshd.shell.node"]),
    # What the daemon loads only when needed: with --mdns, with a VM.
    ("zeroconf (--mdns)", ["zeroconf", "zeroconf.asyncio"]),
    ("qemu.qmp (a VM)", ["qemu.qmp"]),
]


def emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"bench": "startup", **doc}) + "\n")
    sys.stdout.flush()


def med(samples: Sequence[float]) -> float:
    return round(statistics.median(samples), 2)


def timed_child(argv: Sequence[str]) -> tuple[int, float, float, float, str]:
    """Run ``argv``; its exit code, wall ms, CPU ms, max RSS MiB and stdout."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = (time.perf_counter() - start) * 1000.0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    cpu = (ru.ru_utime + ru.ru_stime) * 1000.0
    return proc.returncode, wall, cpu, ru.ru_maxrss / 1024.0, text


def measure(label: str, argv: Sequence[str], runs: int) -> None:
    timed_child(argv)  # warm: bytecode and page cache are not start-up
    walls, cpus, rss = [], [], []
    for _ in range(runs):
        code, wall, cpu, maxrss, text = timed_child(argv)
        if code != 0:
            raise SystemExit(f"{label} exited {code}: {text.strip()[-500:]}")
        walls.append(wall)
        cpus.append(cpu)
        rss.append(maxrss)
    emit(
        {
            "figure": "cli" if label != "python_pass" else "python_pass",
            "command": label,
            "wall_ms_p50": med(walls),
            "wall_ms_min": round(min(walls), 2),
            "cpu_ms_p50": med(cpus),
            "max_rss_mib_p50": med(rss),
            "n": runs,
        }
    )


def cli_imports(argv: Sequence[str]) -> None:
    """Which modules ``meshd ARGV`` loads, by running main() and listing sys.modules."""
    code = (
        "import sys\n"
        "from meshd.cli import main\n"
        "try:\n"
        f"    main.main({list(argv)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stdout = sys.__stdout__\n"
        "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    mods = proc.stderr.split()
    heavy = sorted({h for h in HEAVY for m in mods if m == h or m.startswith(h + ".")})
    emit(
        {
            "figure": "cli_imports",
            "command": "meshd " + " ".join(argv),
            "modules": len(mods),
            "heavy_loaded": heavy,
        }
    )


def rss_of(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with Path(f"/proc/{pid}/status").open() as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_mib"] = int(line.split()[1]) / 1024.0
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    if rollup.exists():
        fields = {}
        for line in rollup.read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            fields[key] = int(rest.split()[0])
        out["pss_mib"] = fields["Pss"] / 1024.0
        out["uss_mib"] = (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024.0
        out["anon_mib"] = fields["Anonymous"] / 1024.0
    return {k: round(v, 2) for k, v in out.items()}


def cpu_ms_of(pid: int) -> float:
    """CPU time of every thread of ``pid`` (schedstat: nanoseconds, not 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e6


def smaps_by_kind(pid: int, top: int = 12) -> list[tuple[str, float]]:
    """RSS summed per mapping name: a library's file name, [heap], or anon."""
    sums: dict[str, int] = {}
    name = "anon"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split(None, 5)
            path = parts[5].strip() if len(parts) > 5 else ""
            name = Path(path).name if path.startswith("/") else (path or "anon")
        elif line.startswith("Rss:"):
            sums[name] = sums.get(name, 0) + int(line.split()[1])
    ranked = sorted(sums.items(), key=lambda kv: -kv[1])[:top]
    return [(k, round(v / 1024.0, 2)) for k, v in ranked]


@contextlib.contextmanager
def daemon(
    data_dir: Path, wait: bool = True
) -> Iterator[tuple[subprocess.Popen[bytes], float, float]]:
    """``meshd run``; yields the process, its spawn-to-ready wall ms and CPU ms then
    (with ``wait`` False: at once, and the two figures are 0)."""
    with (data_dir / "meshd.log").open("ab") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*MESHD, "run", "--data-dir", str(data_dir), "--preset", "local"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        try:
            if not wait:
                yield proc, 0.0, 0.0
                return
            wait_ready(data_dir, proc)
            ready_ms = (time.perf_counter() - start) * 1000.0
            yield proc, ready_ms, cpu_ms_of(proc.pid)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)


def founded(base: Path, name: str) -> Path:
    node = base / name
    code, *_, text = timed_child(
        [*MESHD, "init", "--name", name, "--domain", "bench.example",
         "--listen", "127.0.0.1:0", "--data-dir", str(node)]
    )  # fmt: skip
    if code != 0:
        raise SystemExit(f"meshd init failed: {text}")
    return node


def together(base: Path, count: int, idle_s: float) -> None:
    """``count`` daemons spawned at once; all are stopped by pid whatever happens."""
    nodes = [founded(base, f"n{i}") for i in range(count)]
    with contextlib.ExitStack() as stack:
        start = time.perf_counter()
        procs = []
        for node in nodes:
            procs.append(stack.enter_context(daemon(node, wait=False))[0])
        for node, proc in zip(nodes, procs, strict=True):
            wait_ready(node, proc)
        wall = (time.perf_counter() - start) * 1000.0
        cpu = sum(cpu_ms_of(p.pid) for p in procs)
        time.sleep(idle_s)
        mems = [rss_of(p.pid) for p in procs]
        emit(
            {
                "figure": "daemons_together",
                "daemons": count,
                "all_ready_ms": round(wall, 1),
                "cpu_ms_sum": round(cpu, 1),
                **{f"mean_{k}": round(statistics.fmean(m[k] for m in mems), 2) for k in mems[0]},
            }
        )


def rss_steps() -> None:
    code = (
        "import importlib, json, sys\n"
        "def rss():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmRSS:'):\n"
        "            return int(line.split()[1]) / 1024.0\n"
        "out = [['python', rss()]]\n"
        f"for label, mods in {RSS_STEPS!r}:\n"
        "    for m in mods:\n"
        "        importlib.import_module(m)\n"
        "    out.append([label, rss()])\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    steps = json.loads(proc.stdout)
    prev = 0.0
    for label, rss in steps:
        emit(
            {
                "figure": "rss_steps",
                "step": label,
                "rss_mib": round(rss, 2),
                "added_mib": round(rss - prev, 2),
            }
        )
        prev = rss


def importtime(target: str, top: int = 8) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {target}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m.group(2)), len(m.group(3)) // 2, m.group(4)))
    total = max(r[0] for r in rows)
    # The heaviest imports one or two levels under the target: where its time goes.
    ranked = sorted((r for r in rows if r[1] in (1, 2)), key=lambda r: -r[0])[:top]
    emit(
        {
            "figure": "importtime",
            "target": target,
            "total_ms": round(total / 1000.0, 1),
            "top_ms": [[name, round(us / 1000.0, 1)] for us, _, name in ranked],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each CLI command")
    parser.add_argument("--starts", type=int, default=5, help="daemon starts to time")
    parser.add_argument("--idle", type=float, default=10.0, help="idle seconds before RSS/CPU")
    parser.add_argument("--together", type=int, default=4, help="daemons started at once")
    args = parser.parse_args()

    emit({"figure": "bytecode", "modules_compiled": compile_bytecode()})
    measure("python_pass", [sys.executable, "-c", "pass"], args.runs)
    measure("meshd --version", [*MESHD, "--version"], args.runs)
    measure("meshd --help", [*MESHD, "--help"], args.runs)
    cli_imports(["--version"])
    cli_imports(["status", "--help"])

    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        node = founded(Path(tmp), "alpha")
        with daemon(node):
            pass  # warm-up start
        walls, cpus = [], []
        for _ in range(args.starts):
            with daemon(node) as (_, wall, cpu):
                walls.append(wall)
                cpus.append(cpu)
        emit(
            {
                "figure": "daemon_ready",
                "command": "meshd run --preset local",
                "wall_ms_p50": med(walls),
                "wall_ms_min": round(min(walls), 2),
                "cpu_ms_p50": med(cpus),
                "n": args.starts,
            }
        )
        with daemon(node) as (proc, _, _):
            for cmd in ("status", "peers"):
                measure(f"meshd {cmd}", [*MESHD, cmd, "--data-dir", str(node)], args.runs)
            cli_imports(["status", "--data-dir", str(node)])
            time.sleep(args.idle)
            mem = rss_of(proc.pid)
            before = cpu_ms_of(proc.pid)
            time.sleep(args.idle)
            idle_cpu = (cpu_ms_of(proc.pid) - before) / (args.idle * 1000.0) * 100.0
            emit(
                {
                    "figure": "daemon_idle",
                    "command": "meshd run --preset local",
                    **mem,
                    "idle_cpu_pct": round(idle_cpu, 3),
                    "idle_s": args.idle,
                }
            )
            emit({"figure": "smaps", "top_mib": smaps_by_kind(proc.pid)})
        if args.together > 0:
            together(Path(tmp), args.together, args.idle)
    rss_steps()
    importtime("meshd.cli.main")
    importtime("meshd.shell.node")


if __name__ == "__main__":
    main()
