"""The CLI's output layer: the only place that prints. JSON or aligned human text."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def emit_text(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def emit_error(message: str) -> None:
    sys.stderr.write(f"meshd: {message}\n")


def emit_fields(fields: Mapping[str, Any]) -> None:
    width = max((len(k) for k in fields), default=0)
    emit_text("\n".join(f"{k:<{width}}  {_cell(v)}" for k, v in fields.items()))


def emit_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    cells = [[c.upper() for c in columns]] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    emit_text(
        "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells
        )
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, Mapping):
        return " ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return str(value)
