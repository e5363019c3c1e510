"""Lifeguard local health: a saturating score that stretches timeouts."""

from __future__ import annotations

import pytest

from meshd.core.membership.awareness import Awareness


def test_score_saturates_at_both_ends() -> None:
    a = Awareness(8)
    assert a.apply(-1) == 0
    assert a.apply(3) == 3
    assert a.apply(100) == 7
    assert a.apply(-2) == 5
    assert a.apply(-100) == 0


@pytest.mark.parametrize(("score", "want"), [(0, 0.5), (1, 1.0), (3, 2.0), (7, 4.0)])
def test_scale_multiplies_by_score_plus_one(score: int, want: float) -> None:
    a = Awareness(8)
    a.apply(score)
    assert a.scale(0.5) == pytest.approx(want)


def test_max_of_one_means_never_scaled() -> None:
    a = Awareness(1)
    a.apply(5)
    assert a.scale(0.5) == 0.5


def test_max_must_be_positive() -> None:
    with pytest.raises(ValueError, match="awareness_max"):
        Awareness(0)
