"""A real full disk under a real daemon: the winner's store on a 2 MiB tmpfs.

Two ``meshd run`` processes; beta's store (``meshd.db`` and its WAL) lives on a tmpfs
this test mounts. The tmpfs is filled to the last byte, then a workload that only
beta may run is submitted through alpha: the client must be refused with a sentence
saying beta's store can't write, beta's ``GET /v1/health`` must fail with that
sentence and ``meshd status`` must say so, and nothing may name beta the owner. The
space is freed; beta must find out by itself and take the same submission, with the
allocation on its disk. Needs root (mount); the tmpfs is unmounted in ``finally``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from meshd.adapters.store import auction_records
from meshd.adapters.store.db import Store
from meshd.errors import ApiError

try:
    from tests.integration.daemon import Daemon, Mesh, meshd, wait_all_alive, wait_for
except ImportError:  # pragma: no cover
    from daemon import Daemon, Mesh, meshd, wait_all_alive, wait_for  # type: ignore[no-redef]

CAPACITY = ("--cpus", "2", "--memory", "1GiB", "--disk", "1GiB")
STORE_CONFIG = "\n[store]\nreserve_bytes = 65536\nprobe_s = 0.2\nprobe_max_s = 1.0\n"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a tmpfs to fill needs root; run the suite as root"
)


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem has no byte left (unbuffered: no late ENOSPC)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size = 65536
        while size:
            try:
                os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2
    finally:
        os.close(fd)
    return filler


def _health(d: Daemon) -> tuple[int, str]:
    try:
        d.api("GET", "/v1/health")
    except ApiError as exc:
        return exc.status, str(exc)
    return 200, "ok"


def _submit(via: Daemon, name: str) -> subprocess.CompletedProcess[str]:
    return meshd(
        "submit", "--name", name, "--cpus", "1", "--memory", "64MiB", "--node", "beta",
        "--command", "sleep 600", "--json",
        data_dir=via.data_dir,
    )  # fmt: skip


def test_a_full_disk_refuses_work_and_says_so_until_space_is_freed(
    mesh_factory: Mesh, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    placed: list[str] = []
    alpha = beta = None
    try:
        alpha = mesh_factory("alpha")
        alpha.init()
        alpha.start(*CAPACITY)
        beta = mesh_factory("beta")
        beta.init(join=alpha.create_token())
        # The store moves to the tmpfs; the data dir keeps a symlink to it.
        store = beta.data_dir / "meshd.db"
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{store}{suffix}")
            if src.exists():
                _move(src, disk / src.name)  # another filesystem: copy, then remove
        store.symlink_to(disk / "meshd.db")
        with open(beta.data_dir / "meshd.toml", "a") as f:
            f.write(STORE_CONFIG)
        beta.start(*CAPACITY)
        wait_all_alive([alpha, beta])
        assert _health(beta) == (200, "ok")

        filler = _fill(disk)
        refused = _submit(alpha, "w1")
        assert refused.returncode != 0, refused.stdout
        assert "store can't write" in refused.stderr, refused.stderr
        status, text = _health(beta)
        assert status == 503 and "can't write" in text, (status, text)
        doc = json.loads(meshd("status", "--json", data_dir=beta.data_dir, check=True).stdout)
        assert doc["store"]["writable"] is False and doc["store"]["problem"], doc["store"]
        plain = meshd("status", data_dir=beta.data_dir, check=True).stdout
        assert "can't write" in plain, plain
        views = [d.api("GET", "/v1/workloads") for d in (alpha, beta)]
        assert all(r["owner"] != "beta" for rows in views for r in rows), views

        filler.unlink()
        wait_for("beta writes again", lambda: beta.status()["store"]["writable"], timeout=20)
        assert _health(beta) == (200, "ok")
        out = _submit(alpha, "w1")
        assert out.returncode == 0, out.stderr
        decision = json.loads(out.stdout)
        placed.append(decision["workload"])
        assert decision["owner"] == "beta"
        with Store.open(store) as reader:  # what beta's disk holds (WAL: readers are welcome)
            allocations = auction_records.load(reader).allocations
        assert decision["workload"] in allocations
    finally:
        with contextlib.suppress(Exception):
            for wid in placed:
                meshd("workload", "rm", wid, data_dir=alpha.data_dir)  # type: ignore[union-attr]
            if beta is not None:
                wait_for("removed", lambda: not beta.api("GET", "/v1/workloads"), timeout=10)
        for d in (beta, alpha):
            if d is not None:
                with contextlib.suppress(Exception):
                    d.stop()
        subprocess.run(["umount", str(disk)], check=False)


def _move(src: Path, dst: Path) -> None:
    dst.write_bytes(src.read_bytes())
    os.chmod(dst, 0o600)
    src.unlink()
