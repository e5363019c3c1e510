"""Headless Chromium driven over the DevTools protocol (Debian's ``chromium``), for the
dashboard's end-to-end test and benchmark. No Selenium or Playwright: one websocket
(aiohttp) speaking CDP: navigate, evaluate JavaScript, take a screenshot.

Chromium runs with a fresh profile in a temporary directory and the flags that keep it
off the network (background networking, component updates, sync), and is killed by its
own pid when done.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--window-size=1280,1600",
]


class Browser:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        mid = next(self._ids)
        await self._ws.send_str(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = await self._ws.receive(timeout=30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"the browser closed the DevTools socket: {msg.type}")
            doc = json.loads(msg.data)
            if doc.get("id") == mid:
                if "error" in doc:
                    raise RuntimeError(f"{method}: {doc['error']}")
                result: dict[str, Any] = doc.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return r.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the page never satisfied {expression!r}")
            await asyncio.sleep(0.02)

    async def screenshot(self, path: Path) -> None:
        r = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(r["data"]))


@contextlib.asynccontextmanager
async def chromium(url: str) -> AsyncIterator[Browser]:
    """A headless Chromium showing ``url``."""
    if CHROMIUM is None:
        raise RuntimeError("chromium is not installed")
    # Chromium's helpers may still write to the profile as it goes down: cleaning up is
    # best effort, after the whole process group is gone.
    with tempfile.TemporaryDirectory(
        prefix="meshd-chromium-", ignore_cleanup_errors=True
    ) as profile:
        proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own group: its helpers go down with it
            # Its scratch files (org.chromium.Chromium.*) in the profile, not in /tmp.
            env={**os.environ, "TMPDIR": profile},
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            endpoint = None
            for line in proc.stderr:
                m = re.search(r"DevTools listening on (ws://\S+)", line)
                if m:
                    endpoint = m.group(1)
                    break
            if endpoint is None:
                raise RuntimeError("chromium did not open its DevTools port")
            port = re.search(r":(\d+)/", endpoint)
            assert port
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port.group(1)}/json/list") as r:
                    pages = [t for t in await r.json() if t.get("type") == "page"]
                async with session.ws_connect(
                    pages[0]["webSocketDebuggerUrl"], max_msg_size=0
                ) as ws:
                    b = Browser(ws)
                    await b.call("Page.enable")
                    await b.call("Page.navigate", url=url)
                    yield b
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
