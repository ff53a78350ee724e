"""One background event loop (a daemon thread) that owns every MCP connection.

The SDK's transports are anyio task groups that must be entered and left by one
task; keeping them on a loop of their own lets sync code, async code on another
loop, and sync code inside a running loop (Jupyter) all call the same connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["background_loop", "run_on_loop", "arun_on_loop", "submit", "in_loop_thread"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The shared loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run, name="glm-agent-mcp-loop", daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread = loop, thread
        return _loop


def in_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the background loop."""
    if in_loop_thread():
        coro.close()
        raise RuntimeError("cannot wait for the MCP loop from inside it")
    return asyncio.run_coroutine_threadsafe(coro, background_loop())


def run_on_loop(coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
    """Run ``coro`` on the background loop and wait for it from sync code (any thread).

    Past ``timeout`` (a backstop: the coroutine applies its own limits) it is cancelled
    and ``TimeoutError`` is raised; an interrupt while waiting cancels it too.
    """
    future = submit(coro)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(f"no answer within {timeout} s") from None
    except BaseException:
        future.cancel()
        raise


async def arun_on_loop(coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
    """``run_on_loop`` for async code on another event loop; cancelling the caller cancels ``coro``."""
    future = asyncio.wrap_future(submit(coro))
    try:
        return await asyncio.wait_for(future, timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(f"no answer within {timeout} s") from None
