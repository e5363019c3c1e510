"""Who a process is, read from /proc: what every driver uses to find its workloads again.

A pid alone is not an identity: pids are recycled, and a zombie still answers
``kill(pid, 0)``. A workload is the process with that pid *and* the start time
recorded when it was launched (field 22 of ``/proc/<pid>/stat``, clock ticks since
boot), on the same boot (``/proc/sys/kernel/random/boot_id``), and not a zombie.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEAD = ("Z", "X", "x")  # zombie, dead: gone as far as a workload is concerned


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that tell who a process is."""

    pid: int
    state: str
    session: int
    starttime: int  # clock ticks since boot (field 22)
    ppid: int = 0
    comm: str = ""  # the executable's name, at most 15 bytes


def parse_stat(text: str) -> ProcStat:
    # comm (field 2) may hold spaces and parentheses: it ends at the last ')'.
    head, _, rest = text.rpartition(")")
    pid, _, comm = head.partition("(")
    f = rest.split()
    return ProcStat(int(pid), f[0], int(f[3]), int(f[19]), int(f[1]), comm)


def processes() -> list[ProcStat]:
    """Every process here, zombies included (one read of /proc/<pid>/stat each)."""
    with os.scandir("/proc") as entries:
        pids = [int(e.name) for e in entries if e.name.isdigit()]
    return [st for st in map(read_stat, pids) if st is not None]


def read_stat(pid: int) -> ProcStat | None:
    try:
        return parse_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def is_alive(pid: int, starttime: int) -> bool:
    """The process ``pid`` exists, is not a zombie, and is the one started at ``starttime``."""
    st = read_stat(pid)
    return st is not None and st.state not in DEAD and st.starttime == starttime


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a workload's leftovers after its leader exits)."""
    members = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                st = read_stat(int(entry.name))
                if st is not None and st.session == sid and st.state not in DEAD:
                    members.append(st.pid)
    return members


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def environ_value(pid: int, name: str) -> str | None:
    """The value of ``name`` in the environment ``pid`` was started with; None if it has
    none or we may not read it (another user's process)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    key = name.encode() + b"="
    for item in raw.split(b"\0"):
        if item.startswith(key):
            return item[len(key) :].decode(errors="replace")
    return None


def find_by_env(name: str, prefix: str) -> list[tuple[ProcStat, str]]:
    """Every live process whose environment sets ``name`` to a value starting with
    ``prefix``, with that value: how a driver finds the processes it started even when
    it died before it could write their pids down."""
    found = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            value = environ_value(int(entry.name), name)
            if value is None or not value.startswith(prefix):
                continue
            st = read_stat(int(entry.name))
            if st is not None and st.state not in DEAD:
                found.append((st, value))
    return found


def find_by_cmdline(needle: str) -> list[ProcStat]:
    """Every live process one of whose arguments contains ``needle`` (e.g. the path of a
    workload's directory, which only that workload's processes name)."""
    found = []
    key = needle.encode()
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                raw = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                continue
            if key not in raw:
                continue
            st = read_stat(int(entry.name))
            if st is not None and st.state not in DEAD:
                found.append(st)
    return found


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically: a temporary file, fsync, rename, fsync of the
    directory. A crash at any moment leaves the old content or the new, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
