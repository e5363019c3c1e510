"""Named crash points: ``failpoint("driver.process.after_spawn")`` kills meshd there.

Theory of operation
-------------------
Crash safety is a claim about every step of a driver, so every step has a name, and a
test can make the daemon die at exactly that step (etcd's gofail does the same for Go).
A failpoint does nothing unless the environment variable ``MESHD_FAILPOINTS`` names it
(a comma-separated list, read once at import); then it SIGKILLs its own process, which
is ``kill -9`` as an operator or the OOM killer would do it: no ``finally``, no atexit,
no flush. With the variable unset a failpoint costs one set lookup.

``MESHD_FAILPOINTS_LOG``, when set, names a file to which each failpoint appends its
name as it is *passed* (not triggered); the kill-point matrix (tests/faults/kill.py)
uses it to list the points a scenario goes through.

Names are ``area.driver.step``; :data:`KNOWN` lists every one a driver declares, so a
test can check that a scenario covers them all.
"""

from __future__ import annotations

import os
import signal

ENV = "MESHD_FAILPOINTS"
LOG_ENV = "MESHD_FAILPOINTS_LOG"
_ARMED: frozenset[str] = frozenset(n.strip() for n in os.environ.get(ENV, "").split(",") if n)
_LOG: str | None = os.environ.get(LOG_ENV) or None
KNOWN: set[str] = set()


def declare(*names: str) -> None:
    """Record that these failpoints exist (a module declares its own at import)."""
    KNOWN.update(names)


def failpoint(name: str) -> None:
    """Die here (SIGKILL, no cleanup) if ``MESHD_FAILPOINTS`` names ``name``."""
    if _LOG is not None:
        with open(_LOG, "a") as f:
            f.write(name + "\n")
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
