"""Structured logging: stdlib logging as logfmt lines or JSON lines on stderr.

Modules log with ``logger = logging.getLogger(__name__)`` and lazy ``%`` arguments,
writing fields as ``key=%s`` inside the message::

    logger.warning("seed unreachable seed=%s error=%s", seed, exc)

The formatters read the fields back out of the *format string*, before the arguments
are substituted: each space-separated word of it that reads ``key=...`` is a field whose
value is that word rendered with its own arguments, whatever spaces, quotes or ``=``
they hold; the other words are the event (``msg``). So the line above becomes

* text (logfmt, what go-logfmt, Loki and ``hl`` parse field by field)::

    ts=2026-12-07T06:20:01.123Z level=warning logger=meshd.identity.enrolment
    msg="seed unreachable" seed=10.0.0.1:7420 error="connection refused: [Errno 111]"

  a value is quoted (with Go/JSON escapes) only when it must be: empty, or holding a
  space, ``=``, a quote, a backslash or a control character; a traceback is one quoted
  ``exc`` field, never lines of its own;
* JSON: one object per line with the same keys, every field top level.

A field named like one of the line's own keys (``ts``, ``level``, ``logger``, ``msg``,
``exc``) is written ``field_<key>``; a format string the arguments don't fit is logged
whole as ``msg``, its arguments as ``args`` (the stdlib would print a traceback).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_OWN = frozenset({"ts", "level", "logger", "msg", "exc"})
_FIELD = re.compile(r"([A-Za-z_][A-Za-z0-9_.\-]*)=(.*)\Z", re.DOTALL)
# A %-placeholder (printf style, as logging uses); %% is a literal percent.
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?[a-zA-Z%]")
_BARE = re.compile(r'[^\s="\\\x00-\x1f\x7f]+\Z')


def fields(record: logging.LogRecord) -> tuple[str, list[tuple[str, str]]]:
    """The record's event text and its ``key=value`` fields, in order."""
    fmt = record.msg if isinstance(record.msg, str) else str(record.msg)
    args = record.args
    if isinstance(args, Mapping) or (args and not isinstance(args, tuple)):
        return _whole(record)
    pending = list(args or ())
    words: list[str] = []
    out: list[tuple[str, str]] = []
    try:
        for word in fmt.split(" "):
            wanted = sum(1 for p in _PLACEHOLDER.findall(word) if p != "%%")
            if wanted > len(pending):
                raise TypeError("not enough arguments for format string")
            mine, pending = pending[:wanted], pending[wanted:]
            text = word % tuple(mine) if wanted or "%" in word else word
            m = _FIELD.match(word)
            if m:
                key = m.group(1)
                out.append((f"field_{key}" if key in _OWN else key, text[len(key) + 1 :]))
            elif text:
                words.append(text)
        if pending:
            raise TypeError("not all arguments converted during string formatting")
    except (TypeError, ValueError, KeyError):
        return _whole(record)
    return " ".join(words), out


def _whole(record: logging.LogRecord) -> tuple[str, list[tuple[str, str]]]:
    try:
        return record.getMessage(), []
    except (TypeError, ValueError, KeyError):
        return str(record.msg), [("args", repr(record.args))]


def _quote(value: str) -> str:
    return value if _BARE.match(value) else json.dumps(value, ensure_ascii=False)


def _timestamp(record: logging.LogRecord) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{ts}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """logfmt: ``key=value`` pairs, quoted where logfmt needs it."""

    def format(self, record: logging.LogRecord) -> str:
        msg, extra = fields(record)
        parts = [
            f"ts={_timestamp(record)}",
            f"level={record.levelname.lower()}",
            f"logger={_quote(record.name)}",
            f"msg={_quote(msg)}",
        ]
        parts += [f"{key}={_quote(value)}" for key, value in extra]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields are top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        msg, extra = fields(record)
        doc: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": msg,
        }
        for key, value in extra:
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def setup(level: str, fmt: str) -> None:
    """Configure the root logger once for the daemon or a CLI command."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.ERROR))
    # aiohttp's access log would duplicate our request metrics at info level.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # qemu.qmp logs a failed connect at ERROR although the qemu driver handles it.
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
