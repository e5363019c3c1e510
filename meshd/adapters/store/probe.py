"""Can the store write? One small fsynced transaction and a free-space check say.

``SELECT 1`` succeeds on a full disk, a read-only mount and a failing device alike, so
a health check that reads proves nothing about the promises the node is about to
make. The probe writes: it rewrites the single row of the ``write_probe`` table in a
durable transaction (a WAL frame and an fsync, like every commit point).

A probe that succeeds on a full disk is possible: SQLite reuses the WAL file's space
after a checkpoint, so a one-page write may fit where a larger allocation record
does not. So the probe also asks the filesystem how much space is free and reports
the store unable to write below ``reserve_bytes``: a node near the end of its disk
stops bidding before an award fails, rather than after.
"""

from __future__ import annotations

import os

from meshd.adapters.store.db import Store
from meshd.errors import StoreError
from meshd.units import format_size


def probe(store: Store, reserve_bytes: int, now: float) -> None:
    """Raise :class:`StoreError` (one sentence) unless the store can write durably now."""
    directory = store.path.resolve().parent  # the file's own disk, through any symlink
    try:
        st = os.statvfs(directory)
    except OSError as exc:
        raise StoreError(
            f"can't read the free space of {directory}: {exc.strerror or exc}; check the disk"
        ) from exc
    free = st.f_bavail * st.f_frsize
    if free < reserve_bytes:
        raise StoreError(
            f"the disk holding the store at {store.path} has {format_size(free)} free, "
            f"below store.reserve_bytes ({format_size(reserve_bytes)}); free some disk space"
        )
    with store.transaction(durable=True):
        store.execute(
            "INSERT INTO write_probe (id, at, seq) VALUES (1, ?, 1) "
            "ON CONFLICT (id) DO UPDATE SET at = excluded.at, seq = write_probe.seq + 1",
            (now,),
        )
