"""Suspicion timeout math (Lifeguard §4.2): bounds, shrinking, confirmations."""

from __future__ import annotations

import math

import pytest

from meshd.core.membership import suspicion
from meshd.core.membership.suspicion import Suspicion


@pytest.mark.parametrize(
    ("n", "interval", "mult", "max_mult", "lo", "hi"),
    [
        (1, 0.5, 4.0, 6.0, 2.0, 3.0),  # N is floored at 10: log10(10) = 1
        (5, 0.5, 4.0, 6.0, 2.0, 3.0),
        (10, 0.5, 4.0, 6.0, 2.0, 3.0),
        (100, 0.5, 4.0, 6.0, 4.0, 6.0),
        (1000, 1.0, 4.0, 6.0, 12.0, 18.0),
        (256, 0.5, 2.5, 6.0, 2.5 * math.log10(256) * 0.5, 6.0 * math.log10(256) * 0.5),
    ],
)
def test_bounds(
    n: int, interval: float, mult: float, max_mult: float, lo: float, hi: float
) -> None:
    assert suspicion.bounds(n, interval, mult, max_mult) == pytest.approx((lo, hi))


@pytest.mark.parametrize(
    ("confirmations", "k", "want"),
    [
        (0, 3, 8.0),  # no confirmation yet: the maximum
        (1, 3, 5.0),  # 8 - 6 * log(2)/log(4)
        (2, 3, 8.0 - 6.0 * math.log(3) / math.log(4)),
        (3, 3, 2.0),  # K confirmations: the minimum
        (7, 3, 2.0),  # never below the minimum
        (0, 0, 2.0),  # nobody could confirm: the minimum at once
        (1, 1, 2.0),
    ],
)
def test_timeout_shrinks_logarithmically(confirmations: int, k: int, want: float) -> None:
    assert suspicion.timeout(confirmations, k, 2.0, 8.0) == pytest.approx(want)


@pytest.mark.parametrize(
    ("k_cfg", "n", "want"), [(3, 1, 0), (3, 2, 0), (3, 4, 2), (3, 5, 3), (3, 100, 3)]
)
def test_confirmations_wanted_are_capped_by_who_could_confirm(
    k_cfg: int, n: int, want: int
) -> None:
    assert suspicion.wanted(k_cfg, n) == want


def test_timer_counts_each_originator_once_and_never_the_first() -> None:
    s = Suspicion("a", inc=4, k=3, lo=2.0, hi=8.0, start=100.0)
    assert s.deadline == pytest.approx(108.0)
    assert not s.confirm("a")  # our own suspicion gossiped back is no evidence
    assert s.confirm("b")
    assert s.deadline == pytest.approx(105.0)
    assert not s.confirm("b")
    assert s.confirm("c") and s.confirm("d")
    assert s.deadline == pytest.approx(102.0)
    assert not s.confirm("e")  # enough: the minimum is reached
    assert s.confirmations == 3


def test_newer_incarnation_restarts_the_evidence_but_not_the_clock() -> None:
    s = Suspicion("a", inc=4, k=3, lo=2.0, hi=8.0, start=100.0)
    s.confirm("b")
    s.restart("c", 5)
    assert (s.inc, s.confirmations) == (5, 0)
    assert s.deadline == pytest.approx(108.0)
    assert not s.confirm("c")
    assert s.confirm("b")
