"""Run a tool function with an optional time limit, from sync or async code.

A sync function that runs past its limit cannot be killed: it is abandoned in
a daemon thread (it keeps running until it returns; it never blocks interpreter
exit). An async function that runs past its limit is cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ToolTimeout", "run_sync", "run_async"]


class ToolTimeout(Exception):
    """The tool did not finish within its time limit."""


def _start_thread(name: str, fn: Callable[[], Any], done: Callable[[Any, BaseException | None], None]) -> None:
    context = contextvars.copy_context()

    def target() -> None:
        try:
            value = context.run(fn)
        except BaseException as exc:  # handed over to the waiting side
            done(None, exc)
        else:
            done(value, None)

    threading.Thread(target=target, name=f"glm-agent-tool-{name}", daemon=True).start()


def _in_thread(name: str, fn: Callable[[], Any], timeout: float | None) -> Any:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def done(value: Any, exc: BaseException | None) -> None:
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)

    _start_thread(name, fn, done)
    finished, _ = concurrent.futures.wait([future], timeout=timeout)
    if not finished:
        raise ToolTimeout(timeout)
    return future.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _await_limited(awaitable: Any, timeout: float | None) -> Any:
    task = asyncio.ensure_future(awaitable)
    try:
        finished, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not finished:
        task.add_done_callback(_retrieve)
        task.cancel()
        raise ToolTimeout(timeout)
    return task.result()


def _has_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _run_coroutine(name: str, make: Callable[[], Any], timeout: float | None) -> Any:
    def run() -> Any:
        return asyncio.run(_await_limited(make(), timeout))

    if not _has_running_loop():
        return run()
    # Called from inside a running event loop: give the coroutine a loop of its own in a thread.
    grace = None if timeout is None else timeout + 1.0
    return _in_thread(name, run, grace)


def run_sync(
    name: str, function: Callable[..., Any], kwargs: dict[str, Any], timeout: float | None, is_async: bool
) -> Any:
    """Call ``function(**kwargs)`` from sync code; raise ``ToolTimeout`` past ``timeout`` seconds."""
    if is_async:
        return _run_coroutine(name, lambda: function(**kwargs), timeout)
    if timeout is None:
        value = function(**kwargs)
    else:
        value = _in_thread(name, lambda: function(**kwargs), timeout)
    if inspect.isawaitable(value):
        return _run_coroutine(name, lambda: value, timeout)
    return value


async def run_async(
    name: str, function: Callable[..., Any], kwargs: dict[str, Any], timeout: float | None, is_async: bool
) -> Any:
    """Await ``function(**kwargs)``; a sync function runs in a thread so the event loop never blocks."""
    if is_async:
        return await _await_limited(function(**kwargs), timeout)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)

    def done(value: Any, exc: BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(settle, value, exc)
        except RuntimeError:  # the loop closed while an abandoned tool was still running
            pass

    _start_thread(name, lambda: function(**kwargs), done)
    value = await _await_limited(future, timeout)
    if inspect.isawaitable(value):
        value = await _await_limited(value, timeout)
    return value
