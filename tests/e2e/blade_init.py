"""Run a command as the first process of a new PID namespace: a blade of its own.

Blades in tests/e2e/blades.py share this machine's kernel; without their own PID
namespace every blade would see (and the process driver, which finds a workload's
processes by their environment marker, would kill) every other blade's processes.
Real blades don't share pids, so neither do ours.

Usage: python blade_init.py COMMAND [ARG...]

This process stays outside, as the harness's handle: it unshares the PID and mount
namespaces, forks COMMAND as pid 1 of the new one (with its own /proc, mount events
kept private), forwards SIGTERM, SIGINT and SIGHUP to it, and exits with its status.
When this process dies (SIGKILL), COMMAND gets SIGKILL too (PR_SET_PDEATHSIG); when
COMMAND (pid 1) ends, the kernel ends everything else in its namespace, as a power
cut ends a blade's workloads.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
PR_SET_PDEATHSIG = 1

libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: blade_init.py COMMAND [ARG...]", file=sys.stderr)
        return 2
    _check(libc.unshare(CLONE_NEWPID | CLONE_NEWNS), "unshare")
    child = os.fork()
    if child == 0:
        try:
            _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
            _check(
                libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /"
            )
            flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
            _check(libc.mount(b"proc", b"/proc", b"proc", flags, None), "mount /proc")
            os.execvp(argv[0], argv)
        except BaseException as exc:  # never return into the parent's code
            print(f"blade_init: {exc}", file=sys.stderr)
            os._exit(127)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            _, status = os.waitpid(child, 0)
        except InterruptedError:
            continue
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
