"""Structured logging: stdlib logging with ``key=value`` text or JSON lines on stderr.

Modules log with ``logger = logging.getLogger(__name__)`` and lazy ``%s`` arguments,
writing fields as ``key=value`` inside the message so that both formats stay greppable.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
        line += f"logger={record.name} msg={record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


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
