"""The transmit-limited queue: limits, priorities, invalidation, ageing, bounds."""

from __future__ import annotations

from meshd.core.membership import codec
from meshd.core.membership.broadcasts import BroadcastQueue
from meshd.core.membership.messages import Alive, Left, Suspect, Update, UserMsg


def _push(q: BroadcastQueue, u: Update, key: str | None = None, born: float | None = None) -> None:
    q.push(u, codec.update_size(u), key=key, born=born)


def test_each_update_is_sent_limit_times_then_retired() -> None:
    q = BroadcastQueue()
    _push(q, Left("a", 1), key="a")
    sent = 0
    while q.take(1000, limit=5):
        sent += 1
    assert sent == 5
    assert len(q) == 0


def test_budget_is_respected_and_smaller_updates_fill_the_gap() -> None:
    q = BroadcastQueue()
    big = UserMsg("o", 1, "k", b"x" * 100)
    small = Left("a", 1)
    _push(q, small, key="a")
    _push(q, big)
    room = codec.update_size(big) + codec.update_size(small) - 1
    got = q.take(room, limit=9)
    assert got == [big]  # newest first; the small one doesn't fit after it
    got = q.take(room, limit=9)
    assert got == [small]  # least-sent first; now the big one doesn't fit
    assert q.take(1000, limit=9) == [big, small]  # both sent once: newest first
    assert q.take(codec.MIN_UPDATE_SIZE - 1, limit=9) == []


def test_least_sent_first_then_newest_first() -> None:
    q = BroadcastQueue()
    for name in "abc":
        _push(q, Left(name, 1), key=name)
    one = codec.update_size(Left("a", 1))
    assert q.take(one, limit=9) == [Left("c", 1)]
    assert q.take(one, limit=9) == [Left("b", 1)]
    assert q.take(one, limit=9) == [Left("a", 1)]
    assert q.take(one, limit=9) == [Left("c", 1)]  # all sent once: newest again


def test_newer_update_about_a_member_replaces_the_queued_one() -> None:
    q = BroadcastQueue()
    _push(q, Suspect("a", 3, "x"), key="a")
    q.take(1000, limit=9)
    _push(q, Alive("a", "id", ("h", 1), 4), key="a")
    _push(q, Left("b", 1), key="b")
    assert len(q) == 2
    assert q.transmits("a") == 0  # the replacement starts afresh
    assert q.take(1000, limit=9) == [Left("b", 1), Alive("a", "id", ("h", 1), 4)]


def test_keyless_updates_never_invalidate_each_other() -> None:
    q = BroadcastQueue()
    _push(q, UserMsg("o", 1, "k", b""))
    _push(q, UserMsg("o", 2, "k", b""))
    assert len(q) == 2


def test_aging_updates_expire() -> None:
    q = BroadcastQueue()
    _push(q, UserMsg("o", 1, "k", b""), born=10.0)
    _push(q, UserMsg("o", 2, "k", b""), born=20.0)
    _push(q, Left("a", 1), key="a")  # member updates don't age
    assert q.expire(15.0) == 1
    assert len(q) == 2
    assert q.expire(100.0) == 1
    assert q.take(1000, limit=9) == [Left("a", 1)]


def test_expire_skips_updates_already_retired() -> None:
    q = BroadcastQueue()
    _push(q, UserMsg("o", 1, "k", b""), born=10.0)
    q.take(1000, limit=1)
    assert len(q) == 0
    assert q.expire(100.0) == 0


def test_prune_drops_the_most_sent_first() -> None:
    q = BroadcastQueue()
    _push(q, Left("a", 1), key="a")
    q.take(1000, limit=9)
    _push(q, Left("b", 1), key="b")
    _push(q, Left("c", 1), key="c")
    assert q.prune(2) == 1
    assert q.transmits("a") is None
    assert len(q) == 2


def test_at_most_255_updates_per_datagram() -> None:
    q = BroadcastQueue()
    for i in range(300):
        _push(q, Left(f"n{i}", 1), key=f"n{i}")
    assert len(q.take(1_000_000, limit=9)) == codec.MAX_UPDATES
