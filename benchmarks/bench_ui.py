"""The dashboard (`meshd ui`): time from an event to the page showing it.

One daemon (local preset), `meshd ui` on loopback, headless Chromium (Debian's, over
DevTools) showing the page. Each sample writes an event (a `network create` through the
API) and measures:

* ``event_to_page_ms``: from the event's own timestamp (the daemon's clock as it wrote
  it) to the page rendering it, as the page itself computes it (same host, same clock);
* ``api_to_table_ms``: from just before the API call to the networks table showing the
  new network (the page also re-reads the views it draws: the whole redraw).

Run: .venv/bin/python benchmarks/bench_ui.py [--samples 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.browser import chromium  # noqa: E402
from tests.e2e.test_dashboard import start_ui  # noqa: E402
from tests.integration.daemon import Mesh  # noqa: E402


def emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def summary(name: str, xs: list[float]) -> dict[str, Any]:
    s = sorted(xs)
    return {
        "figure": name,
        "p50_ms": round(statistics.median(s), 1),
        "p99_ms": round(s[min(len(s) - 1, int(0.99 * len(s)))], 1),
        "max_ms": round(s[-1], 1),
        "n": len(s),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mesh = Mesh(Path(tmp))
        d = mesh.daemon("alpha")
        d.init()
        d.start()
        ui, url = start_ui(d.data_dir)
        try:

            async def run() -> tuple[list[float], list[float]]:
                page, table = [], []
                async with chromium(url) as b:
                    await b.wait_for("document.getElementById('status').textContent === 'live'")
                    for i in range(args.samples):
                        t0 = time.perf_counter()
                        await asyncio.to_thread(
                            d.api,
                            "POST",
                            "/v1/networks",
                            {"name": f"n{i}", "subnet": f"10.{100 + i}.0.0/24"},
                        )
                        await b.wait_for(
                            "document.querySelector('#networks tbody').textContent"
                            f".includes('10.{100 + i}.0.0/24')"
                        )
                        table.append(1000 * (time.perf_counter() - t0))
                        last = await b.evaluate("document.body.dataset.lastEvent")
                        page.append(float(str(last).rsplit(" ", 1)[1]))
                        await asyncio.sleep(0.1)
                return page, table

            page, table = asyncio.run(run())
            emit(summary("event_to_page_ms", page))
            emit(summary("api_to_table_ms", table))
        finally:
            ui.terminate()
            ui.wait(timeout=10)
            mesh.close()


if __name__ == "__main__":
    main()
