"""Small helpers the tests share: a free local port, waiting for a condition instead of sleeping, processes gone."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def pid_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie has)."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    """The pids still running after waiting up to ``timeout`` s for all of them to end ([] when all did)."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if not pid_gone(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def stop_process(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout`` s; reaped either way."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str,
    process: subprocess.Popen[Any],
    timeout: float = 90.0,
    *,
    status: int | None = None,
    headers: dict[str, str] | None = None,
    output: Callable[[], str] | None = None,
) -> Any:
    """Wait until ``url`` answers (with ``status``, else any) while ``process`` lives, and return the response;
    fail with the process's output (``output()``, else its stderr) if it ends first or the time runs out."""
    import httpx

    def said() -> str:
        if output is not None:
            return output()
        stream = process.stderr
        if stream is None:
            return ""
        text = stream.read()
        return (text.decode(errors="replace") if isinstance(text, bytes) else str(text))[-3000:]

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{url}: the server exited with {process.returncode} before answering:\n{said()}")
        try:
            response = httpx.get(url, headers=headers, timeout=2)
            if status is None or response.status_code == status:
                return response
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer within {timeout:g} s")
        time.sleep(0.1)


def wait_until(predicate: Callable[[], T], timeout: float = 30, interval: float = 0.05, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or _name(predicate)}")
        time.sleep(interval)
    return value


async def wait_until_async(
    predicate: Callable[[], T], timeout: float = 30, interval: float = 0.05, what: str = ""
) -> T:
    """``wait_until`` for a coroutine: polls without blocking the event loop (the code it waits for may run there)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or _name(predicate)}")
        await asyncio.sleep(interval)
    return value


def _name(predicate: Callable[[], object]) -> str:
    return getattr(predicate, "__name__", repr(predicate))
