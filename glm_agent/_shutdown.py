"""SIGTERM ends a server the way Ctrl-C does: its ``finally`` blocks run (sessions, kernels, temporary files).

uvicorn catches SIGINT and SIGTERM while it serves, shuts down, restores the handlers that were
there before and raises the signal again. Python's SIGINT handler turns that into
``KeyboardInterrupt`` and clean-up runs; the default SIGTERM handler ends the process on the
spot, leaving every session's files and kernels behind (what systemd and ``docker stop`` send).
With :func:`sigterm_exits` around the server, SIGTERM raises ``SystemExit(143)`` instead.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["sigterm_exits"]


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(143)`` (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
