"""Sizes, durations and addresses as operators type them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.errors import ConfigError
from meshd.units import format_hostport, parse_duration, parse_hostport, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("512", 512),
        ("1KiB", 1024),
        ("2GiB", 2 * 1024**3),
        ("2gib", 2 * 1024**3),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("2G", 2 * 1000**3),
        ("2GB", 2 * 1000**3),
        ("512Mi", 512 * 1024**2),
        (" 3 TiB ", 3 * 1024**4),
        (4096, 4096),
    ],
)
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "GiB", "2XB", "-1GiB", "2 GiB extra", "1e3"])
def test_bad_sizes(bad: str) -> None:
    with pytest.raises(ConfigError, match="size"):
        parse_size(bad)


def test_bool_is_not_a_size() -> None:
    with pytest.raises(ConfigError):
        parse_size(True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("5", 5.0),
        (1.5, 1.5),
    ],
)
def test_durations(text: str | float, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["", "soon", "1x", "h", "1h foo", "-5s"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.0.0.1:7420", ("10.0.0.1", 7420)), ("[::1]:80", ("::1", 80)), ("host:0", ("host", 0))],
)
def test_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("bad", ["10.0.0.1", ":7420", "h:port", "h:70000", ""])
def test_bad_hostport(bad: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_hostport(bad)


@given(st.sampled_from(["10.1.2.3", "::1", "fe80::2", "node.lab"]), st.integers(0, 65535))
def test_hostport_round_trip(host: str, port: int) -> None:
    assert parse_hostport(format_hostport(host, port)) == (host, port)
