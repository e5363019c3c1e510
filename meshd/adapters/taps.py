"""A guest's tap, made by the kernel's own ioctls instead of two ``ip`` runs.

``ip tuntap add`` and ``ip link set ... master ... up`` are two processes (~25-30 ms
together on a loaded 2-core blade, on the path from an award to the guest's first
instruction); the same three steps as ioctls take well under a millisecond:

1. ``TUNSETIFF`` on ``/dev/net/tun`` makes the tap (``IFF_TAP | IFF_NO_PI``, what ``ip
   tuntap add mode tap`` makes; ``IFF_TUN_EXCL``: an existing device is never taken
   over) and ``TUNSETPERSIST`` keeps it once our descriptor is
   closed, so QEMU or Firecracker opens it by name and a restarted meshd finds it;
2. ``SIOCBRADDIF`` on the bridge enslaves it;
3. ``SIOCSIFFLAGS`` sets it up.

Root (``CAP_NET_ADMIN``) in the network namespace meshd runs in. A step that fails
removes the tap it made and raises a DriverError saying what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct

from meshd.errors import DriverError

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCBRADDIF = 0x89A2
IFF_UP = 0x1
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_TUN_EXCL = 0x8000  # fail if the name exists: never take over a device
IFNAMSIZ = 16
IFREQ_SIZE = 40  # struct ifreq on Linux: the name, then a 24-byte union


def _ifreq(name: str, fmt: str = "", *values: int) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise DriverError(f"interface name {name!r} must be 1 to {IFNAMSIZ - 1} bytes")
    head = struct.pack(f"{IFNAMSIZ}s{fmt}", raw, *values)
    return head.ljust(IFREQ_SIZE, b"\0")


def _persist(fd: int, on: bool) -> None:
    fcntl.ioctl(fd, TUNSETPERSIST, 1 if on else 0)


def make(tap: str, bridge: str) -> None:
    """A persistent tap named ``tap``, enslaved to ``bridge`` and up (the bridge must
    exist; a tap of that name must not)."""
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise DriverError(
            f"cannot open {TUN_PATH} to make tap {tap}: {exc.strerror} (meshd needs root "
            "and the tun module: modprobe tun)"
        ) from exc
    try:
        try:
            fcntl.ioctl(fd, TUNSETIFF, _ifreq(tap, "H", IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL))
            _persist(fd, True)
        except OSError as exc:
            taken = exc.errno == errno.EBUSY
            why = "an interface of that name exists" if taken else exc.strerror
            raise DriverError(f"cannot add tap {tap}: {why}") from exc
        try:
            _attach(tap, bridge)
        except BaseException:
            with contextlib.suppress(OSError):
                _persist(fd, False)  # the tap goes with our descriptor
            raise
    finally:
        os.close(fd)


def _attach(tap: str, bridge: str) -> None:
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        raise DriverError(f"cannot attach {tap} to {bridge}: {exc.strerror}") from exc
    with s:
        try:
            index = socket.if_nametoindex(tap)
            fcntl.ioctl(s, SIOCBRADDIF, _ifreq(bridge, "i", index))
        except OSError as exc:
            gone = exc.errno in (errno.ENODEV, errno.EINVAL, errno.EOPNOTSUPP)
            why = f"{bridge} is not a bridge in this network namespace" if gone else exc.strerror
            raise DriverError(f"cannot attach {tap} to {bridge}: {why}") from exc
        try:
            got = fcntl.ioctl(s, SIOCGIFFLAGS, _ifreq(tap, "H", 0))
            (flags,) = struct.unpack_from("H", got, IFNAMSIZ)
            fcntl.ioctl(s, SIOCSIFFLAGS, _ifreq(tap, "H", flags | IFF_UP))
        except OSError as exc:
            raise DriverError(f"cannot set {tap} up: {exc.strerror}") from exc
