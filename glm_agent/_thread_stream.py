"""Iterate a sync iterator from async code: the iterator runs in a worker thread, the event loop awaits.

The one thread-to-async bridge of the package (``BaseChatModel.astream``, the server's backends):

- **wake-ups in batches**: the worker wakes the loop once per batch of items, not once per item;
  :meth:`ThreadStream.take` hands over everything that is ready at once;
- **backpressure**: at most ``max_pending`` items wait for the consumer; then the worker blocks
  (and so does generation) until the consumer takes some;
- **cancellation**: :meth:`ThreadStream.close` (or cancelling the consumer, then ``close``) makes the
  worker stop before its next item and close the iterator (a generator's ``finally`` runs in the
  worker thread), which ends generation; a worker blocked on backpressure wakes up to stop;
- **errors**: an exception raised by the iterator is raised to the consumer after the items that came
  before it;
- **no leaked threads**: the worker always ends once the iterator yields, returns or raises after a
  ``close``; :meth:`ThreadStream.aclose` waits for that.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["ThreadStream"]

T = TypeVar("T")

DEFAULT_MAX_PENDING = 1024


class ThreadStream(Generic[T]):
    """Runs ``make_iter()`` and iterates it in a daemon thread; ``async for item in stream`` reads it.

    Create it inside a running event loop. ``on_done`` runs on that loop once the worker has ended
    (however it ended), e.g. to give back a generation slot.
    """

    def __init__(
        self,
        make_iter: Callable[[], Iterator[T]],
        *,
        name: str = "glm-agent-stream",
        max_pending: int = DEFAULT_MAX_PENDING,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, not {max_pending}")
        self._loop = asyncio.get_running_loop()
        self._make_iter = make_iter
        self._max_pending = max_pending
        self._on_done = on_done
        self._cond = threading.Condition()
        self._items: deque[T] = deque()  # guarded by _cond, like the four fields below
        self._ended = False
        self._error: BaseException | None = None
        self._stopping = False
        self._wake_pending = False
        self._ready = asyncio.Event()
        self._worker_done = asyncio.Event()
        self.thread = threading.Thread(target=self._work, name=name, daemon=True)
        self.thread.start()

    # -- worker thread ------------------------------------------------------------------------
    def _work(self) -> None:
        error: BaseException | None = None
        try:
            it = self._make_iter()
            try:
                for item in it:
                    with self._cond:
                        while len(self._items) >= self._max_pending and not self._stopping:
                            self._cond.wait()
                        if self._stopping:
                            break
                        self._items.append(item)
                    self._wake_loop()
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # handed to the consumer
            error = exc
        finally:
            with self._cond:
                self._ended, self._error = True, error
            self._wake_loop()

    def _wake_loop(self) -> None:
        with self._cond:
            if self._wake_pending:
                return  # the wake-up already scheduled will see this item too
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._on_wake)
        except RuntimeError:  # the loop is closed: nobody is left to read
            pass

    # -- event loop ---------------------------------------------------------------------------
    def _on_wake(self) -> None:
        with self._cond:
            self._wake_pending = False
            ended = self._ended
        self._ready.set()
        if ended and not self._worker_done.is_set():
            self._worker_done.set()
            if self._on_done is not None:
                self._on_done()

    async def take(self) -> list[T]:
        """Every item that is ready, waiting for at least one; ``[]`` once the stream has ended.

        Raises the iterator's exception (once) after the items that came before it.
        """
        return await self._next(everything=True)

    def __aiter__(self) -> ThreadStream[T]:
        return self

    async def __anext__(self) -> T:
        items = await self._next(everything=False)
        if not items:
            raise StopAsyncIteration
        return items[0]

    async def _next(self, *, everything: bool) -> list[T]:
        while True:
            with self._cond:
                if self._items:
                    items = list(self._items) if everything else [self._items.popleft()]
                    if everything:
                        self._items.clear()
                    self._cond.notify_all()  # room again for a worker held back by max_pending
                    return items
                if self._ended:
                    error, self._error = self._error, None
                    break
                self._ready.clear()  # under the lock: a later item schedules a fresh wake-up
            await self._ready.wait()
        if error is not None:
            raise error
        return []

    def close(self) -> None:
        """Ask the worker to stop before its next item (and close the iterator); returns at once."""
        with self._cond:
            self._stopping = True
            self._items.clear()
            self._cond.notify_all()

    async def aclose(self) -> None:
        """``close()``, then wait until the worker thread has ended."""
        self.close()
        await self._worker_done.wait()
        self.thread.join()  # the worker's last act was to wake us: it is returning now
