"""Entry point of the sushy-tools emulator as the tests run it (in sushy's own venv).

sushy-tools 2.2.0's fake driver applies a power change ``random.randint(1, 11)``
seconds after it is asked (``fakedriver.set_power_state``); no setting changes that.
With ``MESHD_SUSHY_DELAY_S`` set, this replaces the driver module's ``random`` by one
whose ``randint`` answers that many seconds, so tests can have a fixed short delay
(0: the change shows on the next read). Unset, the stock random delay stays. Nothing
else of the emulator is touched; then sushy-emulator's own ``main()`` runs.
"""

from __future__ import annotations

import os
import sys


class _FixedDelay:
    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def randint(self, low: int, high: int) -> int:
        return self.seconds


def run() -> int:
    # Imported here: this file is read by the tests' linters, where sushy is not installed.
    from sushy_tools.emulator import main  # noqa: PLC0415
    from sushy_tools.emulator.resources.systems import fakedriver  # noqa: PLC0415

    delay = os.environ.get("MESHD_SUSHY_DELAY_S")
    if delay is not None:
        fakedriver.random = _FixedDelay(int(delay))  # type: ignore[assignment]
    result: int = main.main()
    return result


if __name__ == "__main__":
    sys.exit(run())
