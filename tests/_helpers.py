"""Small helpers the tests share: a free local port, and waiting for a condition instead of sleeping."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float = 30, interval: float = 0.02) -> None:
    """Poll ``predicate`` until it returns something truthy; fail the test if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {getattr(predicate, '__name__', predicate)}")
        time.sleep(interval)


async def wait_until_async(predicate: Callable[[], object], timeout: float = 30, interval: float = 0.02) -> None:
    """``wait_until`` for a coroutine: polls without blocking the event loop (the code it waits for may run there)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {getattr(predicate, '__name__', predicate)}")
        await asyncio.sleep(interval)
