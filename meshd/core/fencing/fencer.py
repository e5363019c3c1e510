"""Powering a dead node off by quorum: one node's part, as a pure state machine.

Theory of operation
-------------------
DESIGN.md §7. Membership (SWIM) only *suspects*: a node it declares dead may be alive
behind a partition, still running its VMs. Before those VMs run elsewhere the node
must be verifiably off, and only a strict majority of the durable roster may decide
that, so a minority partition never fences (and, never holding a ``Fenced``, never
re-places), even when it can reach every BMC.

*Episode.* When membership declares ``target`` dead at incarnation ``i``, the node
opens the episode ``(target, epoch=i)`` and checks the target itself
(:class:`~.effects.CheckReach`). An ``Alive`` at a higher incarnation (a refutation)
before this node holds a quorum ends the episode: its ballots and votes are void. A
coordinator that holds a quorum and persisted ``Decided`` completes regardless.

*Votes.* A node votes only if membership holds the target dead at that epoch AND its
own direct check found it unreachable. A vote is a *grant* to one ballot
``(round, coordinator)`` of ``(target, epoch)``, answering that coordinator's
``FenceRequest``; the shell signs it with the node key, so a relayed claim is never a
vote and a ``Fenced`` carries its evidence.

*Coordinator.* Round ``r``'s coordinator is the ``r``-th (mod) of the sorted roster
members this node holds alive or suspect, the target excluded. Every node starts at
round 0 when it opens the episode; a request or progress message of a higher round
moves it there; after ``takeover_s`` without one from the round's coordinator it moves
to the next round, and if that names itself, it starts a ballot (persisted first, so a
restarted coordinator never reuses a round). With a majority of grants it persists
``Decided``, broadcasts ``Fencing`` and emits :class:`~.effects.PowerOff`. A verified
Off becomes ``Fenced`` (with the votes) for everyone; a failure becomes ``FenceFailed``
and an alarm, never a guess, and the operator may then confirm by hand.

*Leases: why two coordinators never power off one node in one epoch.* A voter holds at
most one unexpired grant per (target, epoch): granted at ``g`` on its own clock, it
binds until ``g + lease_s``; it grants another ballot only after that, or once the
grant's coordinator announced it gave up (``Release``, ``FenceFailed``: sent only when
its power-off requests have ended). A request carries ``req_at``, the coordinator's
clock when it sent that copy, and the vote echoes it; every grant happens after the
send it answers. With a majority of votes the coordinator takes the oldest ``req_at``
``s`` among them and sets ``deadline = s + lease_s·(1-d)/(1+d)``, d = ``drift``; the
BMC client ends every request by then. Clock rates lie in [1-d, 1+d], so on real time
the coordinator's window ends no later than ``lease_s/(1+d)`` after the earliest
send, and each of its grants lasts at least ``lease_s/(1+d)`` after that send. Any
other ballot needs a majority too; two majorities share a voter (:mod:`..quorum`),
who granted the second ballot only after the first grant expired or was released:
after the first window closed. So the windows never overlap. Assumptions: bounded
clock *rate* drift (no synchronised clocks), clocks that do not run backwards across a
restart (a restored grant whose time is in the future is held a full lease from the
restart), no bound on message delay (a late vote only shortens the window it opens),
and BMC requests that end when their process dies.

*Durability.* Every grant, ballot, decision and outcome is a ``Persist`` effect that
the shell writes before it sends that step's messages; :meth:`Fencer.restore` rebuilds
the promises (held grants, used rounds, outcomes). A coordinator that restarts with a
``Decided`` and no outcome lost its power-off with its process: it records
``abandoned`` and releases the ballot so the next coordinator need not wait a lease.

Departures: no leader election and no log (unlike raft), because a fence is one
decision per (target, epoch); the lease idea is Gray and Cheriton's (1989), here on
the voters' side, the way Paxos-lease / Chubby bound a master's term.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from meshd.config.sections import FencingConfig
from meshd.core.fencing import records as rec
from meshd.core.fencing.effects import (
    Alarm,
    Broadcast,
    CheckReach,
    Effect,
    Persist,
    PowerOff,
    Replace,
    Send,
)
from meshd.core.fencing.messages import (
    Fenced,
    FenceFailed,
    FenceMsg,
    FenceRequest,
    FenceVote,
    Fencing,
    Release,
    SignedVote,
)
from meshd.core.quorum import VoteResult, majority, vote_result
from meshd.errors import FencingError

__all__ = ["POWER_OUTCOMES", "STATES", "Fencer"]

STATES = ("alive", "suspect", "dead", "left", "fencing", "fenced", "fence-failed")
POWER_OUTCOMES = ("off", "already-off", "failed")
LIVE = ("alive", "suspect")
OPEN = ("dead", "fencing")
Key = tuple[str, int]


@dataclass
class _Episode:
    """This node's view of one (target, epoch)."""

    target: str
    epoch: int
    state: str  # dead | fencing | fenced | fence-failed
    round: int = 0
    heard_at: float = 0.0  # last progress from the round's coordinator (or the start)
    coordinator: str = ""
    reachable: bool | None = None  # this node's own direct check, None: not yet known
    check_due: float = math.inf
    pending: tuple[FenceRequest, str] | None = None  # a request waiting for our check
    voters: tuple[str, ...] = ()
    votes: tuple[bytes, ...] = ()
    detail: str = ""  # evidence or reason
    final_round: int = -1  # the ballot a fenced / fence-failed outcome belongs to
    final_coordinator: str = ""


@dataclass
class _Grant:
    round: int
    coordinator: str
    at: float
    until: float
    released: bool = False


@dataclass
class _Ballot:
    """A ballot this node coordinates."""

    target: str
    epoch: int
    round: int
    votes: dict[str, tuple[float, bytes]] = field(default_factory=dict)
    next_send: float = 0.0
    renew: bool = False  # the votes are too old to open a useful window: ask everyone
    interval: float = 0.0  # between requests: resend_s, doubling up to takeover_s / 2
    decided: bool = False
    deadline: float = 0.0
    blobs: tuple[bytes, ...] = ()
    voters: tuple[str, ...] = ()


class Fencer:
    """One node's fencing state machine. Every method returns effects; ``now`` is the
    node's own clock (seconds, any origin, never running backwards)."""

    def __init__(self, cfg: FencingConfig, name: str, log: logging.Logger | None = None) -> None:
        self.cfg = cfg
        self.name = name
        self.log = log or logging.getLogger(__name__)
        self._window = cfg.lease_s * (1 - cfg.drift) / (1 + cfg.drift)
        self._roster: frozenset[str] = frozenset()
        self._members: dict[str, tuple[str, int]] = {}
        self._eps: dict[str, _Episode] = {}
        self._grants: dict[Key, _Grant] = {}
        self._ballots: dict[Key, _Ballot] = {}
        self._rounds_used: dict[Key, int] = {}
        self._done: dict[Key, str] = {}  # key -> "fenced" | "failed" (what we acted on)
        self._attempts: dict[str, int] = {}

    # -- queries ------------------------------------------------------------------------

    def state(self, name: str) -> str:
        ep = self._eps.get(name)
        if ep is not None:
            return ep.state
        return self._members.get(name, ("unknown", 0))[0]

    def status(self) -> list[dict[str, object]]:
        """One entry per node with an episode, sorted by name (``meshd fence status``):
        its state, epoch, the ballot's round and coordinator, the voters counted (and how
        many are needed), this node's power-off attempts, its own reach check, evidence."""
        out: list[dict[str, object]] = []
        for name in sorted(self._eps):
            ep = self._eps[name]
            b = self._ballots.get((name, ep.epoch))
            voters = ep.voters or (tuple(sorted(b.votes)) if b else ())
            out.append(
                {
                    "node": name,
                    "state": ep.state,
                    "epoch": ep.epoch,
                    "round": ep.round if ep.final_round < 0 else ep.final_round,
                    "coordinator": ep.final_coordinator or ep.coordinator or self._coord(ep),
                    "votes": list(voters),
                    "needed": majority(len(self._roster)),
                    "attempts": self._attempts.get(name, 0),
                    "reachable": ep.reachable,
                    # A fenced node's evidence (verified Off, or an operator's confirm),
                    # or why a fence failed.
                    "evidence": ep.detail,
                }
            )
        return out

    def next_deadline(self) -> float:
        t = math.inf
        for ep in self._eps.values():
            if ep.state in OPEN:
                t = min(t, ep.check_due, ep.heard_at + self.cfg.takeover_s)
        for b in self._ballots.values():
            t = min(t, b.next_send)
        return t

    # -- inputs -------------------------------------------------------------------------

    def set_roster(self, voters: frozenset[str], now: float) -> list[Effect]:
        """The durable roster: who may vote (witnesses included, removed nodes not)."""
        self._roster = frozenset(voters)
        out: list[Effect] = []
        for key in sorted(self._ballots):
            out += self._try_decide(self._ballots[key], now)
        return out

    def member(self, name: str, state: str, incarnation: int, now: float) -> list[Effect]:
        """Membership's view of ``name`` changed (``alive|suspect|dead|left``)."""
        if name == self.name:
            return []
        self._members[name] = (state, incarnation)
        ep = self._eps.get(name)
        out: list[Effect] = []
        if state == "dead":
            if ep is not None and ep.epoch >= incarnation:
                return []
            if ep is not None:
                out += self._end(ep, now, "dead again at a higher incarnation")
            done = self._done.get((name, incarnation))
            if done is not None:  # restored: already fenced or failed at this epoch
                return out
            ep = _Episode(name, incarnation, "dead", heard_at=now, check_due=math.inf)
            self._eps[name] = ep
            self.log.info("fence episode target=%s epoch=%s", name, incarnation)
            out.append(CheckReach(name, incarnation))
            if self._coord(ep) == self.name:
                out += self._start_ballot(ep, now)
            return out
        if ep is None:
            return []
        if state == "left" or incarnation > ep.epoch:
            # A refutation (or a graceful leave): before a quorum this ends the episode.
            out += self._end(ep, now, f"{state} at incarnation {incarnation}")
        return out

    def reach(self, target: str, epoch: int, reachable: bool, now: float) -> list[Effect]:
        """The result of this node's own direct check of ``target`` (for ``epoch``)."""
        ep = self._eps.get(target)
        if ep is None or ep.epoch != epoch or ep.state not in OPEN:
            return []
        ep.reachable = reachable
        # Reachable: check again soon. Unreachable: refresh now and then, so a vote is
        # never given on a result older than a takeover period.
        ep.check_due = now + (self.cfg.check_s if reachable else self.cfg.takeover_s)
        if reachable or ep.pending is None:
            return []
        req, author = ep.pending
        ep.pending = None
        return self._on_request(req, author, now)

    def receive(
        self, msg: FenceMsg, author: str, now: float, votes: tuple[SignedVote, ...] = ()
    ) -> list[Effect]:
        """A message whose author the shell authenticated. For a ``FenceVote``, ``votes``
        holds it signed (the blob to forward); for ``Fenced``/``FenceFailed``, the votes
        whose signatures the shell verified."""
        if author not in self._roster or msg.target in (author, self.name):
            self.log.debug("fence msg dropped: author=%s target=%s", author, msg.target)
            return []
        if isinstance(msg, FenceRequest):
            self._progress(msg.target, msg.epoch, msg.round, author, now)
            return self._on_request(msg, author, now)
        if isinstance(msg, FenceVote):
            blob = next((v.blob for v in votes if v.voter == author and v.vote == msg), b"")
            return self._on_vote(msg, author, blob, now)
        if isinstance(msg, Fencing):
            ep = self._progress(msg.target, msg.epoch, msg.round, author, now)
            if ep is not None:
                ep.state = "fencing"
            return []
        if isinstance(msg, Release):
            return self._on_release(msg.target, msg.epoch, msg.round, author, now)
        if isinstance(msg, Fenced):
            return self._on_fenced(msg, author, votes, now)
        return self._on_failed(msg, author, votes, now)

    def power_result(
        self, target: str, epoch: int, round: int, outcome: str, now: float, reason: str = ""
    ) -> list[Effect]:
        """What came of a :class:`PowerOff`: ``off`` (verified Off after the POST),
        ``already-off`` (verified Off, no POST) or ``failed`` (``reason`` says why)."""
        if outcome not in POWER_OUTCOMES:
            raise ValueError(f"power outcome must be one of {POWER_OUTCOMES}, got {outcome!r}")
        key = (target, epoch)
        b = self._ballots.get(key)
        if b is None or not b.decided or b.round != round:
            self.log.warning("power result for no open fence: target=%s epoch=%s", target, epoch)
            return []
        del self._ballots[key]
        if outcome == "failed":
            why = reason or "the BMC gave no reason"
            fail = FenceFailed(target, epoch, round, self.name, b.blobs, why)
            out: list[Effect] = [
                Persist(rec.Outcome(target, epoch, round, self.name, "failed", why, b.blobs)),
                Broadcast(fail, reliable=True),
            ]
            return out + self._failed_here(fail, b.voters, now)
        evidence = f"{outcome} verified by {self.name} through the BMC"
        fenced = Fenced(target, epoch, round, self.name, b.blobs, evidence)
        return [
            Persist(rec.Outcome(target, epoch, round, self.name, "fenced", evidence, b.blobs)),
            Broadcast(fenced, reliable=True),
            *self._fenced_here(fenced, b.voters),
        ]

    def confirm(self, target: str, now: float) -> list[Effect]:
        """The operator's word that ``target`` is off (``meshd fence confirm``): only
        where a fence of the current epoch reached quorum and then failed."""
        ep = self._eps.get(target)
        if ep is None or ep.state != "fence-failed":
            state = "not being fenced" if ep is None else ep.state
            raise FencingError(
                f"can't confirm {target}: it is {state}. A confirm replaces the BMC's "
                "verification after a fence reached quorum and failed, never the quorum; "
                "see `meshd fence status`"
            )
        evidence = f"confirmed off by the operator on {self.name}"
        fenced = Fenced(target, ep.epoch, ep.final_round, ep.final_coordinator, ep.votes, evidence)
        self.log.warning("fence confirmed by operator target=%s epoch=%s", target, ep.epoch)
        return [
            Persist(
                rec.Outcome(
                    target,
                    ep.epoch,
                    ep.final_round,
                    ep.final_coordinator,
                    "confirmed",
                    evidence,
                    ep.votes,
                )
            ),
            Broadcast(fenced, reliable=True),
            *self._fenced_here(fenced, ep.voters),
        ]

    def tick(self, now: float) -> list[Effect]:
        out: list[Effect] = []
        for name in sorted(self._eps):
            ep = self._eps[name]
            if ep.state not in OPEN:
                continue
            if now >= ep.check_due:
                ep.check_due = math.inf  # until the result comes back
                out.append(CheckReach(name, ep.epoch))
            if now >= ep.heard_at + self.cfg.takeover_s:
                mine = self._ballots.get((name, ep.epoch))
                if mine is not None and mine.decided:
                    ep.heard_at = now  # we are the one powering it off
                    continue
                ep.round += 1
                ep.heard_at = now
                ep.state = "dead"
                ep.coordinator = self._coord(ep)
                self.log.info(
                    "fence takeover target=%s epoch=%s round=%s coordinator=%s",
                    name,
                    ep.epoch,
                    ep.round,
                    ep.coordinator,
                )
                if ep.coordinator == self.name:
                    out += self._start_ballot(ep, now)
        for key in sorted(self._ballots):
            b = self._ballots[key]
            if now < b.next_send:
                continue
            if b.decided:
                b.next_send = now + 2 * self.cfg.resend_s
                own_ep = self._eps.get(b.target)
                if own_ep is not None and own_ep.epoch == b.epoch:
                    own_ep.heard_at = now
                out.append(Broadcast(Fencing(b.target, b.epoch, b.round)))
            else:
                out += self._request(b, now)
        return out

    def restore(self, records: list[rec.Record], now: float) -> list[Effect]:
        """Rebuild the promises of ``records`` after a restart (call before anything else)."""
        st = rec.fold(records)
        for key, g in st.grants.items():
            # A grant from the future means the clock restarted: hold a full lease.
            until = g.at + self.cfg.lease_s if g.at <= now else now + self.cfg.lease_s
            self._grants[key] = _Grant(g.round, g.coordinator, g.at, until)
        self._rounds_used = dict(st.rounds)
        for key, o in sorted(st.outcomes.items()):
            if o.kind == "abandoned":
                continue
            target, epoch = key
            self._done[key] = "failed" if o.kind == "failed" else "fenced"
            old = self._eps.get(target)
            if old is None or old.epoch < epoch:
                self._eps[target] = _Episode(
                    target,
                    epoch,
                    "fence-failed" if o.kind == "failed" else "fenced",
                    votes=o.votes,
                    detail=o.detail,
                    final_round=o.round,
                    final_coordinator=o.coordinator,
                )
        out: list[Effect] = []
        for key, d in sorted(st.decided.items()):
            last = st.outcomes.get(key)
            if last is not None and last.round >= d.round:
                continue
            # Our power-off died with the process: its requests ended. Free the voters.
            why = "the coordinator restarted mid-fence"
            self.log.warning("fence abandoned target=%s epoch=%s: %s", key[0], key[1], why)
            out += [
                Persist(rec.Outcome(key[0], key[1], d.round, self.name, "abandoned", why)),
                Broadcast(Release(key[0], key[1], d.round)),
            ]
        return out

    # -- the voter ----------------------------------------------------------------------

    def _on_request(self, req: FenceRequest, coordinator: str, now: float) -> list[Effect]:
        ep = self._eps.get(req.target)
        if self.name not in self._roster or ep is None or ep.epoch != req.epoch:
            return []  # not a voter, or we don't hold it dead at that epoch (yet)
        if ep.state not in OPEN:
            return []
        if ep.reachable is not False:
            ep.pending = (req, coordinator)  # answered when our own check says unreachable
            return []
        key = (req.target, req.epoch)
        g = self._grants.get(key)
        if g is not None and (g.round, g.coordinator) != (req.round, coordinator):
            if req.round < g.round:
                return []  # an older round than one we granted: stale
            if not g.released and now < g.until:
                self.log.debug(
                    "fence grant held target=%s epoch=%s for round=%s of %s until=%.3f",
                    req.target,
                    req.epoch,
                    g.round,
                    g.coordinator,
                    g.until,
                )
                return []
        self._grants[key] = _Grant(req.round, coordinator, now, now + self.cfg.lease_s)
        vote = FenceVote(req.target, req.epoch, req.round, coordinator, req.req_at)
        return [
            Persist(rec.Granted(req.target, req.epoch, req.round, coordinator, now)),
            Send(coordinator, vote),
        ]

    def _on_release(
        self, target: str, epoch: int, round: int, author: str, now: float
    ) -> list[Effect]:
        g = self._grants.get((target, epoch))
        if g is not None and (g.round, g.coordinator) == (round, author):
            g.released = True
        ep = self._eps.get(target)
        if ep is not None and ep.epoch == epoch and ep.state in OPEN and ep.round == round:
            ep.heard_at = now - self.cfg.takeover_s  # take over at the next tick
            ep.state = "dead"
        return []

    def _progress(
        self, target: str, epoch: int, round: int, author: str, now: float
    ) -> _Episode | None:
        """A message from a coordinator: it is alive and at ``round``."""
        ep = self._eps.get(target)
        if ep is None or ep.epoch != epoch or ep.state not in OPEN or round < ep.round:
            return None
        if round > ep.round:
            ep.round = round
            mine = self._ballots.get((target, epoch))
            if mine is not None and not mine.decided and mine.round < round:
                del self._ballots[(target, epoch)]  # a later round took over: stand down
        ep.coordinator = author
        ep.heard_at = now
        return ep

    # -- the coordinator ----------------------------------------------------------------

    def _coord(self, ep: _Episode) -> str:
        live = sorted(
            x
            for x in self._roster
            if x != ep.target and (x == self.name or self._members.get(x, ("", 0))[0] in LIVE)
        )
        return live[ep.round % len(live)] if live else ""

    def _start_ballot(self, ep: _Episode, now: float) -> list[Effect]:
        key = (ep.target, ep.epoch)
        if self._rounds_used.get(key, -1) >= ep.round or key in self._done:
            return []  # used before a restart: never reuse a ballot
        old = self._ballots.get(key)
        if old is not None and old.decided:
            return []
        self._rounds_used[key] = ep.round
        b = _Ballot(ep.target, ep.epoch, ep.round, next_send=now)
        self._ballots[key] = b
        ep.coordinator = self.name
        self.log.info("fence ballot target=%s epoch=%s round=%s", ep.target, ep.epoch, ep.round)
        return [Persist(rec.BallotStarted(ep.target, ep.epoch, ep.round)), *self._request(b, now)]

    def _request(self, b: _Ballot, now: float) -> list[Effect]:
        # Back off while no quorum comes (a minority asks forever), but speak at least
        # twice per takeover period so nobody takes over a live coordinator.
        b.interval = (
            min(2 * b.interval, self.cfg.takeover_s / 2) if b.interval else self.cfg.resend_s
        )
        b.next_send = now + b.interval
        req = FenceRequest(b.target, b.epoch, b.round, now)
        out: list[Effect] = []
        for x in sorted(self._roster):
            if x == b.target or (x in b.votes and not b.renew):
                continue
            if x == self.name:
                out += self._on_request(req, self.name, now)
            else:
                out.append(Send(x, req))
        b.renew = False
        ep = self._eps.get(b.target)
        if ep is not None and ep.epoch == b.epoch:
            ep.heard_at = now
        return out

    def _on_vote(self, vote: FenceVote, voter: str, blob: bytes, now: float) -> list[Effect]:
        b = self._ballots.get((vote.target, vote.epoch))
        if b is None or b.decided or vote.round != b.round or vote.coordinator != self.name:
            return []
        if not blob:
            self.log.warning("fence vote without its signed form dropped: voter=%s", voter)
            return []
        if vote.req_at > now:
            return []  # we never sent that request: our clock is the only one it names
        b.votes[voter] = (vote.req_at, blob)
        return self._try_decide(b, now)

    def _try_decide(self, b: _Ballot, now: float) -> list[Effect]:
        if b.decided or vote_result(self._roster, b.votes) is not VoteResult.WON:
            return []
        need = majority(len(self._roster))
        counted = sorted(
            (v for v in b.votes if v in self._roster), key=lambda v: (-b.votes[v][0], v)
        )[:need]
        deadline = min(b.votes[v][0] for v in counted) + self._window
        if deadline - now < self._window / 2:
            b.renew = True  # old votes would leave too short a window: renew them all
            return []
        b.decided, b.deadline = True, deadline
        b.voters = tuple(sorted(counted))
        b.blobs = tuple(b.votes[v][1] for v in b.voters)
        b.next_send = now + 2 * self.cfg.resend_s
        self._attempts[b.target] = self._attempts.get(b.target, 0) + 1
        ep = self._eps.get(b.target)
        if ep is not None and ep.epoch == b.epoch:
            ep.state, ep.coordinator, ep.heard_at = "fencing", self.name, now
        self.log.info(
            "fence decided target=%s epoch=%s round=%s voters=%s deadline=%.3f",
            b.target,
            b.epoch,
            b.round,
            ",".join(b.voters),
            deadline,
        )
        return [
            Persist(rec.Decided(b.target, b.epoch, b.round, deadline, b.blobs)),
            Broadcast(Fencing(b.target, b.epoch, b.round)),
            PowerOff(b.target, b.epoch, b.round, deadline),
        ]

    # -- outcomes -----------------------------------------------------------------------

    def _valid_voters(
        self,
        target: str,
        epoch: int,
        round: int,
        coordinator: str,
        votes: tuple[SignedVote, ...],
        blobs: tuple[bytes, ...],
    ) -> tuple[str, ...] | None:
        """The voters of verified ``votes`` for exactly this ballot, if they are a
        majority of the roster (None otherwise)."""
        carried = set(blobs)
        ok = {
            v.voter
            for v in votes
            if v.blob in carried
            and v.voter in self._roster
            and v.voter != target
            and (v.vote.target, v.vote.epoch, v.vote.round, v.vote.coordinator)
            == (target, epoch, round, coordinator)
        }
        if vote_result(self._roster, ok) is not VoteResult.WON:
            return None
        return tuple(sorted(ok))

    def _on_fenced(
        self, msg: Fenced, author: str, votes: tuple[SignedVote, ...], now: float
    ) -> list[Effect]:
        key = (msg.target, msg.epoch)
        if self._done.get(key) == "fenced":
            return []
        voters = self._valid_voters(
            msg.target, msg.epoch, msg.round, msg.coordinator, votes, msg.votes
        )
        if voters is None:
            self.log.warning(
                "Fenced without a majority of valid votes ignored: target=%s epoch=%s author=%s",
                msg.target,
                msg.epoch,
                author,
            )
            return []
        kind = "fenced"
        out: list[Effect] = [
            Persist(
                rec.Outcome(
                    msg.target, msg.epoch, msg.round, msg.coordinator, kind, msg.evidence, msg.votes
                )
            )
        ]
        return out + self._fenced_here(msg, voters)

    def _on_failed(
        self, msg: FenceFailed, author: str, votes: tuple[SignedVote, ...], now: float
    ) -> list[Effect]:
        key = (msg.target, msg.epoch)
        g = self._grants.get(key)
        if g is not None and author == msg.coordinator == g.coordinator and g.round == msg.round:
            g.released = True  # its power-off requests have ended
        if key in self._done:
            return []
        voters = self._valid_voters(
            msg.target, msg.epoch, msg.round, msg.coordinator, votes, msg.votes
        )
        if voters is None or author != msg.coordinator:
            self.log.warning("FenceFailed without a valid quorum ignored: target=%s", msg.target)
            return []
        out: list[Effect] = [
            Persist(
                rec.Outcome(
                    msg.target,
                    msg.epoch,
                    msg.round,
                    msg.coordinator,
                    "failed",
                    msg.reason,
                    msg.votes,
                )
            )
        ]
        return out + self._failed_here(msg, voters, now)

    def _fenced_here(self, msg: Fenced, voters: tuple[str, ...]) -> list[Effect]:
        key = (msg.target, msg.epoch)
        if self._done.get(key) == "fenced":
            return []
        self._done[key] = "fenced"
        self._ballots.pop(key, None)
        ep = self._episode_for(msg.target, msg.epoch, "fenced")
        if ep is not None:
            ep.state, ep.voters, ep.votes, ep.detail = "fenced", voters, msg.votes, msg.evidence
            ep.final_round, ep.final_coordinator = msg.round, msg.coordinator
        self.log.warning("fenced target=%s epoch=%s: %s", msg.target, msg.epoch, msg.evidence)
        return [Replace(msg.target, msg.epoch)]

    def _failed_here(self, msg: FenceFailed, voters: tuple[str, ...], now: float) -> list[Effect]:
        key = (msg.target, msg.epoch)
        self._done[key] = "failed"
        self._ballots.pop(key, None)
        ep = self._episode_for(msg.target, msg.epoch, "fence-failed")
        if ep is not None:
            ep.state, ep.voters, ep.votes, ep.detail = "fence-failed", voters, msg.votes, msg.reason
            ep.final_round, ep.final_coordinator = msg.round, msg.coordinator
        self.log.error("fence failed target=%s epoch=%s: %s", msg.target, msg.epoch, msg.reason)
        return [Alarm(msg.target, msg.epoch, msg.reason)]

    def _episode_for(self, target: str, epoch: int, state: str) -> _Episode | None:
        """The episode an outcome for ``epoch`` belongs to (opened if we had none); None
        when we already watch a later epoch, which an old outcome must not touch."""
        ep = self._eps.get(target)
        if ep is not None and ep.epoch > epoch:
            return None
        if ep is None or ep.epoch < epoch:
            ep = _Episode(target, epoch, state)
            self._eps[target] = ep
        return ep

    def _end(self, ep: _Episode, now: float, why: str) -> list[Effect]:
        """The episode is over without a fence of ours (refuted, left, superseded)."""
        key = (ep.target, ep.epoch)
        out: list[Effect] = []
        b = self._ballots.get(key)
        if b is not None and not b.decided:
            del self._ballots[key]
            out.append(Broadcast(Release(ep.target, ep.epoch, b.round)))
        if self._eps.get(ep.target) is ep:
            del self._eps[ep.target]
        self.log.info("fence episode over target=%s epoch=%s: %s", ep.target, ep.epoch, why)
        return out
