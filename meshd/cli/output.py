"""The CLI's output layer: the only place that prints. JSON or aligned human text.

Names and every other text in a daemon's answer may come from a peer (a workload's
name, a member's address, an error sentence quoting input). Printed raw, an ESC
sequence in one could clear the operator's screen, retitle the terminal or fake
lines; so human text shows control characters escaped (``\x1b``), and a table cell
shows line breaks escaped too. JSON escapes them itself.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")


# C0 controls but tab and newline, DEL, and the C1 controls (0x9b is a one-byte CSI).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_BREAK = re.compile("[\x00-\x1f\x7f-\x9f]")


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def clean(text: str, keep_lines: bool = True) -> str:
    """``text`` safe for a terminal: control characters shown as ``\\xNN``."""
    return (_CONTROL if keep_lines else _CONTROL_OR_BREAK).sub(_escape, text)


def emit_text(text: str) -> None:
    text = clean(text)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def emit_progress(message: str) -> None:
    """A progress line for people, on stderr (stdout stays for the answer)."""
    sys.stderr.write(f"meshd: {clean(message, keep_lines=False)}\n")
    sys.stderr.flush()


def emit_error(message: str) -> None:
    sys.stderr.write(f"meshd: {clean(message, keep_lines=False)}\n")


def emit_fields(fields: Mapping[str, Any]) -> None:
    width = max((len(k) for k in fields), default=0)
    emit_text("\n".join(f"{clean(k, False):<{width}}  {_cell(v, k)}" for k, v in fields.items()))


def emit_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    cells = [[c.upper() for c in columns]] + [[_cell(r.get(c), c) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    emit_text(
        "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells
        )
    )


def when(ts: float, now: float | None = None) -> str:
    """An epoch time for people: ``2026-12-07 06:52:01Z (3m ago)``."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))
    ago = now - ts
    if ago < 0:
        rel = f"in {_span(-ago)}"
    elif ago < 1:
        rel = "just now"
    else:
        rel = f"{_span(ago)} ago"
    return f"{stamp} ({rel})"


def _span(s: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit}"
    return f"{int(s)}s"


def _cell(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    # Times are epoch seconds in JSON; people read them as dates (a key "..._at", "at").
    if (key == "at" or key.endswith("_at")) and isinstance(value, int | float) and value > 0:
        return when(float(value))
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, Mapping):
        return " ".join(f"{clean(str(k), False)}={_cell(v, str(k))}" for k, v in value.items())
    return clean(str(value), keep_lines=False)
