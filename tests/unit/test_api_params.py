"""Query parameters the API parses itself: refused with a sentence, never a 500."""

from __future__ import annotations

import pytest

from meshd.api.server import _stop_timeout
from meshd.errors import BadRequest


@pytest.mark.parametrize(
    ("text", "want"), [(None, 30.0), ("0", 0.0), ("2.5", 2.5), ("3600", 3600.0)]
)
def test_stop_timeouts_that_are_taken(text: str | None, want: float) -> None:
    assert _stop_timeout(text, 30.0) == want


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "-1", "3601", "1e400", "soon", ""])
def test_stop_timeouts_that_are_refused(text: str) -> None:
    with pytest.raises(BadRequest, match="timeout must be"):
        _stop_timeout(text, 30.0)
