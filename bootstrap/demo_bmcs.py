"""The demo's BMCs: one sushy-tools Redfish emulator, one system per blade, until SIGTERM.

Usage: .venv/bin/python bootstrap/demo_bmcs.py DIR NAME...

It is the emulator the tests use (tests/integration/sushy.py: TLS with a CA made here,
Basic auth, the fake driver's power delay fixed at 0 s), standing in for the blades'
iLOs. Once it answers it writes, in DIR: ``url``, ``user``, ``password`` (0600) and
``ca.pem``; the systems are named ``blade-NAME``.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.sushy import Emulator


def main() -> None:
    out = Path(sys.argv[1])
    names = sys.argv[2:]
    emu = Emulator(out / "emulator", {f"blade-{n}": "On" for n in names}, delay_s=0)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    emu.start()
    try:
        password = out / "password"
        password.write_text(emu.password)
        password.chmod(0o600)
        (out / "user").write_text(emu.user)
        (out / "ca.pem").write_bytes(emu.ca_file.read_bytes())
        (out / "url").write_text(emu.url)  # last: the demo waits for it
        while not done.wait(0.5):
            pass
    finally:
        emu.close()


if __name__ == "__main__":
    main()
