"""Bounded record storage: multi-writer merge, refusal when full, expiry, own records, state.

The store never verifies (the protocol does, before storing), so records here carry a
dummy signature. A hypothesis state machine checks the store against a brute-force
model: a plain dict of (key, author) -> record with the same rules.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from meshd.adapters.dht.record import Record, key_digest
from meshd.adapters.dht.storage import Outcome, OwnRecord, RecordStore, dump_state, parse_state
from meshd.errors import DhtError

NOW = 1_700_000_000.0
SIG = bytes(64)


def author_id(i: int) -> str:
    return f"{i:040x}"


def rec(
    key: str = "k",
    author: int = 1,
    version: int = 1,
    expires_at: float = NOW + 100,
    value: bytes = b"v",
    deleted: bool = False,
) -> Record:
    return Record(key, f"n{author}", author_id(author), version, expires_at, value, SIG, deleted)


def put(store: RecordStore, r: Record, now: float = NOW) -> Outcome:
    return store.put(key_digest(r.key), r, now)


def test_one_record_per_author_newest_wins_ties_keep() -> None:
    s = RecordStore(100, 100)
    assert put(s, rec(version=1)) is Outcome.STORED
    assert put(s, rec(author=2, version=1)) is Outcome.STORED
    assert put(s, rec(version=3, value=b"new")) is Outcome.REPLACED
    assert put(s, rec(version=2, value=b"old")) is Outcome.KEPT
    assert put(s, rec(version=3, value=b"twin")) is Outcome.KEPT
    got = s.get(key_digest("k"), NOW)
    assert [(r.author, r.value) for r in got] == [("n1", b"new"), ("n2", b"v")]  # newest first
    assert len(s) == 2


def test_tombstone_replaces_and_is_returned_until_it_expires() -> None:
    s = RecordStore(100, 100)
    put(s, rec(version=1))
    assert put(s, rec(version=2, value=b"", deleted=True)) is Outcome.REPLACED
    [t] = s.get(key_digest("k"), NOW)
    assert t.deleted  # the protocol hands tombstones on so they win merges elsewhere
    assert s.get(key_digest("k"), NOW + 101) == []
    assert len(s) == 0


def test_expired_records_are_not_stored_and_are_purged() -> None:
    s = RecordStore(100, 100)
    assert put(s, rec(expires_at=NOW)) is Outcome.EXPIRED
    for i in range(10):
        put(s, rec(key=f"k{i}", expires_at=NOW + i + 1))
    assert s.purge(NOW + 5) == 5
    assert len(s) == 5
    assert sorted(s.digests()) == sorted(key_digest(f"k{i}") for i in range(5, 10))


def test_full_store_refuses_new_pairs_and_evicts_nobody() -> None:
    s = RecordStore(3, 100)
    for i in range(3):
        assert put(s, rec(key=f"k{i}", author=i)) is Outcome.STORED
    assert put(s, rec(key="k9", author=9)) is Outcome.FULL
    assert put(s, rec(key="k0", author=9)) is Outcome.FULL  # new author under an old key
    assert s.refused["full"] == 2
    assert len(s) == 3
    assert all(s.get(key_digest(f"k{i}"), NOW) for i in range(3))
    # Replacing a held record needs no room.
    assert put(s, rec(key="k1", author=1, version=2)) is Outcome.REPLACED


def test_full_store_makes_room_by_purging_the_expired_only() -> None:
    s = RecordStore(2, 100)
    put(s, rec(key="a", expires_at=NOW + 1))
    put(s, rec(key="b", author=2, expires_at=NOW + 50))
    assert put(s, rec(key="c", author=3), now=NOW + 2) is Outcome.STORED
    assert s.get(key_digest("a"), NOW + 2) == []
    assert s.get(key_digest("b"), NOW + 2)


def test_per_author_quota() -> None:
    s = RecordStore(100, 2)
    assert put(s, rec(key="a")) is Outcome.STORED
    assert put(s, rec(key="b")) is Outcome.STORED
    assert put(s, rec(key="c")) is Outcome.AUTHOR_FULL
    assert put(s, rec(key="c", author=2)) is Outcome.STORED
    assert s.refused["author_full"] == 1


def test_expiry_heap_stays_bounded_under_replacement() -> None:
    s = RecordStore(10, 10)
    for v in range(1, 5000):
        put(s, rec(version=v, expires_at=NOW + v))
    assert len(s) == 1
    assert len(s._expiry) <= 2 * len(s) + 65
    assert s.purge(NOW + 4998) == 0
    assert s.purge(NOW + 5000) == 1


def test_versions_grow_even_when_the_clock_steps_back() -> None:
    s = RecordStore(10, 10)
    v1 = s.next_version("k", NOW)
    v2 = s.next_version("k", NOW - 3600)
    v3 = s.next_version("k", NOW + 1)
    assert v1 == int(NOW * 1000) and v2 == v1 + 1 and v3 == int((NOW + 1) * 1000)
    assert s.next_version("other", NOW) == int(NOW * 1000)


def test_own_records_are_due_at_the_fraction_of_their_ttl() -> None:
    s = RecordStore(10, 10)
    s.remember_own(rec(key="a", version=5), 100.0, NOW)
    s.remember_own(rec(key="b", version=7), 10.0, NOW)
    assert s.own_next_due(0.5) == NOW + 5
    assert [o.record.key for o in s.own_due(NOW + 5, 0.5)] == ["b"]
    assert {o.record.key for o in s.own_due(NOW + 50, 0.5)} == {"a", "b"}
    # A tombstone is not republished; the version counter remembers it.
    s.remember_own(rec(key="a", version=9, value=b"", deleted=True), 100.0, NOW)
    assert s.own("a") is None
    assert s.next_version("a", 0.0) == 10


def test_state_round_trip_is_json() -> None:
    s = RecordStore(10, 10)
    s.remember_own(rec(key="a", version=5), 100.0, NOW)
    s.next_version("gone", NOW)
    text = dump_state("ab" * 20, s, [("cd" * 20, "127.0.0.1", 7420)])
    assert json.loads(text)["format"] == 1
    state = parse_state(text)
    assert state.node_id == "ab" * 20
    assert state.contacts == [("cd" * 20, "127.0.0.1", 7420)]
    assert state.own == [OwnRecord(key_digest("a"), rec(key="a", version=5), 100.0, NOW)]
    fresh = RecordStore(10, 10)
    fresh.restore(state.own, state.versions)
    assert fresh.next_version("gone", 0.0) == int(NOW * 1000) + 1
    assert fresh.next_version("a", 0.0) == 6
    assert fresh.own("a") is not None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "not json",
        '{"format": 2}',
        '{"format": 1}',
        '{"format": 1, "node_id": "x", "own": [{"record": "!!", "ttl_s": 1, '
        '"published_at": 1}], "versions": {}, "contacts": []}',
        '{"format": 1, "node_id": "x", "own": [{"record": "AAAA", "ttl_s": 1, '
        '"published_at": 1}], "versions": {}, "contacts": []}',
        '{"format": 1, "node_id": "x", "own": [], "versions": {"k": "1"}, "contacts": []}',
        '{"format": 1, "node_id": "x", "own": [], "versions": {}, "contacts": [[1]]}',
        "[" * 100_000,
    ],
)
def test_bad_state_raises_dht_error(text: str) -> None:
    with pytest.raises(DhtError):
        parse_state(text)


class StoreVersusModel(RuleBasedStateMachine):
    """The store agrees with a brute-force dict under puts, time and purges."""

    MAX, PER_AUTHOR = 6, 3

    def __init__(self) -> None:
        super().__init__()
        self.store = RecordStore(self.MAX, self.PER_AUTHOR)
        self.model: dict[tuple[str, str], Record] = {}
        self.now = NOW

    def _live(self) -> dict[tuple[str, str], Record]:
        return {k: r for k, r in self.model.items() if r.expires_at > self.now}

    @rule(
        key=st.sampled_from("abcd"),
        author=st.integers(1, 3),
        version=st.integers(1, 5),
        ttl=st.integers(1, 20),
    )
    def put(self, key: str, author: int, version: int, ttl: int) -> None:
        r = rec(key=key, author=author, version=version, expires_at=self.now + ttl)
        outcome = self.store.put(key_digest(key), r, self.now)
        live = self._live()
        old = live.get((key, r.author_id))
        if old is not None:
            expected = Outcome.REPLACED if version > old.version else Outcome.KEPT
        elif len(live) >= self.MAX:
            expected = Outcome.FULL
        elif sum(1 for (_, a) in live if a == r.author_id) >= self.PER_AUTHOR:
            expected = Outcome.AUTHOR_FULL
        else:
            expected = Outcome.STORED
        assert outcome is expected
        if outcome in (Outcome.STORED, Outcome.REPLACED):
            self.model[(key, r.author_id)] = r
        self.model = self._live()

    @rule(dt=st.integers(1, 8))
    def tick(self, dt: int) -> None:
        self.now += dt

    @rule()
    def purge(self) -> None:
        self.store.purge(self.now)

    @invariant()
    def same_view(self) -> None:
        live = self._live()
        for key in "abcd":
            got = {r.author_id: r for r in self.store.get(key_digest(key), self.now)}
            want = {a: r for (k, a), r in live.items() if k == key}
            assert got == want
        assert len(self.store) == len(live)


StoreVersusModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
TestStoreVersusModel = StoreVersusModel.TestCase
