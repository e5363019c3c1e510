"""Log lines that real parsers read field by field (issue 14: "logs look like logfmt but a
logfmt parser splits them wrongly; JSON logs bury every field in msg").

The text format is checked with logfmtkv in strict mode (go-logfmt's grammar), JSON
with the stdlib; every format string meshd itself logs with is checked against
arbitrary argument text (spaces, quotes, ``=``, newlines, non-ASCII).
"""

from __future__ import annotations

import ast
import json
import logging
import sys
from pathlib import Path

import logfmtkv
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd import logs
from meshd.logs import JsonFormatter, TextFormatter, fields

ROOT = Path(__file__).resolve().parents[2]


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("meshd.test", logging.WARNING, __file__, 1, msg, args, info)


def _both(record: logging.LogRecord) -> tuple[dict[str, object], dict[str, object]]:
    text = TextFormatter().format(record)
    assert "\n" not in text, text
    return logfmtkv.parse(text, strict=True), json.loads(JsonFormatter().format(record))


def test_a_value_with_spaces_quotes_and_equals_is_one_field_in_both_formats() -> None:
    rec = _record(
        "seed unreachable seed=%s error=%s", "10.0.0.1:7420", 'refused: "x=y" [Errno 111]'
    )
    text, doc = _both(rec)
    for parsed in (text, doc):
        assert parsed["msg"] == "seed unreachable"
        assert parsed["seed"] == "10.0.0.1:7420"
        assert parsed["error"] == 'refused: "x=y" [Errno 111]'
        assert parsed["level"] == "warning" and parsed["logger"] == "meshd.test"


def test_a_traceback_is_one_escaped_field() -> None:
    text, doc = _both(_record("api handler failed path=%s", "/v1/x", exc=True))
    for parsed in (text, doc):
        exc = parsed["exc"]
        assert isinstance(exc, str) and "Traceback" in exc and "boom\nsecond line" in exc
        assert parsed["path"] == "/v1/x"


def test_fields_named_like_the_lines_own_keys_are_prefixed() -> None:
    text, doc = _both(_record("odd msg=%s level=%s", "a b", "x"))
    for parsed in (text, doc):
        assert parsed["msg"] == "odd"
        assert parsed["level"] == "warning"
        assert parsed["field_msg"] == "a b" and parsed["field_level"] == "x"


def test_a_format_its_arguments_dont_fit_is_logged_whole() -> None:
    msg, extra = fields(_record("count=%d", "not a number"))
    assert msg == "count=%d" and extra == [("args", "('not a number',)")]
    msg, extra = fields(_record("count=%s", "a", "b"))
    assert msg == "count=%s" and extra == [("args", "('a', 'b')")]
    msg, extra = fields(_record("progress 50%% done=%s", "yes"))
    assert msg == "progress 50%"
    assert extra == [("done", "yes")]


def test_an_empty_value_is_quoted_so_the_next_key_is_not_swallowed() -> None:
    text, _ = _both(_record("x a=%s b=%s", "", "2"))
    assert text["a"] == "" and text["b"] == "2"


def _format_strings() -> list[str]:
    """Every literal format string meshd passes to a logger call."""
    found: set[str] = set()
    for path in (ROOT / "meshd").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"debug", "info", "warning", "error", "exception"}
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in {"logger", "log", "logging"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.add(node.args[0].value)
    return sorted(found)


FORMATS = _format_strings()


def test_meshd_logs_with_many_format_strings() -> None:
    assert len(FORMATS) > 100  # the scan found the code's calls


@settings(max_examples=300)
@given(
    fmt=st.sampled_from(FORMATS),
    values=st.lists(st.text(max_size=40), min_size=8, max_size=8),
)
def test_every_meshd_log_line_parses_field_by_field(fmt: str, values: list[str]) -> None:
    # Give each %s/%d/%r... its own argument: numbers where the format wants numbers.
    args: list[object] = []
    for conv in _conversions(fmt):
        args.append(len(args) if conv in "dif" else values[len(args) % len(values)])
    rec = _record(fmt, *args)
    msg, extra = fields(rec)
    text, doc = _both(rec)
    for parsed in (text, doc):
        assert parsed["msg"] == msg
        for key, value in extra:
            assert parsed[key] == value


def _conversions(fmt: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(fmt):
        if fmt[i] == "%":
            j = i + 1
            while j < len(fmt) and fmt[j] in "-#0 +.0123456789":
                j += 1
            if j < len(fmt) and fmt[j] != "%":
                out.append(fmt[j])
            i = j + 1
        else:
            i += 1
    return out


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_setup_installs_the_formatter(fmt: str) -> None:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        logs.setup("info", fmt)
        handler = root.handlers[0]
        assert isinstance(handler.formatter, JsonFormatter if fmt == "json" else TextFormatter)
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
