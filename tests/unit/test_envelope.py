"""The envelope under attack: sealing, the replay guard and signed messages.

Every refusal must be an EnvelopeError (ReplayError is one): the daemon drops bad input
and carries on, so no other exception may escape ``Sealer.open`` or ``Verifier.verify``
whatever bytes a peer sends. Time is always passed in; nonces come from seeded sources.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from meshd.core.envelope import (
    SEAL_OVERHEAD,
    ReplayGuard,
    Signed,
    Signer,
    Verifier,
)
from meshd.core.keyring import MeshKey
from meshd.errors import EnvelopeError, ReplayError, UnknownAuthorError
from meshd.identity import pki
from meshd.identity.revocation import Revocation, RevocationList

try:
    from tests.unit import pki_fixtures as fx
except ImportError:  # tests/unit is not a package, so pytest put it on sys.path
    import pki_fixtures as fx  # type: ignore[no-redef]

# A bit flip can make a serial number negative; cryptography warns when it parses one.
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")

NOW = fx.NOW
DAY = fx.DAY
WINDOW = fx.WINDOW_S

crypto_settings = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def framed(
    key: Ed25519PrivateKey,
    cert_der: bytes,
    *,
    kind: bytes = b"bid",
    ts_ms: int = int(NOW * 1000),
    nonce: bytes = bytes(16),
    body: bytes = b"",
    version: int = 1,
) -> bytes:
    """A signed message built from the wire format in the module docstring, by hand."""
    head = b"".join(
        (
            b"MS",
            bytes((version, len(kind))),
            kind,
            struct.pack(">Q", ts_ms),
            nonce,
            struct.pack(">H", len(cert_der)),
            cert_der,
            struct.pack(">I", len(body)),
            body,
        )
    )
    return head + key.sign(b"meshd-msg-v1\x00" + head)


def refused(
    verify: Callable[[bytes, float], object], data: bytes, now: float = NOW
) -> EnvelopeError:
    """Assert that ``verify(data, now)`` refuses with an EnvelopeError; return it."""
    with pytest.raises(EnvelopeError) as caught:
        verify(data, now)
    return caught.value


# -- sealing ---------------------------------------------------------------------------


def test_seal_overhead_is_60_bytes_over_ipv4() -> None:
    assert SEAL_OVERHEAD == 60  # 72 over IPv6: the addressee holds the address
    assert len(fx.sealer().seal(b"", NOW)) == 60


@crypto_settings
@given(payload=st.binary(max_size=8192))
def test_seal_round_trip(payload: bytes) -> None:
    sealed = fx.sealer(1).seal(payload, NOW)
    assert len(sealed) == len(payload) + SEAL_OVERHEAD
    assert payload not in sealed[SEAL_OVERHEAD:] or len(payload) < 8
    assert fx.sealer(2).open(sealed, NOW + 1) == payload


def test_every_single_bit_flip_of_a_datagram_is_refused() -> None:
    sealed = fx.sealer().seal(bytes(range(64)), NOW)
    rx = fx.sealer(2)
    for pos in range(len(sealed)):
        for bit in range(8):
            refused(rx.open, fx.flip(sealed, pos, bit))
    # None of them consumed the nonce, so the flips were refused for integrity alone.
    assert rx.open(sealed, NOW) == bytes(range(64))


@crypto_settings
@given(payload=st.binary(max_size=2048), data=st.data())
def test_a_bit_flip_anywhere_is_refused(payload: bytes, data: st.DataObject) -> None:
    sealed = fx.sealer(1).seal(payload, NOW)
    pos = data.draw(st.integers(0, len(sealed) - 1), label="pos")
    bit = data.draw(st.integers(0, 7), label="bit")
    refused(fx.sealer(2).open, fx.flip(sealed, pos, bit))


def test_every_truncation_of_a_datagram_is_refused() -> None:
    sealed = fx.sealer().seal(b"a payload long enough to matter", NOW)
    rx = fx.sealer(2)
    for n in range(len(sealed)):
        refused(rx.open, sealed[:n])
    assert rx.open(sealed, NOW) == b"a payload long enough to matter"


@crypto_settings
@given(payload=st.binary(max_size=1024), cut=st.integers(1, 2000))
def test_a_truncated_datagram_is_refused(payload: bytes, cut: int) -> None:
    sealed = fx.sealer(1).seal(payload, NOW)
    refused(fx.sealer(2).open, sealed[: -min(cut, len(sealed))])


@crypto_settings
@given(payload=st.binary(max_size=1024), extra=st.binary(min_size=1, max_size=64))
def test_an_extended_datagram_is_refused(payload: bytes, extra: bytes) -> None:
    refused(fx.sealer(2).open, fx.sealer(1).seal(payload, NOW) + extra)


def test_a_datagram_sealed_with_another_secret_is_refused() -> None:
    sealed = fx.sealer(1, key_seed=7).seal(b"hello", NOW)
    err = refused(fx.sealer(2, key_seed=0).open, sealed)
    assert not isinstance(err, ReplayError)


def test_the_mesh_secret_must_be_32_bytes() -> None:
    for size in (0, 16, 31, 33, 64):
        with pytest.raises(EnvelopeError):
            MeshKey(0, bytes(size))


def test_a_replayed_datagram_is_refused() -> None:
    sealed = fx.sealer(1).seal(b"probe", NOW)
    rx = fx.sealer(2)
    assert rx.open(sealed, NOW) == b"probe"
    with pytest.raises(ReplayError):
        rx.open(sealed, NOW + 0.5)
    with pytest.raises(ReplayError):
        rx.open(sealed, NOW + 0.5)


@crypto_settings
@given(data=st.data())
def test_a_reordered_batch_opens_exactly_once(data: st.DataObject) -> None:
    ages_ms = data.draw(st.lists(st.integers(0, 29_999), min_size=1, max_size=40), label="ages")
    tx, rx = fx.sealer(1), fx.sealer(2, capacity=64)
    batch = [tx.seal(i.to_bytes(2, "big"), NOW - age / 1000) for i, age in enumerate(ages_ms)]
    order = data.draw(st.permutations(range(len(batch))), label="order")
    opened = [rx.open(batch[i], NOW) for i in order]
    assert opened == [i.to_bytes(2, "big") for i in order]
    for datagram in batch:
        with pytest.raises(ReplayError):
            rx.open(datagram, NOW)


@pytest.mark.parametrize(
    ("sealed_at", "ok"),
    [
        (NOW, True),
        (NOW - WINDOW, True),  # the window's edges are inside it
        (NOW + WINDOW, True),
        (NOW - WINDOW - 0.001, False),
        (NOW - WINDOW - 1, False),
        (NOW - DAY, False),
        (NOW + WINDOW + 0.002, False),
        (NOW + DAY, False),
        (0.0, False),
    ],
)
def test_stale_and_far_future_datagrams_are_refused(sealed_at: float, ok: bool) -> None:
    sealed = fx.sealer(1).seal(b"x", sealed_at)
    rx = fx.sealer(2)
    if ok:
        assert rx.open(sealed, NOW) == b"x"
    else:
        with pytest.raises(ReplayError):
            rx.open(sealed, NOW)


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=512) | st.binary(max_size=512).map(lambda b: b"\x02" + b))
def test_garbage_never_opens_and_never_crashes(garbage: bytes) -> None:
    refused(fx.sealer().open, garbage)


def test_the_receiver_memory_stays_within_capacity() -> None:
    tx, rx = fx.sealer(1), fx.sealer(2, capacity=16)
    guard = rx._guard
    for i in range(200):
        rx.open(tx.seal(b"", NOW + i / 100), NOW + i / 100)
        assert len(guard) <= 16


# -- the replay guard --------------------------------------------------------------------


@pytest.mark.parametrize(("window", "capacity"), [(0, 1), (-1, 1), (1, 0), (1, -5)])
def test_replay_guard_needs_a_positive_window_and_capacity(window: float, capacity: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        ReplayGuard(window, capacity)


def test_after_eviction_nonces_at_or_below_the_floor_are_refused() -> None:
    guard = ReplayGuard(30, 3)
    for ts in (1.0, 2.0, 3.0, 4.0, 5.0):
        guard.check("s", f"n{ts}".encode(), ts, 5.0)
        assert len(guard) <= 3
    # n1 and n2 were forgotten to make room: never seen again, however fresh they look.
    for ts in (1.0, 2.0):
        with pytest.raises(ReplayError, match="older than the replay memory"):
            guard.check("s", f"n{ts}".encode(), ts, 5.0)
        with pytest.raises(ReplayError):
            guard.check("s", b"unseen but old", ts, 5.0)
    guard.check("s", b"newer than the floor", 2.5, 5.0)
    with pytest.raises(ReplayError, match="already seen"):
        guard.check("s", b"n5.0", 5.0, 5.0)


def test_a_wall_clock_step_back_does_not_reopen_forgotten_nonces() -> None:
    # Regression: nonces forgotten because they left the window used not to raise the
    # floor, so after the clock stepped back they were accepted a second time.
    guard = ReplayGuard(30, 100)
    guard.check("s", b"n", 1000.0, 1000.0)
    guard.check("s", b"x", 1040.0, 1040.0)  # n leaves the window and the memory
    with pytest.raises(ReplayError):
        guard.check("s", b"n", 1000.0, 1020.0)  # the clock stepped back 20 s
    guard.check("s", b"y", 1015.0, 1020.0)  # while fresh messages still pass


class ReplayGuardModel(RuleBasedStateMachine):
    """ReplayGuard against a brute-force reference: every (nonce, ts) ever accepted.

    Safety: no nonce is accepted twice, nothing outside the window is accepted, nothing
    at or below the floor is accepted. Completeness: every never-accepted in-window
    nonce above the floor is accepted. The floor itself is bounded by what bounded
    memory forces: the newest timestamp that left the window, or the one that had to
    go to keep ``capacity`` nonces, never more; and it never goes down.
    """

    def __init__(self) -> None:
        super().__init__()
        self.guard = ReplayGuard(1, 1)
        self.window = 1
        self.capacity = 1
        self.now = 0
        self.offered: list[tuple[bytes, int]] = []
        self.accepted: dict[bytes, int] = {}
        self.horizon = -math.inf  # newest (now - window) at which the guard accepted
        self.floor = -math.inf

    @initialize(window=st.integers(1, 20), capacity=st.integers(1, 6))
    def start(self, window: int, capacity: int) -> None:
        self.guard = ReplayGuard(window, capacity)
        self.window, self.capacity = window, capacity
        self.now = 1000

    @rule(dt=st.integers(0, 12))
    def time_passes(self, dt: int) -> None:
        self.now += dt

    @rule(dt=st.integers(1, 12))
    def clock_steps_back(self, dt: int) -> None:
        self.now -= dt

    @rule(offset=st.integers(-25, 25))
    def new_message(self, offset: int) -> None:
        nonce = len(self.offered).to_bytes(4, "big")
        self.offered.append((nonce, self.now + offset))
        self._offer(nonce, self.now + offset)

    @precondition(lambda self: bool(self.offered))
    @rule(data=st.data())
    def old_message_again(self, data: st.DataObject) -> None:
        nonce, ts = data.draw(st.sampled_from(self.offered))
        self._offer(nonce, ts)

    def _offer(self, nonce: bytes, ts: int) -> None:
        floor = self.guard.floor("s")
        try:
            self.guard.check("s", nonce, float(ts), float(self.now))
        except ReplayError:
            ok = False
        else:
            ok = True
        in_window = self.now - self.window <= ts <= self.now + self.window
        if nonce in self.accepted:
            assert not ok, f"replay of {nonce.hex()} accepted"
        elif not in_window:
            assert not ok, f"ts={ts} outside the window accepted at now={self.now}"
        elif ts <= floor:
            assert not ok, f"ts={ts} at or below the floor {floor} accepted"
        else:
            assert ok, f"fresh ts={ts} above the floor {floor} refused at now={self.now}"
        if ok:
            self.accepted[nonce] = ts
            self.horizon = max(self.horizon, self.now - self.window)

    def _floor_bound(self) -> float:
        gone = [ts for ts in self.accepted.values() if ts < self.horizon]
        kept = sorted(ts for ts in self.accepted.values() if ts >= self.horizon)
        if len(kept) > self.capacity:
            gone.append(kept[len(kept) - self.capacity - 1])
        return max(gone, default=-math.inf)

    @invariant()
    def memory_is_bounded(self) -> None:
        assert len(self.guard) <= self.capacity

    @invariant()
    def floor_is_forced_and_monotonic(self) -> None:
        floor = self.guard.floor("s")
        assert floor >= self.floor
        self.floor = floor
        assert floor == -math.inf or floor in self.accepted.values()
        assert floor <= self._floor_bound()


ReplayGuardModel.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None
)
TestReplayGuardModel = ReplayGuardModel.TestCase


# -- signing -----------------------------------------------------------------------------


def test_sign_verify_round_trip() -> None:
    alpha = fx.mesh()["alpha"]
    msg = fx.signer(alpha, seed=5).sign("bid", b"cpu=8 mem=32", NOW)
    got = fx.verifier().verify(msg, NOW + 1)
    assert got == Signed(
        author="alpha",
        node_id=pki.node_id_of(alpha.key.public_key()),
        role="node",
        serial=format(alpha.cert.serial_number, "x"),
        kind="bid",
        ts=NOW,
        nonce=fx.seeded_bytes(5).randbytes(16),
        body=b"cpu=8 mem=32",
        cert_der=alpha.der,
    )


def test_the_wire_format_is_the_documented_one() -> None:
    alpha = fx.mesh()["alpha"]
    body = b"x" * 100
    msg = fx.signer(alpha, seed=5).sign("vote", body, NOW)
    nonce = fx.seeded_bytes(5).randbytes(16)
    # Ed25519 is deterministic, so building it by hand must give the same bytes.
    assert msg == framed(alpha.key, alpha.der, kind=b"vote", nonce=nonce, body=body)
    assert len(msg) - len(body) == 2 + 1 + 1 + 4 + 8 + 16 + 2 + len(alpha.der) + 4 + 64


@pytest.mark.parametrize(
    ("who", "role"), [("alpha", "node"), ("ops", "admin"), ("acme-ci", "tenant:acme")]
)
def test_the_author_role_comes_from_the_certificate(who: str, role: str) -> None:
    msg = fx.signer(fx.mesh()[who]).sign("hello", b"", NOW)
    got = fx.verifier().verify(msg, NOW)
    assert (got.author, got.role) == (who, role)


def test_timestamps_keep_millisecond_precision() -> None:
    alpha = fx.mesh()["alpha"]
    v = fx.verifier()
    for i, now in enumerate((NOW + 0.123, NOW + 0.5, NOW + 0.9994)):
        got = v.verify(fx.signer(alpha, seed=i).sign("t", b"", now), now)
        assert got.ts == int(now * 1000) / 1000
        assert abs(got.ts - now) < 0.001


kinds = st.text(min_size=1, max_size=255).filter(lambda k: len(k.encode()) <= 255)


@crypto_settings
@given(kind=kinds, body=st.binary(max_size=4096))
def test_any_kind_and_body_round_trip(kind: str, body: bytes) -> None:
    msg = fx.signer(fx.mesh()["beta"]).sign(kind, body, NOW)
    got = fx.verifier(guarded=False).verify(msg, NOW)
    assert (got.kind, got.body, got.author) == (kind, body, "beta")


@pytest.mark.parametrize("kind", ["", "x" * 256, "é" * 128, "\U0001f600" * 64])
def test_a_kind_must_be_1_to_255_bytes(kind: str) -> None:
    with pytest.raises(ValueError, match=r"1\.\.255 bytes"):
        fx.signer(fx.mesh()["alpha"]).sign(kind, b"", NOW)


def test_a_kind_of_exactly_255_bytes_is_fine() -> None:
    kind = "é" * 127 + "x"
    msg = fx.signer(fx.mesh()["alpha"]).sign(kind, b"", NOW)
    assert fx.verifier().verify(msg, NOW).kind == kind


def test_an_empty_kind_is_refused_even_when_signed() -> None:
    # Regression: the parser accepted a zero-length kind the Signer can't produce.
    alpha = fx.mesh()["alpha"]
    refused(fx.verifier().verify, framed(alpha.key, alpha.der, kind=b""))


def test_every_single_bit_flip_of_a_signed_message_is_refused() -> None:
    alpha = fx.mesh()["alpha"]
    msg = fx.signer(alpha).sign("placement", b"vm-17 -> alpha", NOW)
    v = fx.verifier(guarded=False)  # so every refusal is about integrity, not replay
    for pos in range(len(msg)):
        for bit in range(8):
            refused(v.verify, fx.flip(msg, pos, bit))
    assert v.verify(msg, NOW).body == b"vm-17 -> alpha"


def test_every_truncation_deletion_and_insertion_is_refused() -> None:
    alpha = fx.mesh()["alpha"]
    msg = fx.signer(alpha).sign("bid", b"0123456789", NOW)
    v = fx.verifier(guarded=False)
    for i in range(len(msg)):
        refused(v.verify, msg[:i])
        refused(v.verify, msg[:i] + msg[i + 1 :])
        refused(v.verify, msg[:i] + b"\x00" + msg[i:])
    refused(v.verify, msg + b"\x00")


@crypto_settings
@given(data=st.data(), extra=st.binary(min_size=1, max_size=300))
def test_an_insertion_anywhere_is_refused(data: st.DataObject, extra: bytes) -> None:
    msg = fx.signer(fx.mesh()["alpha"]).sign("bid", b"body", NOW)
    at = data.draw(st.integers(0, len(msg)), label="at")
    refused(fx.verifier(guarded=False).verify, msg[:at] + extra + msg[at:])


def test_a_replay_is_refused_but_fresh_false_accepts_it() -> None:
    alpha = fx.mesh()["alpha"]
    v = fx.verifier()
    msg = fx.signer(alpha).sign("vote", b"yes", NOW)
    assert v.verify(msg, NOW).body == b"yes"
    with pytest.raises(ReplayError):
        v.verify(msg, NOW + 1)
    assert v.verify(msg, NOW + 1, fresh=False).body == b"yes"


def test_an_old_record_verifies_only_with_fresh_false() -> None:
    alpha = fx.mesh()["alpha"]
    v = fx.verifier()
    record = fx.signer(alpha).sign("service", b"web=10.0.0.7", NOW - 3600)
    with pytest.raises(ReplayError):
        v.verify(record, NOW)
    got = v.verify(record, NOW, fresh=False)
    assert (got.ts, got.body) == (NOW - 3600, b"web=10.0.0.7")
    assert v.verify(record, NOW, fresh=False) == got  # and again: records are relayed


def test_replays_are_tracked_per_author() -> None:
    m = fx.mesh()
    v = fx.verifier()
    # Same seed, so the same 16-byte nonce, from two authors: both are fresh.
    v.verify(fx.signer(m["alpha"], seed=9).sign("bid", b"", NOW), NOW)
    v.verify(fx.signer(m["beta"], seed=9).sign("bid", b"", NOW), NOW)


@pytest.mark.parametrize(
    "other", [fx.twin_mesh, fx.foreign_mesh], ids=["same-domain", "other-domain"]
)
def test_a_member_of_another_mesh_is_refused(other: Callable[[], fx.Mesh]) -> None:
    outsider = other()["alpha"]
    msg = fx.signer(outsider).sign("bid", b"", NOW)
    err = refused(fx.verifier().verify, msg)
    assert "certificate refused" in str(err)
    # ... while its own mesh accepts it, so the refusal is about the CA.
    assert fx.verifier(other()).verify(msg, NOW).author == "alpha"


def test_a_certificate_with_someone_elses_key_is_refused() -> None:
    m = fx.mesh()
    swapped = Signer(m["beta"].key, m["alpha"].cert)
    err = refused(fx.verifier().verify, swapped.sign("bid", b"", NOW))
    assert "does not verify" in str(err)


def test_a_message_signed_by_the_ca_key_with_a_node_cert_is_refused() -> None:
    m = fx.mesh()
    refused(fx.verifier().verify, Signer(m.ca_key, m["alpha"].cert).sign("bid", b"", NOW))


def test_an_expired_certificate_is_refused_cold_and_warm() -> None:
    short = fx.mesh().issue("gamma", days=1)
    later = NOW + 2 * DAY
    refused(fx.verifier().verify, fx.signer(short).sign("bid", b"", later), later)
    v = fx.verifier()
    v.verify(fx.signer(short, 1).sign("bid", b"", NOW), NOW)  # now in the cache
    err = refused(v.verify, fx.signer(short, 2).sign("bid", b"", later), later)
    assert "expired" in str(err)


def test_a_not_yet_valid_certificate_is_refused() -> None:
    early = fx.mesh().issue("delta", now=NOW + DAY)
    refused(fx.verifier().verify, fx.signer(early).sign("bid", b"", NOW))


def test_a_revoked_author_is_refused_even_when_cached() -> None:
    m = fx.mesh()
    alpha = m["alpha"]
    revoked = RevocationList()
    v = fx.verifier(revocations=revoked)
    v.verify(fx.signer(alpha, 1).sign("bid", b"", NOW), NOW)
    info = alpha.info
    revoked.add(Revocation(info.serial, info.name, "", NOW, "decommissioned"))
    err = refused(v.verify, fx.signer(alpha, 2).sign("bid", b"", NOW))
    assert "removed" in str(err)
    refused(v.verify, fx.signer(alpha, 3).sign("record", b"", NOW), NOW)
    with pytest.raises(EnvelopeError):
        v.verify(fx.signer(alpha, 4).sign("record", b"", NOW), NOW, fresh=False)
    assert v.verify(fx.signer(m["beta"]).sign("bid", b"", NOW), NOW).author == "beta"


def test_a_revoked_key_stays_dead_under_a_second_certificate() -> None:
    m = fx.mesh()
    key = pki.new_key()
    first, second = m.issue("epsilon", key=key), m.issue("epsilon", key=key)
    assert first.info.serial != second.info.serial
    assert first.info.node_id == second.info.node_id
    revoked = RevocationList()
    v = fx.verifier(revocations=revoked)
    v.verify(fx.signer(second, 1).sign("bid", b"", NOW), NOW)
    revoked.add(Revocation(first.info.serial, "epsilon", first.info.node_id, NOW, "stolen"))
    refused(v.verify, fx.signer(second, 2).sign("bid", b"", NOW))


def test_the_ca_certificate_cannot_author_messages() -> None:
    m = fx.mesh()
    refused(fx.verifier().verify, Signer(m.ca_key, m.ca_cert).sign("bid", b"", NOW))


def test_the_certificate_cache_is_bounded_and_stays_correct() -> None:
    m = fx.mesh()
    v = fx.verifier(cache_size=2)
    authors = ["alpha", "beta", "ops", "acme-ci"]
    for i in range(3 * len(authors)):
        who = authors[i % len(authors)]
        assert v.verify(fx.signer(m[who], i).sign("bid", b"", NOW), NOW).author == who
        assert len(v._cache) <= 2


# -- never crash on garbage --------------------------------------------------------------


def _never_crashes(v: Verifier, data: bytes, expect: Signed | None = None) -> None:
    """``verify`` must refuse with EnvelopeError, or return exactly ``expect``."""
    try:
        got = v.verify(data, NOW)
    except EnvelopeError:
        return
    assert expect is not None, "garbage verified"
    assert got == expect


@settings(max_examples=400, deadline=None)
@given(
    garbage=st.binary(max_size=1024)
    | st.binary(max_size=1024).map(lambda b: b"MS\x01" + b)
    | st.tuples(st.integers(0, 255), st.binary(max_size=600)).map(
        lambda t: b"MS\x01" + bytes((t[0],)) + t[1]
    )
)
def test_garbage_never_verifies_and_never_crashes(garbage: bytes) -> None:
    _never_crashes(fx.verifier(), garbage)


edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6)


def _apply(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in changes:
        out[pos % len(out)] = value
    return bytes(out)


@crypto_settings
@given(changes=edits, cut=st.none() | st.integers(0, 10_000))
def test_mutated_messages_never_crash(changes: list[tuple[int, int]], cut: int | None) -> None:
    alpha = fx.mesh()["alpha"]
    msg = fx.signer(alpha).sign("bid", b"some body", NOW)
    v = fx.verifier(guarded=False)
    expect = v.verify(msg, NOW)
    mutated = _apply(msg, changes)
    if cut is not None:
        mutated = mutated[: cut % (len(mutated) + 1)]
    _never_crashes(v, mutated, expect if mutated == msg else None)


@crypto_settings
@given(changes=edits, cut=st.integers(0, 10_000))
def test_a_well_signed_message_around_a_mangled_certificate_never_crashes(
    changes: list[tuple[int, int]], cut: int
) -> None:
    # The signature is good, so verification has to get as far as parsing the
    # certificate: the part of the message that cryptography parses lazily.
    alpha = fx.mesh()["alpha"]
    der = _apply(alpha.der, changes)
    der = der[: max(1, len(der) - cut % 8)]
    v = fx.verifier(guarded=False)
    expect = v.verify(framed(alpha.key, alpha.der), NOW) if der == alpha.der else None
    _never_crashes(v, framed(alpha.key, der), expect)


def test_every_single_bit_flip_of_the_embedded_certificate_is_refused() -> None:
    # Like the test above, but exhaustive and with the message signature always good.
    alpha = fx.mesh()["alpha"]
    v = fx.verifier(guarded=False)
    for pos in range(len(alpha.der)):
        for bit in range(8):
            refused(v.verify, framed(alpha.key, fx.flip(alpha.der, pos, bit)))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_datagram_mutated_in_any_way_never_crashes(data: st.DataObject) -> None:
    payload = data.draw(st.binary(max_size=256), label="payload")
    sealed = fx.sealer(1).seal(payload, NOW)
    changes = data.draw(edits, label="changes")
    mutated = _apply(sealed, changes)
    assume(mutated != sealed)
    refused(fx.sealer(2).open, mutated)


def test_a_verifier_without_a_guard_checks_no_freshness() -> None:
    alpha = fx.mesh()["alpha"]
    v = Verifier(fx.mesh().ca_cert, RevocationList(), None)
    msg = fx.signer(alpha).sign("bid", b"", NOW - DAY)
    assert v.verify(msg, NOW).ts == NOW - DAY
    assert v.verify(msg, NOW).ts == NOW - DAY


# -- the compact form (author by node id) ----------------------------------------------


def test_compact_form_needs_the_author_known_first() -> None:
    alpha = fx.mesh()["alpha"]
    v = fx.verifier()
    msg = fx.signer(alpha, 21).sign("swim", b"ping", NOW, compact=True)
    with pytest.raises(UnknownAuthorError) as caught:
        v.verify(msg, NOW)
    assert caught.value.node_id == alpha.info.node_id
    assert not v.knows(alpha.info.node_id)
    assert v.learn(alpha.der, NOW).name == "alpha"
    got = v.verify(msg, NOW)
    assert (got.author, got.body, got.cert_der) == ("alpha", b"ping", b"")


def test_a_full_form_message_teaches_the_author() -> None:
    alpha = fx.mesh()["alpha"]
    v = fx.verifier()
    v.verify(fx.signer(alpha, 22).sign("swim", b"hello", NOW), NOW)
    assert (
        v.verify(fx.signer(alpha, 23).sign("swim", b"x", NOW, compact=True), NOW).author == "alpha"
    )


def test_compact_form_is_small() -> None:
    alpha = fx.mesh()["alpha"]
    full = fx.signer(alpha, 24).sign("swim", b"", NOW)
    compact = fx.signer(alpha, 24).sign("swim", b"", NOW, compact=True)
    assert len(full) - len(compact) == len(alpha.der) - 20
    assert len(compact) < 130


def test_compact_form_refuses_revoked_swapped_and_flipped() -> None:
    m = fx.mesh()
    alpha, beta = m["alpha"], m["beta"]
    revoked = RevocationList()
    v = fx.verifier(revocations=revoked)
    v.learn(alpha.der, NOW)
    v.learn(beta.der, NOW)
    msg = fx.signer(alpha, 25).sign("swim", b"claim", NOW, compact=True)
    # beta's key signing a message that names alpha
    forged = bytearray(fx.signer(beta, 25).sign("swim", b"claim", NOW, compact=True))
    forged[4 + 4 + 8 + 16 + 2 : 4 + 4 + 8 + 16 + 2 + 20] = bytes.fromhex(alpha.info.node_id)
    refused(v.verify, bytes(forged))
    unguarded = fx.verifier(guarded=False)
    unguarded.learn(alpha.der, NOW)
    unguarded.learn(beta.der, NOW)
    assert unguarded.verify(msg, NOW).author == "alpha"
    for i in range(len(msg) * 8):
        flipped = bytearray(msg)
        flipped[i // 8] ^= 1 << (i % 8)
        refused(unguarded.verify, bytes(flipped))
    revoked.add(Revocation(alpha.info.serial, "alpha", alpha.info.node_id, NOW, "test"))
    refused(v.verify, msg)
