"""aiohttp for the daemon, loaded without the system's CA store.

Importing aiohttp builds two client TLS contexts at once (``aiohttp.connector``'s
defaults for ``ssl=True`` and ``ssl=False``), and each reads the host's whole CA store
(``set_default_verify_paths``): ~40 ms of CPU and ~2 MiB of memory per process
(measured by ``benchmarks/bench_startup.py``). meshd never uses those defaults: every
connection it makes passes its own context (the mesh CA for members, a BMC's CA file or
``ssl.create_default_context()`` built when asked). So the daemon imports aiohttp with
the default CA locations pointed at nothing, and puts them back at once: contexts made
later read the real store as usual. Only aiohttp's two import-time defaults are empty,
and a request that fell back on them would fail to verify, never pass unverified.
"""

from __future__ import annotations

import os
import sys

_CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR")


def load() -> None:
    """Import aiohttp (and its web server) the cheap way, unless it is loaded already."""
    if "aiohttp" in sys.modules:
        return
    saved = {name: os.environ.get(name) for name in _CA_VARIABLES}
    try:
        for name in _CA_VARIABLES:
            os.environ[name] = os.devnull
        import aiohttp.web  # noqa: F401, PLC0415 - the import, now, is the point
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
