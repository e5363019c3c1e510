"""The daemon's loop exception handler: a peer hanging up mid-way is a debug line."""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest

from meshd.shell import loop_errors


class SSLProtocol:  # named as uvloop's and asyncio's TLS protocols are
    pass


class PlainProtocol:
    pass


CLOSED = RuntimeError(
    "unable to perform operation on <TCPTransport closed=True reading=False 0x55>; "
    "the handler is closed"
)


def reported(context: dict[str, object], caplog: pytest.LogCaptureFixture) -> list[int]:
    """The levels of what the daemon's handler logs for the loop's report ``context``."""
    loop = asyncio.new_event_loop()
    try:
        loop_errors.install(loop)
        with caplog.at_level(logging.DEBUG):
            loop.call_exception_handler(context)
    finally:
        loop.close()
    return [r.levelno for r in caplog.records]


@pytest.mark.parametrize(
    "context",
    [
        {"message": "Fatal error on SSL protocol", "exception": CLOSED, "protocol": SSLProtocol()},
        {"message": "Future exception was never retrieved", "exception": ConnectionResetError()},
        {"message": "Fatal error on SSL protocol", "exception": ssl.SSLError(1, "bad record")},
        {"message": "Fatal error on transport", "exception": BrokenPipeError()},
    ],
)
def test_a_peer_going_away_is_a_debug_line(
    context: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    assert reported(context, caplog) == [logging.DEBUG]
    assert "ended mid-way" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    "context",
    [
        {"message": "Task exception was never retrieved", "exception": ValueError("a bug")},
        {"message": "Fatal error", "exception": CLOSED, "protocol": PlainProtocol()},
        {"message": "no exception at all"},
    ],
)
def test_anything_else_still_reaches_the_default_handler(
    context: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    assert reported(context, caplog) == [logging.ERROR]
