"""The fencing core's rules, one small test each (meshd/core/fencing/fencer.py)."""

from __future__ import annotations

import pytest

from meshd.config import FencingConfig
from meshd.core.fencing import (
    Alarm,
    BallotStarted,
    Broadcast,
    CheckReach,
    Decided,
    Effect,
    Fenced,
    FenceFailed,
    Fencer,
    FenceRequest,
    FenceVote,
    Fencing,
    Granted,
    Outcome,
    Persist,
    PowerOff,
    Record,
    Release,
    Replace,
    Send,
    SignedVote,
    codec,
)
from meshd.errors import EnvelopeError, FencingError

CFG = FencingConfig(check_s=0.2, lease_s=10.0, takeover_s=1.0, resend_s=0.05, drift=0.01)
WINDOW = CFG.lease_s * (1 - CFG.drift) / (1 + CFG.drift)


def roster(n: int) -> frozenset[str]:
    return frozenset(f"n{i}" for i in range(1, n + 1))


def node(name: str, n: int = 3, now: float = 0.0) -> Fencer:
    """A Fencer in an ``n``-voter roster: n1.. and the target n9, every voter alive."""
    f = Fencer(CFG, name)
    f.set_roster(roster(n - 1) | {"n9"}, now)
    for x in sorted(roster(n - 1)):
        f.member(x, "alive", 1, now)
    return f


def signed(voter: str, vote: FenceVote) -> SignedVote:
    return SignedVote(voter, vote, f"sig:{voter}:".encode() + codec.encode(vote))


def of(effects: list[Effect], kind: type) -> list[Effect]:
    return [e for e in effects if isinstance(e, kind)]


def votes_sent(effects: list[Effect]) -> list[FenceVote]:
    return [e.msg for e in effects if isinstance(e, Send) and isinstance(e.msg, FenceVote)]


def dead_and_unreachable(f: Fencer, target: str = "n9", epoch: int = 4, now: float = 0.0) -> None:
    f.member(target, "dead", epoch, now)
    f.reach(target, epoch, False, now)


def vote(voter: str, f: Fencer, now: float, req_at: float | None = None) -> list[Effect]:
    """Deliver ``voter``'s vote for the coordinator ``f``'s ballot 0 (a request sent at
    ``req_at``, default ``now``)."""
    v = FenceVote("n9", 4, 0, f.name, now if req_at is None else req_at)
    return f.receive(v, voter, now, (signed(voter, v),))


# -- votes ------------------------------------------------------------------------------


def test_a_node_votes_only_when_it_holds_the_target_dead_and_cannot_reach_it() -> None:
    f = node("n2")
    req = FenceRequest("n9", 4, 0, 0.0)
    assert f.receive(req, "n1", 0.0) == []  # membership holds n9 alive: no vote
    assert f.member("n9", "dead", 4, 0.1) == [CheckReach("n9", 4)]
    assert f.receive(req, "n1", 0.1) == []  # dead, but our own check has not answered
    assert f.reach("n9", 4, True, 0.2) == []  # we can reach it: no vote
    assert f.receive(req, "n1", 0.25) == []
    out = f.reach("n9", 4, False, 0.3)  # unreachable: the waiting request is answered
    assert out == [
        Persist(Granted("n9", 4, 0, "n1", 0.3)),
        Send("n1", FenceVote("n9", 4, 0, "n1", 0.0)),
    ]


def test_a_reach_result_for_another_epoch_is_ignored() -> None:
    f = node("n2")
    f.member("n9", "dead", 4, 0.0)
    f.receive(FenceRequest("n9", 4, 0, 0.0), "n1", 0.0)
    assert f.reach("n9", 3, False, 0.1) == []
    assert f.reach("n8", 4, False, 0.1) == []


def test_a_reachable_target_is_checked_again_after_check_s() -> None:
    f = node("n2")
    f.member("n9", "dead", 4, 0.0)
    f.reach("n9", 4, True, 0.1)
    assert f.next_deadline() == pytest.approx(0.1 + CFG.check_s)
    assert CheckReach("n9", 4) in f.tick(0.1 + CFG.check_s)


def test_requests_from_non_voters_and_about_ourselves_are_dropped() -> None:
    f = node("n2")
    dead_and_unreachable(f)
    assert f.receive(FenceRequest("n9", 4, 0, 0.0), "x", 0.0) == []
    assert f.receive(FenceRequest("n9", 4, 0, 0.0), "n9", 0.0) == []
    assert f.receive(FenceRequest("n2", 4, 0, 0.0), "n1", 0.0) == []


# -- the coordinator and the quorum -------------------------------------------------------


def test_the_lowest_live_voter_coordinates_and_asks_every_voter() -> None:
    f = node("n1", n=5)
    out = f.member("n9", "dead", 4, 0.0)
    assert out[0] == CheckReach("n9", 4)
    assert out[1] == Persist(BallotStarted("n9", 4, 0))  # before any request leaves
    assert [e.to for e in of(out, Send)] == ["n2", "n3", "n4"]  # not the target
    assert node("n2", n=5).member("n9", "dead", 4, 0.0) == [CheckReach("n9", 4)]


def test_a_minority_never_powers_off_and_a_majority_does() -> None:
    f = node("n1", n=5)
    dead_and_unreachable(f)  # its own vote goes out to itself
    assert vote("n1", f, 0.0) == []
    assert vote("n2", f, 0.01) == []  # 2 of 5: a minority
    assert vote("x", f, 0.01) == []  # a non-voter adds nothing
    assert vote("n9", f, 0.01) == []  # nor does the target
    assert vote("n2", f, 0.02) == []  # nor a duplicate
    out = vote("n3", f, 0.02)
    power = of(out, PowerOff)
    assert power == [PowerOff("n9", 4, 0, pytest.approx(0.0 + WINDOW))]
    # Persisted, then announced, then acted on.
    assert isinstance(out[0], Persist) and isinstance(out[0].record, Decided)
    assert out[1] == Broadcast(Fencing("n9", 4, 0))
    assert f.state("n9") == "fencing"


def test_the_deadline_counts_from_the_oldest_counted_request_and_shrinks_with_drift() -> None:
    f = node("n1")
    f.member("n9", "dead", 4, 0.0)
    f.reach("n9", 4, False, 0.3)
    vote("n1", f, 0.3, req_at=0.0)  # our own vote answers the request sent at 0.0
    out = vote("n2", f, 0.5)  # answers a copy sent at 0.5
    (power,) = of(out, PowerOff)
    assert isinstance(power, PowerOff)
    assert power.deadline == pytest.approx(0.0 + WINDOW)  # the older of the two counted
    assert CFG.lease_s > WINDOW


def test_votes_too_old_for_a_useful_window_are_renewed_first() -> None:
    f = node("n1")
    dead_and_unreachable(f)
    vote("n1", f, 0.0)
    late = FenceVote("n9", 4, 0, "n1", 0.0)
    assert f.receive(late, "n2", 9.0, (signed("n2", late),)) == []  # window would be ~0.8 s
    renewals = [e.to for e in f.tick(9.0) if isinstance(e, Send)]
    assert "n2" in renewals


def test_a_vote_without_its_signed_form_or_for_another_ballot_is_dropped() -> None:
    f = node("n1")
    dead_and_unreachable(f)
    v = FenceVote("n9", 4, 0, "n1", 0.0)
    assert f.receive(v, "n2", 0.0) == []
    assert f.receive(FenceVote("n9", 4, 7, "n1", 0.0), "n2", 0.0) == []
    assert f.receive(FenceVote("n9", 4, 0, "n3", 0.0), "n2", 0.0) == []
    assert of(vote("n1", f, 0.0), PowerOff) == []  # one vote of three so far


def test_the_next_coordinator_takes_over_only_after_silence() -> None:
    f = node("n2")
    dead_and_unreachable(f)
    assert f.tick(0.5) == []
    f.receive(FenceRequest("n9", 4, 0, 0.5), "n1", 0.6)  # progress from round 0
    assert not of(f.tick(1.5), Persist)
    out = f.tick(1.6 + CFG.takeover_s)
    assert Persist(BallotStarted("n9", 4, 1)) in out  # round 1 is n2's
    assert f.status()[0]["coordinator"] == "n2"


def test_a_release_from_the_rounds_coordinator_hands_over_at_the_next_tick() -> None:
    f = node("n2")
    dead_and_unreachable(f)
    f.receive(FenceRequest("n9", 4, 0, 0.1), "n1", 0.1)
    f.receive(Release("n9", 4, 0), "n1", 0.2)
    assert Persist(BallotStarted("n9", 4, 1)) in f.tick(0.2)


def test_a_failed_fence_can_still_be_confirmed_after_a_restart() -> None:
    f = node("n1")
    dead_and_unreachable(f)
    vote("n1", f, 0.0)
    records: list[Record] = [e.record for e in vote("n2", f, 0.0) if isinstance(e, Persist)]
    out = f.power_result("n9", 4, 0, "failed", 0.5, "refused")
    records += [e.record for e in out if isinstance(e, Persist)]
    again = Fencer(CFG, "n1")
    assert again.restore(records, 1.0) == []  # the decision has its outcome: nothing open
    again.set_roster(roster(2) | {"n9"}, 1.0)
    assert again.member("n9", "dead", 4, 1.0) == []  # the episode is known and final
    assert again.state("n9") == "fence-failed"
    assert of(again.confirm("n9", 2.0), Replace) == [Replace("n9", 4)]


def test_a_later_round_makes_a_coordinator_stand_down() -> None:
    f = node("n1")
    dead_and_unreachable(f)
    f.receive(FenceRequest("n9", 4, 1, 1.0), "n2", 1.0)
    assert vote("n2", f, 1.0) == [] and vote("n3", f, 1.0) == []  # our ballot is gone


# -- leases ---------------------------------------------------------------------------------


def test_a_second_ballot_is_refused_inside_the_lease_and_granted_after_it() -> None:
    f = node("n3", 4)
    dead_and_unreachable(f)
    assert votes_sent(f.receive(FenceRequest("n9", 4, 0, 0.0), "n1", 0.0))
    assert f.receive(FenceRequest("n9", 4, 1, 5.0), "n2", 5.0) == []
    assert f.receive(FenceRequest("n9", 4, 1, 9.9), "n2", 9.99) == []
    # The same ballot again is a renewal, which extends the lease.
    assert votes_sent(f.receive(FenceRequest("n9", 4, 0, 2.0), "n1", 2.0))
    assert f.receive(FenceRequest("n9", 4, 1, 10.5), "n2", 10.5) == []
    assert votes_sent(f.receive(FenceRequest("n9", 4, 1, 12.1), "n2", 12.1))


def test_a_release_or_a_failure_frees_the_grant_at_once() -> None:
    f = node("n3", 4)
    dead_and_unreachable(f)
    f.receive(FenceRequest("n9", 4, 0, 0.0), "n1", 0.0)
    assert f.receive(Release("n9", 4, 0), "n2", 1.0) == []  # not the grant's coordinator
    assert f.receive(FenceRequest("n9", 4, 1, 1.0), "n2", 1.0) == []
    f.receive(Release("n9", 4, 0), "n1", 1.0)
    assert votes_sent(f.receive(FenceRequest("n9", 4, 1, 1.1), "n2", 1.1))


def test_restore_keeps_every_grant_a_voter_made() -> None:
    f = node("n3", 4)
    dead_and_unreachable(f)
    out = f.receive(FenceRequest("n9", 4, 0, 0.0), "n1", 0.0)
    records: list[Record] = [e.record for e in out if isinstance(e, Persist)]
    assert records == [Granted("n9", 4, 0, "n1", 0.0)]
    # Restarted: the record survives the codec, the promise survives the restart.
    again = Fencer(CFG, "n3")
    assert again.restore([codec.load_record(codec.dump_record(r)) for r in records], 3.0) == []
    again.set_roster(roster(3) | {"n9"}, 3.0)
    again.member("n1", "alive", 1, 3.0)
    dead_and_unreachable(again, now=3.0)
    assert again.receive(FenceRequest("n9", 4, 1, 3.0), "n2", 3.0) == []
    assert votes_sent(again.receive(FenceRequest("n9", 4, 1, 10.1), "n2", 10.1))


def test_a_restored_grant_from_the_future_is_held_a_full_lease() -> None:
    f = Fencer(CFG, "n3")
    f.restore([Granted("n9", 4, 0, "n1", 500.0)], 1.0)  # the clock went back
    f.set_roster(roster(3) | {"n9"}, 1.0)
    dead_and_unreachable(f, now=1.0)
    assert f.receive(FenceRequest("n9", 4, 1, 10.0), "n2", 10.0) == []
    assert votes_sent(f.receive(FenceRequest("n9", 4, 1, 11.1), "n2", 11.1))


def test_a_coordinator_restarted_mid_fence_abandons_and_never_reuses_its_round() -> None:
    records: list[Record] = [BallotStarted("n9", 4, 0), Decided("n9", 4, 0, 9.0, (b"v",))]
    f = Fencer(CFG, "n1")
    out = f.restore(records, 2.0)
    assert out == [
        Persist(Outcome("n9", 4, 0, "n1", "abandoned", "the coordinator restarted mid-fence")),
        Broadcast(Release("n9", 4, 0)),
    ]
    f.set_roster(roster(3) | {"n9"}, 2.0)
    for x in ("n2", "n3"):
        f.member(x, "alive", 1, 2.0)
    assert not of(f.member("n9", "dead", 4, 2.0), Persist)  # round 0 was used


# -- episodes -------------------------------------------------------------------------------


def test_a_refutation_before_quorum_ends_the_episode_and_voids_the_votes() -> None:
    f = node("n1")
    dead_and_unreachable(f)
    vote("n1", f, 0.0)
    assert f.member("n9", "alive", 5, 0.1) == [Broadcast(Release("n9", 4, 0))]
    assert vote("n2", f, 0.2) == []
    assert f.state("n9") == "alive"
    assert f.status() == []


def test_a_refutation_after_quorum_does_not_stop_the_fence() -> None:
    f = node("n1")
    dead_and_unreachable(f)
    vote("n1", f, 0.0)
    assert of(vote("n2", f, 0.0), PowerOff)
    assert f.member("n9", "alive", 5, 0.1) == []
    out = f.power_result("n9", 4, 0, "off", 0.5)
    assert of(out, Replace) == [Replace("n9", 4)]


def test_a_verified_off_is_persisted_then_announced_then_replaced() -> None:
    f = node("n1")
    dead_and_unreachable(f)
    vote("n1", f, 0.0)
    vote("n2", f, 0.0)
    out = f.power_result("n9", 4, 0, "already-off", 0.5)
    assert [type(e) for e in out] == [Persist, Broadcast, Replace]
    msg = out[1].msg  # type: ignore[union-attr]
    assert isinstance(msg, Fenced) and len(msg.votes) == 2 and msg.coordinator == "n1"
    assert f.state("n9") == "fenced"
    assert f.power_result("n9", 4, 0, "off", 0.6) == []  # reported twice: nothing more


def test_a_failed_power_off_is_an_alarm_and_never_a_replace() -> None:
    f = node("n1")
    dead_and_unreachable(f)
    vote("n1", f, 0.0)
    vote("n2", f, 0.0)
    out = f.power_result("n9", 4, 0, "failed", 0.5, "unreachable: connect timeout")
    assert of(out, Replace) == []
    assert of(out, Alarm) == [Alarm("n9", 4, "unreachable: connect timeout")]
    assert f.state("n9") == "fence-failed"
    with pytest.raises(ValueError, match="power outcome"):
        f.power_result("n9", 4, 0, "maybe", 0.5)


# -- confirm --------------------------------------------------------------------------------


def test_confirm_is_refused_without_a_failed_quorum_fence() -> None:
    f = node("n1")
    with pytest.raises(FencingError, match="not being fenced"):
        f.confirm("n9", 0.0)
    dead_and_unreachable(f)
    vote("n1", f, 0.0)
    with pytest.raises(FencingError, match=r"it is dead.*never the quorum"):
        f.confirm("n9", 0.1)
    vote("n2", f, 0.1)
    with pytest.raises(FencingError, match="fencing"):
        f.confirm("n9", 0.2)


def test_confirm_after_a_failed_fence_fences_on_the_operators_word() -> None:
    f = node("n1")
    dead_and_unreachable(f)
    vote("n1", f, 0.0)
    vote("n2", f, 0.0)
    f.power_result("n9", 4, 0, "failed", 0.5, "refused")
    out = f.confirm("n9", 1.0)
    assert [type(e) for e in out] == [Persist, Broadcast, Replace]
    assert f.state("n9") == "fenced"
    with pytest.raises(FencingError):
        f.confirm("n9", 1.1)


def test_a_failure_elsewhere_lets_another_node_confirm() -> None:
    n1 = node("n1")
    dead_and_unreachable(n1)
    v1, v2 = vote_pair(n1)
    out = n1.power_result("n9", 4, 0, "failed", 0.5, "wrong state: On")
    (fail,) = [e.msg for e in out if isinstance(e, Broadcast)]
    assert isinstance(fail, FenceFailed)
    n3 = Fencer(CFG, "n3")  # a 3-voter roster has no n3: it watches from outside
    n3.set_roster(roster(2) | {"n9", "n3"} - {"n3"}, 0.0)
    dead_and_unreachable(n3)
    assert n3.receive(fail, "n1", 0.6, (v1,)) == []  # one vote of three is no quorum
    assert n3.receive(fail, "n1", 0.6, (v1, v2)) != []
    assert n3.state("n9") == "fence-failed"
    assert of(n3.confirm("n9", 1.0), Replace) == [Replace("n9", 4)]


def vote_pair(f: Fencer) -> tuple[SignedVote, SignedVote]:
    out: list[SignedVote] = []
    for voter in ("n1", "n2"):
        v = FenceVote("n9", 4, 0, f.name, 0.0)
        s = signed(voter, v)
        f.receive(v, voter, 0.0, (s,))
        out.append(s)
    return out[0], out[1]


# -- Fenced ---------------------------------------------------------------------------------


def test_fenced_needs_a_majority_of_valid_votes_for_exactly_that_ballot() -> None:
    f = node("n3", 4)  # four voters: three votes needed
    dead_and_unreachable(f)
    good = [signed(v, FenceVote("n9", 4, 0, "n1", 0.0)) for v in ("n1", "n2", "n3")]
    blobs = tuple(s.blob for s in good)
    two = good[:2]

    def fenced(votes: list[SignedVote], carried: tuple[bytes, ...] = blobs) -> list[Effect]:
        return f.receive(Fenced("n9", 4, 0, "n1", carried, "off"), "n1", 1.0, tuple(votes))

    assert fenced(two) == []  # insufficient
    assert fenced([*two, good[0]]) == []  # one voter twice
    assert fenced([*two, signed("x", good[2].vote)]) == []  # a non-voter
    assert fenced([*two, signed("n9", good[2].vote)]) == []  # the target itself
    assert fenced([*two, signed("n3", FenceVote("n9", 3, 0, "n1", 0.0))]) == []  # epoch
    assert fenced([*two, signed("n3", FenceVote("n9", 4, 1, "n2", 0.0))]) == []  # ballot
    assert fenced(good, carried=blobs[:2]) == []  # a vote the message does not carry
    assert f.receive(Fenced("n9", 4, 0, "n1", blobs, "off"), "x", 1.0, tuple(good)) == []
    out = fenced(good)
    assert [type(e) for e in out] == [Persist, Replace]
    assert fenced(good) == []  # never fenced twice for one epoch
    assert f.status()[0]["votes"] == ["n1", "n2", "n3"]


def test_a_fenced_node_that_comes_back_rejoins_as_a_fresh_member() -> None:
    f = node("n3", 4)
    dead_and_unreachable(f)
    good = [signed(v, FenceVote("n9", 4, 0, "n1", 0.0)) for v in ("n1", "n2", "n3")]
    msg = Fenced("n9", 4, 0, "n1", tuple(s.blob for s in good), "off")
    f.receive(msg, "n1", 1.0, tuple(good))
    assert f.state("n9") == "fenced"
    f.member("n9", "alive", 5, 30.0)
    assert f.state("n9") == "alive"
    assert f.receive(msg, "n1", 31.0, tuple(good)) == []  # the old epoch stays done
    assert f.member("n9", "dead", 6, 40.0) == [CheckReach("n9", 6)]  # a new epoch


def test_an_outcome_for_an_older_epoch_leaves_the_current_episode_alone() -> None:
    """Found by the simulator (seed 2539): a late FenceFailed for epoch 4 turned the
    open epoch-5 episode into fence-failed, and a confirm then sent a Fenced for epoch
    5 carrying epoch-4 votes."""
    f = node("n3", 4)
    f.member("n9", "dead", 5, 0.0)
    f.reach("n9", 5, False, 0.0)
    good = [signed(v, FenceVote("n9", 4, 0, "n1", 0.0)) for v in ("n1", "n2", "n3")]
    blobs = tuple(s.blob for s in good)
    out = f.receive(FenceFailed("n9", 4, 0, "n1", blobs, "refused"), "n1", 1.0, tuple(good))
    assert of(out, Alarm) == [Alarm("n9", 4, "refused")]
    assert f.state("n9") == "dead"
    with pytest.raises(FencingError):
        f.confirm("n9", 2.0)
    assert of(f.receive(Fenced("n9", 4, 0, "n1", blobs, "off"), "n1", 3.0, tuple(good)), Replace)
    assert f.state("n9") == "dead" and f.status()[0]["epoch"] == 5


# -- codec ----------------------------------------------------------------------------------

MESSAGES = [
    FenceRequest("n9", 4, 0, 1.5),
    FenceVote("n9", 4, 2, "n1", 1.5),
    Fencing("n9", 4, 2),
    Fenced("n9", 4, 2, "n1", (b"\x00sig", b"v2"), "off verified"),
    FenceFailed("n9", 4, 2, "n1", (b"v",), "unreachable"),
    Release("n9", 4, 2),
]
RECORDS: list[Record] = [
    Granted("n9", 4, 0, "n1", 2.0),
    BallotStarted("n9", 4, 1),
    Decided("n9", 4, 1, 20.0, (b"a", b"b")),
    Outcome("n9", 4, 1, "n1", "fenced", "off", (b"a",)),
]


@pytest.mark.parametrize("msg", MESSAGES)
def test_codec_round_trips_every_message(msg: object) -> None:
    assert codec.decode(codec.encode(msg)) == msg  # type: ignore[arg-type]


@pytest.mark.parametrize("record", RECORDS)
def test_codec_round_trips_every_record(record: Record) -> None:
    assert codec.load_record(codec.dump_record(record)) == record


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b"[]", "not a JSON object"),
        (b'{"t":"nope"}', "unknown type"),
        (b'{"t":"req","n":"n9","e":4,"r":0}', "exactly the fields"),
        (b'{"t":"req","n":"n9","e":4,"r":0,"at":1,"x":1}', "exactly the fields"),
        (b'{"t":"req","n":"n9","e":-1,"r":0,"at":1}', "non-negative integer"),
        (b'{"t":"req","n":"n9","e":true,"r":0,"at":1}', "non-negative integer"),
        (b'{"t":"req","n":"","e":1,"r":0,"at":1}', "node name"),
        (b'{"t":"req","n":"n9","e":1,"r":0,"at":"soon"}', "finite number"),
        (b'{"t":"req","n":"n9","e":1,"r":0,"at":1e999}', "not valid UTF-8 JSON"),
        (b'{"t":"fenced","n":"n9","e":1,"r":0,"c":"n1","v":["%%%"],"why":""}', "base64"),
        (b'{"t":"fenced","n":"n9","e":1,"r":0,"c":"n1","v":"x","why":""}', "list"),
        (b'{"t":"granted","n":"n9","e":1,"r":0,"c":"n1","at":1}', "unknown type"),
    ],
)
def test_codec_refuses_bad_bytes_with_a_clear_error(data: bytes, says: str) -> None:
    with pytest.raises(EnvelopeError, match=says):
        codec.decode(data)


def test_a_record_is_never_taken_for_a_message_or_back() -> None:
    with pytest.raises(EnvelopeError, match="unknown type"):
        codec.load_record(codec.encode(MESSAGES[0]))
    bad = b'{"t":"outcome","n":"n9","e":1,"r":0,"c":"n1","k":"maybe","why":"","v":[]}'
    with pytest.raises(EnvelopeError, match="unknown outcome"):
        codec.load_record(bad)
