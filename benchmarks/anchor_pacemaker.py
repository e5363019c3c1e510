"""The HA anchor: corosync + pacemaker + fence_redfish, cut link to a verified Off.

Issue 12 records meshd's fencing figures next to the anchor measured in the same run.
This measures Debian 12's corosync, pacemaker and fence-agents' ``fence_redfish`` here,
as LAB-NOTES "The HA anchor" describes (``benchmarks/anchor_lab.py``): 3 nodes, each in
its own network, mount, UTS and PID namespaces, one ``fence_redfish`` stonith resource
per node (never run on the node it fences) against the sushy-tools emulator
(``tests/integration/sushy.py``: one system per node, TLS verified against the test CA,
Basic auth, the power delay fixed at 0 s), reached over a management path that a
cluster-link cut leaves up.

A power-off is made real: when the emulator has served a ``ComputerSystem.Reset`` for a
node and reports it Off, that node's namespaces are killed (every process of it, by the
namespace's init), as a blade losing power would.

Each run boots a fresh cluster with the setting's corosync.conf, configures stonith once
all 3 nodes are online (``stonith-action=off``: the shipped ``reboot`` would power the
node on again; meshd powers off; every other option shipped), then sets one node's
cluster veth down (a non-DC node: the common case, 2 of 3) and times the cut until the
emulator reports that node Off:

* ``cut_to_off_s`` per setting (``shipped``: Debian's corosync.conf with no token set;
  ``token_<N>ms``: ``token: N`` and ``token_coefficient: 0`` in totem, so the token is
  N as LAB-NOTES' tuned figures have it): min / median / max
  over ``--runs`` runs, with corosync's effective token and consensus (ms), and where
  the time goes from the DC's own logs: ``membership_s`` (corosync forms the new
  membership) and ``fence_requested_s`` (pacemaker-controld asks for the fence), the
  rest being the fencer and ``fence_redfish``;
* ``minority_reaches_bmc`` with ``no-quorum-policy=stop`` and ``=ignore``: one node cut
  off from its peers while it still reaches every BMC, once a non-DC node and once the
  DC (with ``ignore`` both sides fence and the first Off wins; the side that keeps its
  DC decides first); after ``--observe-s`` seconds, which systems are Off and in what
  order, and who fenced whom (pacemaker's logs).

Prints JSON lines. Root only; installs the Debian packages if missing (apt-get), or
prints why it skips.

Usage: sudo .venv/bin/python benchmarks/anchor_pacemaker.py [--runs 5]
       [--token-ms 1000 500] [--observe-s 30] [--no-minority]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import anchor_lab  # noqa: E402
from anchor_lab import Node  # noqa: E402

BENCH = "anchor_pacemaker"
N_NODES = 3
BOOT_TIMEOUT_S = 90.0
FENCE_TIMEOUT_S = 90.0
RESET_LINE = re.compile(r'"POST /redfish/v1/Systems/([0-9a-f-]+)/Actions/ComputerSystem\.Reset')
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def emit(figure: str, **fields: object) -> None:
    print(json.dumps({"bench": BENCH, "figure": figure, **fields}), flush=True)


# -- the BMCs' power made real --------------------------------------------------------


@dataclass
class PowerWatch:
    """Tails the emulator's log; a Reset then an Off read powers the node off for real."""

    emu: Any  # tests.integration.sushy.Emulator (imported late: it needs pytest)
    nodes: dict[str, Node] = field(default_factory=dict)  # system uuid -> node
    offs: list[tuple[str, float]] = field(default_factory=list)  # (node, monotonic)
    _offset: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def arm(self, nodes: Sequence[Node]) -> None:
        with self._lock:
            self.nodes = {self.emu.uuid(n.name): n for n in nodes}
            self.offs = []
            self._offset = self.emu.log_path.stat().st_size
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()

    def off(self, name: str) -> float | None:
        with self._lock:
            return next((t for n, t in self.offs if n == name), None)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            with self._lock:
                with self.emu.log_path.open("rb") as log:
                    log.seek(self._offset)
                    chunk = log.read()
                # Only whole lines: werkzeug may be mid-write.
                cut = chunk.rfind(b"\n") + 1
                self._offset += cut
                text = ANSI.sub("", chunk[:cut].decode(errors="replace"))
                for uuid in RESET_LINE.findall(text):
                    node = self.nodes.get(uuid)
                    if node is None or any(n == node.name for n, _ in self.offs):
                        continue
                    if self._reads_off(node.name):
                        self.offs.append((node.name, time.monotonic()))
                        node.kill()

    def _reads_off(self, name: str) -> bool:
        for _ in range(50):  # 0 s delay: Off on the next read; allow a slow machine
            # A read that fails is retried: the run reports no Off rather than the
            # watcher dying (urllib's errors are OSErrors).
            with contextlib.suppress(OSError):
                if self.emu.power(name) == "Off":
                    return True
            time.sleep(0.02)
        return False


# -- one cluster ------------------------------------------------------------------------


def crm_mon(node: Node) -> ET.Element | None:
    proc = node.run(["crm_mon", "-1", "--output-as=xml"], timeout=20)
    if proc.returncode != 0:
        return None
    with contextlib.suppress(ET.ParseError):
        return ET.fromstring(proc.stdout)
    return None


def wait_for(node: Node, ok: Any, what: str, timeout: float = BOOT_TIMEOUT_S) -> ET.Element:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not node.alive():
            raise RuntimeError(f"{node.name} died while waiting for {what}: {node.log()}")
        mon = crm_mon(node)
        if mon is not None and ok(mon):
            return mon
        time.sleep(0.5)
    raise RuntimeError(f"{what}: not within {timeout:.0f} s")


def all_online(mon: ET.Element) -> bool:
    online = [n for n in mon.iter("node") if n.get("online") == "true"]
    dc = mon.find("summary/current_dc")
    return len(online) == N_NODES and dc is not None and dc.get("present") == "true"


def stonith_started(mon: ET.Element) -> bool:
    started = [
        r
        for r in mon.iter("resource")
        if r.get("resource_agent") == "stonith:fence_redfish" and r.get("role") == "Started"
    ]
    return len(started) == N_NODES and all_online(mon)


def configure(dc: Node, nodes: Sequence[Node], emu: Any, policy: str) -> None:
    """Properties, one fence_redfish device per node, each kept off the node it fences."""
    cmds: list[list[str]] = [
        ["crm_attribute", "-t", "crm_config", "-n", "no-quorum-policy", "-v", policy],
        # Power off, as meshd fences (the shipped default, reboot, powers it on again).
        ["crm_attribute", "-t", "crm_config", "-n", "stonith-action", "-v", "off"],
    ]
    for n in nodes:
        rid = f"fence_{n.name}"
        params = {
            "ip": "127.0.0.1",
            "ipport": str(emu.port),
            "ssl": "1",
            "ssl_secure": "1",
            "username": emu.user,
            "password": emu.password,
            "systems_uri": f"/redfish/v1/Systems/{emu.uuid(n.name)}",
            "pcmk_host_list": n.name,
        }
        nvpairs = "".join(
            f'<nvpair id="{rid}-{k}" name="{k}" value="{v}"/>' for k, v in params.items()
        )
        primitive = (
            f'<primitive id="{rid}" class="stonith" type="fence_redfish">'
            f'<instance_attributes id="{rid}-ia">{nvpairs}</instance_attributes>'
            f'<operations><op id="{rid}-mon" name="monitor" interval="60s"/></operations>'
            "</primitive>"
        )
        avoid = f'<rsc_location id="{rid}-avoid" rsc="{rid}" node="{n.name}" score="-INFINITY"/>'
        cmds.append(["cibadmin", "--create", "--scope", "resources", "--xml-text", primitive])
        cmds.append(["cibadmin", "--create", "--scope", "constraints", "--xml-text", avoid])
    for argv in cmds:
        proc = dc.run(argv)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:4])} on {dc.name}: {proc.stderr.strip()}")


def cmap(node: Node, key: str) -> int | None:
    proc = node.run(["corosync-cmapctl", "-g", key])
    found = re.search(r"=\s*(\d+)", proc.stdout)
    return int(found.group(1)) if found else None


ASKED = re.compile(r"Requesting that (\S+) perform '(\w+)' action targeting (\S+)")
RESULT = re.compile(r"Operation '(\w+)' targeting (\S+) by (\S+) for \S+: (\w+)")


def fence_log(nodes: Sequence[Node]) -> list[str]:
    """Pacemaker's own words on who fenced whom: each fencer's requests and results."""
    seen: list[str] = []
    for n in nodes:
        log = n.dir / "var-log-pacemaker" / "pacemaker.log"
        with contextlib.suppress(OSError):
            for line in log.read_text(errors="replace").splitlines():
                if "pacemaker-fenced" not in line:
                    continue
                if asked := ASKED.search(line):
                    executor, action, target = asked.groups()
                    said = f"{n.name} asks {executor} to {action} {target}"
                elif result := RESULT.search(line):
                    action, target, executor, outcome = result.groups()
                    said = f"{action} of {target} by {executor}: {outcome}"
                else:
                    continue
                if said not in seen:
                    seen.append(said)
    return seen


@contextlib.contextmanager
def cluster(
    hosts: Sequence[Any], root: Path, emu: Any, token_ms: int | None, policy: str
) -> Iterator[tuple[list[Node], Node]]:
    """A fresh 3-node cluster with stonith configured; yields (nodes, DC); always ended."""
    nodes = [Node(f"node{i}", h.ns, h.addr, root / f"node{i}") for i, h in enumerate(hosts, 1)]
    conf = anchor_lab.corosync_conf([(n.name, n.addr) for n in nodes], token_ms)
    assert emu.ca is not None
    for h in hosts:
        h.link(True)
    for name in [n.name for n in nodes]:
        if emu.power(name) != "On":
            emu.reset(name, "On")
    try:
        for n in nodes:
            n.prepare(conf, emu.ca.cert_pem)
            n.start()
        mon = wait_for(nodes[0], all_online, "all 3 nodes online with a DC")
        dc_el = mon.find("summary/current_dc")
        dc = next(n for n in nodes if dc_el is not None and n.name == dc_el.get("name"))
        configure(dc, nodes, emu, policy)
        wait_for(dc, stonith_started, "the 3 fence_redfish devices started")
        mon = wait_for(nodes[0], all_online, "a DC after configuring")
        dc_el = mon.find("summary/current_dc")
        dc = next(n for n in nodes if dc_el is not None and n.name == dc_el.get("name"))
        time.sleep(1.0)  # let the fencers register the devices the DC just started
        yield nodes, dc
    finally:
        for n in nodes:
            n.kill()
        for h in hosts:
            with contextlib.suppress(subprocess.CalledProcessError):
                h.link(True)


def cut_to_off(
    hosts: Sequence[Any], root: Path, emu: Any, watch: PowerWatch, token_ms: int | None
) -> dict[str, Any]:
    with cluster(hosts, root, emu, token_ms, "stop") as (nodes, dc):
        victim_i = max(i for i, n in enumerate(nodes) if n is not dc)
        victim = nodes[victim_i]
        token, consensus = (
            cmap(dc, "runtime.config.totem.token"),
            cmap(dc, "runtime.config.totem.consensus"),
        )
        watch.arm(nodes)
        hosts[victim_i].link(False)
        cut, wall_cut = time.monotonic(), time.time()
        end = cut + FENCE_TIMEOUT_S
        while (off := watch.off(victim.name)) is None and time.monotonic() < end:
            time.sleep(0.01)
        others_off = [n for n, _ in watch.offs if n != victim.name]
        return {
            "seconds": None if off is None else round(off - cut, 3),
            "victim": victim.name,
            "dc": dc.name,
            "token_ms": token,
            "consensus_ms": consensus,
            "others_off": others_off,
            "fenced": fence_log(nodes),
            # Where the time goes, from the DC's own logs (ms timestamps, this clock):
            "membership_s": since(
                wall_cut, dc, "var-log-corosync/corosync.log", "A new membership"
            ),
            "fence_requested_s": since(
                wall_cut, dc, "var-log-pacemaker/pacemaker.log", "Requesting fencing"
            ),
        }


LOG_STAMP = re.compile(r"^(\w{3} \d{2} \d{2}:\d{2}:\d{2}\.\d{3})")


def since(wall_cut: float, node: Node, log: str, words: str) -> float | None:
    """Seconds from the cut to the first line of ``log`` saying ``words`` after it."""
    year = time.localtime(wall_cut).tm_year
    with contextlib.suppress(OSError):
        for line in (node.dir / log).read_text(errors="replace").splitlines():
            stamp = LOG_STAMP.match(line)
            if stamp is None or words not in line:
                continue
            at = time.mktime(time.strptime(f"{year} {stamp.group(1)[:-4]}", "%Y %b %d %H:%M:%S"))
            at += int(stamp.group(1)[-3:]) / 1000
            if at >= wall_cut:
                return round(at - wall_cut, 3)
    return None


def minority(
    hosts: Sequence[Any],
    root: Path,
    emu: Any,
    watch: PowerWatch,
    policy: str,
    isolate_dc: bool,
    observe_s: float,
) -> dict[str, Any]:
    with cluster(hosts, root, emu, None, policy) as (nodes, dc):
        alone_i = (
            nodes.index(dc) if isolate_dc else max(i for i, n in enumerate(nodes) if n is not dc)
        )
        alone = nodes[alone_i]
        watch.arm(nodes)
        hosts[alone_i].link(False)
        cut = time.monotonic()
        time.sleep(observe_s)
        offs = [(n, round(t - cut, 3)) for n, t in list(watch.offs)]
        healthy_off = [n for n, _ in offs if n != alone.name]
        return {
            "alone": alone.name,
            "dc": dc.name,
            "observe_s": observe_s,
            "off_order": [{"node": n, "after_s": t} for n, t in offs],
            "healthy_powered_off": len(healthy_off),
            "alone_powered_off": any(n == alone.name for n, _ in offs),
            "fenced": fence_log(nodes),
        }


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for pkg in ("corosync", "pacemaker", "fence-agents"):
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", pkg],
            capture_output=True,
            text=True,
            check=False,
        )
        out[pkg] = proc.stdout.strip() or "?"
    return out


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min_s": round(min(values), 3),
        "median_s": round(statistics.median(values), 3),
        "max_s": round(max(values), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per setting")
    parser.add_argument(
        "--token-ms", type=int, nargs="*", default=[1000, 500], help="tuned totem tokens"
    )
    parser.add_argument("--observe-s", type=float, default=30.0, help="minority case window")
    parser.add_argument("--no-minority", action="store_true", help="skip the minority case")
    parser.add_argument("--no-shipped", action="store_true", help="skip the shipped setting")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' files and logs")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every `finally` ends what this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    reason = anchor_lab.available() or anchor_lab.ensure_packages()
    if reason is not None:
        emit("skipped", reason=reason)
        return 0
    # Imported here: these helpers live in the tests and pull in pytest.
    import pytest  # noqa: PLC0415

    from tests.e2e.netns import lab  # noqa: PLC0415
    from tests.integration.sushy import Emulator  # noqa: PLC0415

    emit("versions", **versions())
    settings: list[int | None] = ([] if args.no_shipped else [None]) + list(args.token_ms)
    with contextlib.ExitStack() as stack:
        if args.keep:
            root = Path(tempfile.mkdtemp(prefix="anchor-"))
            emit("workdir", path=str(root))
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="anchor-")))
        emu = Emulator(root / "bmc", {f"node{i}": "On" for i in range(1, N_NODES + 1)})
        try:
            emu.start()
        except pytest.skip.Exception as exc:
            emit("skipped", reason=f"no sushy-tools emulator: {exc}")
            return 0
        watch = PowerWatch(emu)
        relay: subprocess.Popen[bytes] | None = None
        try:
            with lab(N_NODES, tag="anc") as net:
                relay = anchor_lab.start_forwarder(
                    [h.ns for h in net.hosts], emu.port, root / "relay.log"
                )
                for token_ms in settings:
                    name = "shipped" if token_ms is None else f"token_{token_ms}ms"
                    times: list[float] = []
                    phases: dict[str, list[float]] = {"membership_s": [], "fence_requested_s": []}
                    failed = 0
                    effective: dict[str, Any] = {}
                    for run in range(1, args.runs + 1):
                        try:
                            got = cut_to_off(net.hosts, root, emu, watch, token_ms)
                        except RuntimeError as exc:
                            emit("cut_to_off_run", setting=name, run=run, error=str(exc))
                            failed += 1
                            continue
                        emit("cut_to_off_run", setting=name, run=run, **got)
                        effective = {k: got[k] for k in ("token_ms", "consensus_ms")}
                        if got["seconds"] is None:
                            failed += 1
                        else:
                            times.append(got["seconds"])
                        for key, values in phases.items():
                            if got[key] is not None:
                                values.append(got[key])
                    emit(
                        "cut_to_off_s",
                        setting=name,
                        **effective,
                        **summary(times),
                        **{
                            f"median_{k}": round(statistics.median(v), 3)
                            for k, v in phases.items()
                            if v
                        },
                        failed=failed,
                        delay_s=0,
                    )
                if not args.no_minority:
                    for policy, isolate_dc in itertools.product(("stop", "ignore"), (False, True)):
                        case = {"no_quorum_policy": policy, "alone_was_dc": isolate_dc}
                        try:
                            got = minority(
                                net.hosts, root, emu, watch, policy, isolate_dc, args.observe_s
                            )
                        except RuntimeError as exc:
                            emit("minority_reaches_bmc", **case, error=str(exc))
                            continue
                        emit("minority_reaches_bmc", **case, **got)
        finally:
            watch.close()
            if relay is not None:
                anchor_lab.end_process(relay)
            emu.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
