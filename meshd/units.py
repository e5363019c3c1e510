"""Parsing and printing of the sizes and durations operators type (``2GiB``, ``250ms``)."""

from __future__ import annotations

import re

from meshd.errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DUR_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(text: str | int | float, what: str = "size") -> int:
    """``"2GiB"`` → 2147483648. Plain numbers are bytes; ``G``/``GB`` are decimal."""
    if isinstance(text, bool):
        raise ConfigError(f"{what} must be a size such as 2GiB, got {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ConfigError(f"{what} must not be negative")
        return int(text)
    m = _SIZE_RE.match(text)
    if not m or (m.group(2) or "").lower() not in _SIZE_UNITS:
        raise ConfigError(f"{what} must be a size such as 512MiB or 2GiB, got {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])


def parse_duration(text: str | int | float, what: str = "duration") -> float:
    """``"1h30m"`` → 5400.0 seconds; plain numbers are seconds."""
    if isinstance(text, bool):
        raise ConfigError(f"{what} must be a duration such as 30s, got {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ConfigError(f"{what} must not be negative")
        return float(text)
    s = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return float(s)
    parts = _DUR_RE.findall(s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise ConfigError(f"{what} must be a duration such as 250ms, 30s, 1h, got {text!r}")
    return sum(float(n) * _DUR_UNITS[u] for n, u in parts)


def format_size(n: int) -> str:
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            return f"{n / factor:.1f}{unit}"
    return f"{n}B"


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    """``"10.0.0.1:7420"`` or ``"[::1]:7420"`` → (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} must be HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
