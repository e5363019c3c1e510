"""``spec.json``: the spec a driver keeps beside a workload's files, and reading old ones.

Theory of operation
-------------------
Every workload directory (``DATA_DIR/workloads/<id>/``) holds the spec it was created
with, written with :func:`meshd.core.spec.dumps`: the one workload model, defaults left out
(so a ``process`` workload's file has no ``driver`` key). The id is not in the file:
the directory's name is the id.

Workloads outlive the daemon, so a meshd upgraded while they run must still read what
the previous meshd wrote. Before :mod:`meshd.core.spec`, drivers wrote their own dataclass:
every field, ``null`` for the unset ones, and an ``"id"``. Such a file is converted on
reading: ``id`` is dropped (after checking it names this directory), ``null`` values
are dropped, and the rest must be what the model knows. The file is left as it was; a
reader never writes. Anything else that does not decode is refused with a sentence
naming the file, never guessed at.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from meshd.core.spec import WorkloadSpec, from_wire, loads
from meshd.errors import DriverError

logger = logging.getLogger(__name__)

SPEC_NAME = "spec.json"
# The keys of the driver dataclass that spec.json held before meshd.core.spec (all of them
# were written, unset ones as null); "id" is the one the model does not have.
_OLD_KEYS = frozenset(
    {
        "id",
        "name",
        "driver",
        "cpus",
        "memory",
        "disk",
        "command",
        "image",
        "kernel",
        "initrd",
        "cmdline",
        "user_data",
        "meta_data",
        "network_config",
        "env",
        "boot_timeout_s",
        "ready_marker",
    }
)


_OLD_BOOT_DEFAULT = 60.0


def read_spec(wdir: Path) -> WorkloadSpec:
    """The spec kept in ``wdir``, converting the pre-model format (see the module doc).

    ``OSError`` (FileNotFoundError when there is none) is left to the caller, who knows
    which sentence fits; a file that is not a spec raises :class:`DriverError`.
    """
    path = wdir / SPEC_NAME
    data = path.read_bytes()
    try:
        return loads(data)
    except ValueError as exc:
        current = exc
    try:
        raw: Any = json.loads(data)
    except ValueError:
        raw = None
    if isinstance(raw, dict) and "id" in raw and set(raw) <= _OLD_KEYS:
        return _upgrade(path, raw)
    raise DriverError(
        f"{path} is not a workload spec meshd can read ({current}); "
        "restore it, or destroy the workload and submit it again"
    )


def _upgrade(path: Path, raw: dict[str, Any]) -> WorkloadSpec:
    """A spec.json written by the driver dataclass of meshd before the one model."""
    if raw["id"] != path.parent.name:
        raise DriverError(
            f"{path} is for workload {raw['id']!r}, not {path.parent.name!r}; "
            "it was copied or moved by hand: put it back in its own directory"
        )
    fields = {k: v for k, v in raw.items() if k != "id" and v is not None}
    if fields.get("boot_timeout_s") == _OLD_BOOT_DEFAULT:
        # The old dataclass wrote its default even when nobody asked for it; the model
        # says the same with "none named" (the node's driver default, 60 s unless set).
        del fields["boot_timeout_s"]
    try:
        spec = from_wire(fields)
    except ValueError as exc:
        raise DriverError(
            f"{path} was written by an older meshd and does not fit the workload model "
            f"({exc}); destroy the workload and submit it again"
        ) from exc
    logger.debug("read a spec in the pre-model format path=%s", path)
    return spec


def spec_driver(wdir: Path) -> str | None:
    """The driver named by the spec in ``wdir``; None if there is none or it is unreadable
    (logged: a workload whose spec can't be read belongs to no driver's list)."""
    try:
        return read_spec(wdir).driver
    except FileNotFoundError:
        return None
    except (OSError, DriverError) as exc:
        logger.warning("unreadable workload spec dir=%s error=%s", wdir, exc)
        return None
