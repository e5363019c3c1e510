"""The simulation harness: many nodes, each hosting pure cores, on a virtual network.

Theory of operation
-------------------
A :class:`Simulation` owns a virtual clock (:mod:`.clock`), a faulty network
(:mod:`.network`) and nodes ``n1..nN``. Each :class:`SimNode` hosts a dict of *cores*
keyed by channel name (``"membership"``; :mod:`.auction` adds ``"auction"``; fencing
will plug in the same way). A core is anything with ``receive(msg, sender, addr, now)``,
``tick(now)`` and ``next_deadline()`` returning lists of effects; a *factory* builds
it when the node starts or restarts, and returns its first effects.

Effects are dispatched by type through ``effect_handlers`` (``Send`` goes to the
network on the core's channel; ``MemberChanged``/``Deliver`` go to the trace and to
``listeners``), so a new core registers handlers for its own effect types. Every core
is woken exactly at its ``next_deadline`` (stale wake-ups are skipped), so a run costs
O(events), not O(nodes x time steps).

Determinism: one seed drives the network's randomness and, per node and boot, the
cores' ``random.Random``; events tie-break by scheduling order; no set of strings is
ever iterated. The same seed replays the same run exactly. The seed is part of every
failure message (:meth:`Simulation.describe`), and ``MESHD_SIM_SEED`` overrides the
seed of tests that draw one (:func:`seeds`).

Scenarios (:func:`run_scenario`) are small scripts of timed commands whose trace is
compared with a golden file next to them; ``MESHD_SIM_REGEN=1`` rewrites the goldens.
A core's own module may extend the script language (directives, commands) through the
``extension`` hook of :func:`run_scenario`, and restrict the trace to its channels with
:attr:`Simulation.trace_channels`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import shlex
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from meshd import config
from meshd.config import Config
from meshd.config import files as config_files
from meshd.core.membership import (
    Deliver,
    Identity,
    Member,
    MemberChanged,
    Membership,
    MemberState,
    Send,
)
from meshd.core.membership import codec as membership_codec
from tests.sim.clock import EventQueue
from tests.sim.network import LinkModel, Network

ENV_SEED = "MESHD_SIM_SEED"
ENV_REGEN = "MESHD_SIM_REGEN"
MEMBERSHIP = "membership"
Address = tuple[str, int]


class Core(Protocol):
    def receive(self, msg: Any, sender: str, addr: Address, now: float) -> list[Any]: ...
    def tick(self, now: float) -> list[Any]: ...
    def next_deadline(self) -> float: ...


CoreFactory = Callable[["Simulation", "SimNode"], tuple[Core, list[Any]]]
Listener = Callable[[float, str, str, Any], None]


def seeds(count: int, base: int = 0) -> list[int]:
    """Seeds for a randomized test: ``MESHD_SIM_SEED`` (one seed) replays a failure."""
    env = os.environ.get(ENV_SEED)
    if env:
        return [int(env)]
    return list(range(base, base + count))


def seed_or(default: int) -> int:
    env = os.environ.get(ENV_SEED)
    return int(env) if env else default


@dataclass
class SimNode:
    name: str
    node_id: str
    address: Address
    seeds: list[Address] = field(default_factory=list)
    up: bool = False
    boot: int = 0
    left: bool = False
    cores: dict[str, Core] = field(default_factory=dict)
    scheduled: dict[str, float] = field(default_factory=dict)
    # Local health faults (Simulation.stall, Simulation.jump): until when the node's
    # process is frozen, what reached it meanwhile, and how far its clock is ahead.
    frozen_until: float = -math.inf
    backlog: list[tuple[str, str, Any]] = field(default_factory=list)
    offset: float = 0.0


def membership_factory(sim: Simulation, node: SimNode) -> tuple[Core, list[Any]]:
    rng = random.Random(f"{sim.seed}/{node.name}/{node.boot}")
    log = logging.getLogger(f"meshd.sim.{node.name}")
    now = sim.clock(node)
    core = Membership(
        sim.cfg.membership, Identity(node.name, node.node_id, node.address), rng, now, log
    )
    return core, core.join(node.seeds, now)


def _fmt_changed(e: MemberChanged) -> str:
    prev = "new" if e.previous is None else str(e.previous)
    return f"{e.member.name} {prev}->{e.member.state} inc={e.member.incarnation}"


def _fmt_deliver(e: Deliver) -> str:
    return f"deliver {e.kind} from {e.origin} {e.payload.decode(errors='replace')}"


class Simulation:
    """A whole mesh in one process. ``n`` nodes are created (and started unless told)."""

    def __init__(
        self,
        seed: int,
        n: int = 0,
        cfg: Config | None = None,
        link: LinkModel | None = None,
        *,
        trace: bool = True,
        codec: bool = False,
        seeds: int = 3,
        start: bool = True,
        stagger: float = 0.0,
        factories: dict[str, CoreFactory] | None = None,
    ) -> None:
        self.seed = seed
        self.cfg = (cfg or config.sim()).validate()
        self.events = EventQueue(0.0)
        self.net = Network(random.Random(f"{seed}/net"), link)
        self.nodes: dict[str, SimNode] = {}
        self._by_addr: dict[Address, str] = {}
        self.trace_enabled = trace
        self.trace: list[tuple[float, str, str]] = []
        # Channels whose observed effects are traced (None: all); commands always are.
        self.trace_channels: set[str] | None = None
        self.listeners: list[Listener] = []
        self.factories: dict[str, CoreFactory] = factories or {MEMBERSHIP: membership_factory}
        self.codec = codec
        self.codecs: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any], int]] = {
            MEMBERSHIP: (
                membership_codec.encode,
                membership_codec.decode,
                self.cfg.membership.max_gossip_bytes,
            )
        }
        self.effect_handlers: dict[type, Callable[[SimNode, str, Any], None]] = {
            Send: self._on_send,
            MemberChanged: self._on_observed,
            Deliver: self._on_observed,
        }
        self.formatters: dict[type, Callable[[Any], str]] = {
            MemberChanged: _fmt_changed,
            Deliver: _fmt_deliver,
        }
        self.sent: Counter[str] = Counter()
        self.sent_bytes = 0
        self._n_seeds = seeds
        self._spin: tuple[float, int] = (-1.0, 0)
        for _ in range(n):
            self.add_node()
        if start:
            for i, name in enumerate(list(self.nodes)):
                self.events.at(i * stagger, self.start, name)

    # -- inspection ------------------------------------------------------------------

    def clock(self, node: SimNode) -> float:
        """What ``node``'s own clock reads now (ahead of the world after a jump)."""
        return self.now + node.offset

    @property
    def now(self) -> float:
        return self.events.now

    def describe(self) -> str:
        """For assertion messages: how to replay this exact run."""
        return f"seed={self.seed} t={self.now:.3f} (replay with {ENV_SEED}={self.seed})"

    def membership(self, name: str) -> Membership:
        core = self.nodes[name].cores[MEMBERSHIP]
        assert isinstance(core, Membership)
        return core

    def running(self) -> list[str]:
        """Nodes that are up and have not left."""
        return [n.name for n in self.nodes.values() if n.up and not n.left]

    def view(self, observer: str) -> dict[str, Member]:
        return {m.name: m for m in self.membership(observer).members()}

    def state_of(self, observer: str, member: str) -> MemberState | None:
        m = self.membership(observer).member(member)
        return None if m is None else m.state

    def disagreements(self) -> list[str]:
        """Why the running nodes' views differ from the truth (empty: converged)."""
        live = self.running()
        problems: list[str] = []
        for a in live:
            core = self.membership(a)
            for node in self.nodes.values():
                if node.name == a:
                    continue
                m = core.member(node.name)
                state = None if m is None else m.state
                if node.up and not node.left:
                    if state is not MemberState.ALIVE:
                        problems.append(f"{a} sees running {node.name} as {state}")
                elif state is not None and state.live:
                    problems.append(f"{a} sees stopped {node.name} as {state}")
        return problems

    def converged(self) -> bool:
        return not self.disagreements()

    def trace_lines(self) -> list[str]:
        return [f"{t:10.3f} {node:>5} {event}" for t, node, event in self.trace]

    # -- running ---------------------------------------------------------------------

    def run_until(self, t: float) -> None:
        self.events.run_until(t)

    def run_for(self, dt: float) -> None:
        self.events.run_until(self.now + dt)

    def run_until_true(
        self, predicate: Callable[[], bool], timeout: float, step: float = 0.1
    ) -> float | None:
        """Run until ``predicate()`` holds (checked every ``step``); the time, or None."""
        end = self.now + timeout
        while True:
            if predicate():
                return self.now
            if self.now >= end:
                return None
            self.events.run_until(min(end, self.now + step))

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        self.events.at(t, fn, *args)

    # -- nodes and faults ------------------------------------------------------------

    def add_node(self, name: str | None = None) -> SimNode:
        i = len(self.nodes) + 1
        name = name or f"n{i}"
        address = (f"10.0.{i // 250}.{i % 250 + 1}", 7420)
        node_id = hashlib.sha256(name.encode()).hexdigest()[:40]
        node = SimNode(name, node_id, address)
        self.nodes[name] = node
        self._by_addr[address] = name
        firsts = list(self.nodes.values())[: self._n_seeds]
        for other in self.nodes.values():
            other.seeds = [s.address for s in firsts if s.name != other.name]
        return node

    def _cmd(self, text: str) -> None:
        self._record("!", text)

    def start(self, name: str) -> None:
        node = self.nodes[name]
        if node.up:
            return
        node.up = True
        node.left = False
        node.boot += 1
        node.scheduled = {}
        self._cmd(f"start {name}" if node.boot == 1 else f"restart {name}")
        for channel, factory in self.factories.items():
            core, effects = factory(self, node)
            node.cores[channel] = core
            self._run(node, channel, effects)
            self._reschedule(node, channel)

    def restart(self, name: str) -> None:
        """A fresh process with the same name, node id and address; nothing persisted."""
        if self.nodes[name].up:
            self.crash(name)
        self.start(name)

    def crash(self, name: str) -> None:
        node = self.nodes[name]
        if not node.up:
            return
        self._cmd(f"crash {name}")
        self._down(node)

    def _down(self, node: SimNode) -> None:
        node.up = False
        node.cores = {}
        node.scheduled = {}
        node.frozen_until, node.backlog = -math.inf, []
        node.boot += 1  # anything scheduled for the old process is now stale

    def leave(self, name: str, grace: float = 10.0) -> None:
        """Graceful leave; the process stops once its broadcasts are out (or after grace)."""
        node = self.nodes[name]
        if not node.up or node.left:
            return
        self._cmd(f"leave {name}")
        node.left = True
        self._run(node, MEMBERSHIP, self.membership(name).leave(self.now))
        self._reschedule(node, MEMBERSHIP)
        self.events.after(
            self.cfg.membership.gossip_interval_s,
            self._stop_when_drained,
            node,
            node.boot,
            self.now + grace,
        )

    def _stop_when_drained(self, node: SimNode, boot: int, deadline: float) -> None:
        if node.boot != boot or not node.up:
            return
        if self.membership(node.name).pending_broadcasts() and self.now < deadline:
            self.events.after(
                self.cfg.membership.gossip_interval_s, self._stop_when_drained, node, boot, deadline
            )
            return
        self._cmd(f"stop {node.name}")
        self._down(node)

    def partition(self, *groups: Iterable[str]) -> None:
        lists = [sorted(g) for g in groups]
        self._cmd("partition " + " | ".join(",".join(g) for g in lists))
        self.net.partition(*lists)

    def heal(self) -> None:
        self._cmd("heal")
        self.net.heal()

    def cut(self, src: str, dst: str, both: bool = False) -> None:
        self._cmd(f"cut {src}->{dst}{' both' if both else ''}")
        self.net.cut(src, dst, both)

    def stall(self, name: str, seconds: float) -> None:
        """Freeze ``name``'s process for ``seconds`` (a starved CPU, SIGSTOP): nothing of
        it runs; what reaches it queues. When it thaws, its overdue timers ring first,
        then the queue is read (the worst order an event loop may pick)."""
        node = self.nodes[name]
        self._cmd(f"stall {name} {seconds:g}s")
        node.frozen_until = max(node.frozen_until, self.now + seconds)
        self.events.at(node.frozen_until, self._thaw, node, node.boot, node.frozen_until)

    def jump(self, name: str, seconds: float) -> None:
        """``name``'s clock leaps ``seconds`` ahead of the world's (a VM paused and
        resumed, a suspended host): its timers in between come due at once."""
        node = self.nodes[name]
        self._cmd(f"jump {name} {seconds:g}s")
        node.offset += seconds
        for channel in list(node.cores):
            node.scheduled[channel] = math.inf
            self._reschedule(node, channel)

    def _thaw(self, node: SimNode, boot: int, until: float) -> None:
        if node.boot != boot or node.frozen_until != until:
            return
        node.frozen_until = -math.inf
        for channel, core in list(node.cores.items()):
            node.scheduled[channel] = math.inf
            effects = core.tick(self.clock(node))
            if effects:
                self._run(node, channel, effects)
        backlog, node.backlog = node.backlog, []
        for src, channel, payload in backlog:
            self._deliver(src, node.name, channel, payload)
        for channel in list(node.cores):
            self._reschedule(node, channel)

    def inject(self, name: str, channel: str, call: Callable[[Any], list[Any]]) -> None:
        """Run ``call(core)`` on a running node's core now, then dispatch its effects."""
        node = self.nodes[name]
        core = node.cores.get(channel)
        if not node.up or core is None:
            return
        effects = call(core)
        if effects:
            self._run(node, channel, effects)
        self._reschedule(node, channel)

    def broadcast(self, name: str, kind: str, payload: bytes) -> None:
        node = self.nodes[name]
        self._cmd(f"broadcast {name} {kind}")
        self._run(
            node, MEMBERSHIP, self.membership(name).broadcast(kind, payload, self.clock(node))
        )
        self._reschedule(node, MEMBERSHIP)

    # -- plumbing --------------------------------------------------------------------

    def _record(self, node: str, event: str) -> None:
        if self.trace_enabled:
            self.trace.append((self.now, node, event))

    def _run(self, node: SimNode, channel: str, effects: list[Any]) -> None:
        handlers = self.effect_handlers
        for e in effects:
            handler = handlers.get(type(e))
            if handler is None:
                raise TypeError(f"no simulator handler for effect {type(e).__name__}")
            handler(node, channel, e)

    def _on_observed(self, node: SimNode, channel: str, e: Any) -> None:
        if self.trace_enabled and (self.trace_channels is None or channel in self.trace_channels):
            fmt = self.formatters.get(type(e))
            self.trace.append((self.now, node.name, fmt(e) if fmt else repr(e)))
        for listener in self.listeners:
            listener(self.now, node.name, channel, e)

    def _on_send(self, node: SimNode, channel: str, e: Send) -> None:
        dst = self._by_addr.get(e.addr)
        self.sent[type(e.msg).__name__] += 1
        if dst is None:
            return
        payload: Any = e.msg
        if self.codec:
            encode, _, limit = self.codecs[channel]
            payload = encode(e.msg)
            size = len(payload)
            self.sent_bytes += size
            assert e.reliable or size <= limit, (
                f"{node.name} sent a {size}-byte {type(e.msg).__name__} datagram (> {limit})"
            )
            assert size == membership_codec.size(e.msg) or channel != MEMBERSHIP
        for delay in self.net.delays(node.name, dst, e.reliable):
            self.events.at(self.now + delay, self._deliver, node.name, dst, channel, payload)

    def _deliver(self, src: str, dst: str, channel: str, payload: Any) -> None:
        node = self.nodes[dst]
        if not node.up or self.net.blocked(src, dst):
            return
        core = node.cores.get(channel)
        if core is None:
            return
        if node.frozen_until > self.now:
            node.backlog.append((src, channel, payload))
            return
        msg = self.codecs[channel][1](payload) if self.codec else payload
        effects = core.receive(msg, src, self.nodes[src].address, self.clock(node))
        if effects:
            self._run(node, channel, effects)
        self._reschedule(node, channel)

    def _reschedule(self, node: SimNode, channel: str) -> None:
        core = node.cores.get(channel)
        if core is None:
            return
        own = core.next_deadline()
        d = own - node.offset  # the node's time to the world's
        if d < node.scheduled.get(channel, math.inf):
            node.scheduled[channel] = d
            self.events.at(d, self._wake, node, node.boot, channel, d, own)

    def _wake(self, node: SimNode, boot: int, channel: str, d: float, own: float) -> None:
        if node.boot != boot or node.scheduled.get(channel) != d:
            return
        t, spins = self._spin
        self._spin = (self.now, spins + 1 if t == self.now else 0)
        assert self._spin[1] < 100_000, f"{node.name} keeps asking to be woken at {d}"
        node.scheduled[channel] = math.inf
        if node.frozen_until > self.now:
            return  # frozen: _thaw ticks it
        core = node.cores[channel]
        # At least the node-time deadline it asked for (world and node time differ by a
        # float offset after a jump, which must not make the wake a hair early).
        effects = core.tick(max(self.clock(node), own))
        if effects:
            self._run(node, channel, effects)
        self._reschedule(node, channel)


# -- scenarios --------------------------------------------------------------------------


@dataclass
class Scenario:
    path: Path
    seed: int = 1
    nodes: int = 5
    preset: str = "sim"
    overrides: dict[str, Any] = field(default_factory=dict)
    link: LinkModel = field(default_factory=LinkModel)
    commands: list[tuple[float, list[str]]] = field(default_factory=list)
    end: float = 60.0
    # Directives an extension declared, in order: (directive, arguments).
    extras: list[tuple[str, list[str]]] = field(default_factory=list)


def parse_scenario(path: Path, directives: Iterable[str] = ()) -> Scenario:
    """Read a scenario script: header directives, then ``t=SECONDS command ...`` lines.

    ``directives`` names extra header directives (an extension's) to collect in
    :attr:`Scenario.extras` instead of refusing them.
    """
    sc = Scenario(path)
    extra = set(directives)
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = shlex.split(line)
        head, rest = words[0], words[1:]
        where = f"{path.name}:{lineno}"
        if head.startswith("t="):
            sc.commands.append((float(head[2:]), rest))
        elif head == "seed":
            sc.seed = int(rest[0])
        elif head == "nodes":
            sc.nodes = int(rest[0])
        elif head == "preset":
            sc.preset = rest[0]
        elif head == "set":
            for item in rest:
                key, value = item.split("=", 1)
                sc.overrides[key] = _scalar(value)
        elif head == "net":
            sc.link = _parse_link(rest, where)
        elif head == "end":
            sc.end = float(rest[0])
        elif head in extra:
            sc.extras.append((head, rest))
        else:
            raise ValueError(f"{where}: unknown directive {head!r}")
    return sc


def _scalar(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _parse_link(words: list[str], where: str) -> LinkModel:
    kw: dict[str, Any] = {}
    for item in words:
        key, value = item.split("=", 1)
        if key == "delay":
            lo, hi = value.split("..")
            kw["delay"] = (float(lo), float(hi))
        elif key in ("loss", "duplicate"):
            kw[key] = float(value)
        else:
            raise ValueError(f"{where}: unknown net setting {key!r}")
    return LinkModel(**kw)


def _names(sim: Simulation, words: list[str]) -> list[str]:
    if words == ["all"]:
        return list(sim.nodes)
    return [n for w in words for n in w.split(",") if n]


# An extension builds the simulation for a scenario and returns it with extra commands:
# each takes the command's words and returns failed expectations (empty: fine).
Extension = Callable[
    [Scenario, Config], tuple["Simulation", dict[str, Callable[[list[str]], list[str]]]]
]


def run_scenario(sc: Scenario, extension: Extension | None = None) -> tuple[list[str], list[str]]:
    """Run a scenario; returns its trace lines and the failed expectations."""
    cfg = config_files.load(None, sc.preset, sc.overrides)
    extra: dict[str, Callable[[list[str]], list[str]]] = {}
    if extension is None:
        sim = Simulation(sc.seed, sc.nodes, cfg, sc.link, start=False)
    else:
        sim, extra = extension(sc, cfg)
    failures: list[str] = []

    def expect(words: list[str]) -> None:
        if words == ["converged"]:
            failures.extend(f"t={sim.now:g}: {p}" for p in sim.disagreements())
            return
        member, what = words[0], words[1]
        observers = _names(sim, words[3:]) if words[2:3] == ["by"] else sim.running()
        for observer in observers:
            if observer == member:
                continue
            m = sim.membership(observer).member(member)
            if what.startswith("incarnation>="):
                floor = int(what.split(">=")[1])
                if m is None or m.incarnation < floor:
                    failures.append(f"t={sim.now:g}: {observer} sees {member} at {m}")
                continue
            wanted = MemberState[what.upper()]
            got = None if m is None else m.state
            if got is not wanted:
                failures.append(f"t={sim.now:g}: {observer} sees {member} as {got}, not {wanted}")

    def command(words: list[str]) -> None:
        verb, args = words[0], words[1:]
        if verb in extra:
            failures.extend(f"t={sim.now:g}: {f}" for f in extra[verb](args))
        elif verb == "start":
            for name in _names(sim, args):
                sim.start(name)
        elif verb in ("crash", "restart", "leave"):
            for name in _names(sim, args):
                getattr(sim, verb)(name)
        elif verb == "partition":
            groups = " ".join(args).split("|")
            sim.partition(*(_names(sim, g.split()) for g in groups))
        elif verb == "heal":
            sim.heal()
        elif verb == "broadcast":
            sim.broadcast(args[0], args[1], " ".join(args[2:]).encode())
        elif verb in ("stall", "jump"):  # stall NAME SECONDS, jump NAME SECONDS
            getattr(sim, verb)(args[0], float(args[1].removesuffix("s")))
        elif verb == "expect":
            expect(args)
        else:
            raise ValueError(f"{sc.path.name}: unknown command {verb!r}")

    for t, words in sc.commands:
        sim.at(t, command, words)
    sim.run_until(sc.end)
    return sim.trace_lines(), failures


def golden_path(script: Path) -> Path:
    return script.with_suffix(".trace")


def check_golden(script: Path, lines: list[str]) -> str | None:
    """Compare with the golden trace (or rewrite it under MESHD_SIM_REGEN=1)."""
    golden = golden_path(script)
    text = "\n".join(lines) + "\n"
    if os.environ.get(ENV_REGEN):
        golden.write_text(text)
        return None
    if not golden.exists():
        return f"no golden trace {golden.name}; run with {ENV_REGEN}=1 to create it"
    want = golden.read_text().splitlines()
    if want == lines:
        return None
    for i, (a, b) in enumerate(zip(want, lines, strict=False)):
        if a != b:
            return f"{golden.name} differs at line {i + 1}:\n  want: {a}\n  got:  {b}"
    return f"{golden.name}: {len(want)} lines expected, {len(lines)} produced"


def scenario_paths(directory: Path) -> Iterator[Path]:
    yield from sorted(directory.glob("*.scn"))
