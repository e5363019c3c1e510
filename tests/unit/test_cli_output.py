"""The CLI never prints a control character it was handed, and refuses NaN flags.

Names, addresses and error sentences come from the daemon and, through it, from peers:
an ESC sequence in a workload's name must reach the terminal as ``\\x1b`` text, not as
a command to the terminal. JSON output escapes them by itself.
"""

from __future__ import annotations

import json

import pytest

from meshd.cli import main, output

EVIL = "web\x1b[2J\x1b]0;owned\x07\x9b31m\rfake"


def test_a_table_shows_control_characters_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"name": EVIL, "address": "10.0.0.1:7420\nbeta  10.0.0.9", "state": "alive"}]
    output.emit_table(rows, ["name", "address", "state"])
    out = capsys.readouterr().out
    assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in out)
    assert out.count("\n") == 2  # the header and one row: no forged line
    assert "web\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\x0dfake" in out


def test_fields_text_and_errors_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    output.emit_fields({"name": EVIL, "labels": {EVIL: EVIL}})
    output.emit_text(f"placed {EVIL}\nsecond line\tand a tab")
    output.emit_error(f"no workload {EVIL} is known\nin this mesh")
    captured = capsys.readouterr()
    for text in (captured.out, captured.err):
        assert "\x1b" not in text and "\x9b" not in text and "\x07" not in text
        assert "\r" not in text
    assert "second line\tand a tab" in captured.out  # the layout's own breaks and tabs stay
    assert captured.err.count("\n") == 1


def test_json_output_escapes_by_itself(capsys: pytest.CaptureFixture[str]) -> None:
    output.emit_json({"name": EVIL})
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert json.loads(out)["name"] == EVIL


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "infinity", "1e400"])
@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "--name", "w", "--memory", "1MiB"],
        ["run"],
        ["config", "show"],
    ],
)
def test_number_flags_refuse_nan_and_infinity(
    argv: list[str], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main.main([*argv, f"--cpus={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --cpus: must be a finite number" in err
