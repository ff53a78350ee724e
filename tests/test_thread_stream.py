"""The thread-to-async bridge: order, batches, errors, backpressure, cancellation, and no leaked threads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from glm_agent._thread_stream import ThreadStream
from glm_agent.models.base import BaseChatModel
from tests._helpers import wait_until


class Source:
    """A sync generator that counts what it produced and records that it was closed."""

    def __init__(self, items=None, *, fail: BaseException | None = None, hold: threading.Event | None = None):
        self.items = items
        self.fail = fail
        self.hold = hold  # when given: after the listed items, block until it is set
        self.produced = 0
        self.closed = threading.Event()
        self.threads: list[threading.Thread] = []

    def __call__(self) -> Iterator[str]:
        self.threads.append(threading.current_thread())
        try:
            n = 0
            while self.items is None or n < len(self.items):
                yield self.items[n] if self.items is not None else str(n)
                n += 1
                self.produced = n
            if self.hold is not None:
                self.hold.wait(10)
            if self.fail is not None:
                raise self.fail
        finally:
            self.closed.set()


def test_items_arrive_in_order_and_the_worker_ends() -> None:
    source = Source(["a", "b", "c"])
    done: list[str] = []

    async def main() -> tuple[list[str], ThreadStream[str]]:
        stream = ThreadStream(source, on_done=lambda: done.append("done"))
        return [x async for x in stream], stream

    items, stream = asyncio.run(main())
    assert items == ["a", "b", "c"]
    stream.thread.join(5)
    assert not stream.thread.is_alive() and source.closed.is_set()
    assert source.threads == [stream.thread]  # the iterator ran in the worker, not on the loop
    assert done == ["done"]


def test_take_hands_over_everything_ready_in_one_batch() -> None:
    hold = threading.Event()
    source = Source(["a", "b", "c", "d"], hold=hold)

    async def main() -> list[list[str]]:
        stream = ThreadStream(source)
        await asyncio.to_thread(wait_until, lambda: source.produced == 4, 5, 0.005)
        first = await stream.take()
        hold.set()
        return [first, await stream.take(), await stream.take()]

    assert asyncio.run(main()) == [["a", "b", "c", "d"], [], []]


def test_an_error_comes_after_the_items_before_it_then_the_stream_ends() -> None:
    source = Source(["a", "b"], fail=ValueError("backend broke"))
    done: list[str] = []

    async def main() -> list[str]:
        stream = ThreadStream(source, on_done=lambda: done.append("done"))
        got = [await stream.__anext__(), await stream.__anext__()]
        with pytest.raises(ValueError, match="backend broke"):
            await stream.__anext__()
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        assert await stream.take() == []
        await stream.aclose()
        return got

    assert asyncio.run(main()) == ["a", "b"]
    assert done == ["done"]


def test_an_error_while_starting_reaches_the_consumer() -> None:
    def broken() -> Iterator[str]:
        raise OSError("no weights here")

    async def main() -> None:
        stream: ThreadStream[str] = ThreadStream(broken)
        with pytest.raises(OSError, match="no weights here"):
            await stream.take()
        await stream.aclose()
        assert not stream.thread.is_alive()

    asyncio.run(main())


def test_close_stops_an_endless_source_and_closes_it() -> None:
    source = Source()  # endless

    async def main() -> ThreadStream[str]:
        stream = ThreadStream(source)
        assert [await stream.__anext__() for _ in range(3)] == ["0", "1", "2"]
        await stream.aclose()
        return stream

    stream = asyncio.run(main())
    assert source.closed.is_set() and not stream.thread.is_alive()


def test_close_calls_close_on_an_iterator_that_is_not_a_generator() -> None:
    class Counter:
        """An endless iterator with ``close()`` (as an HTTP response stream has); garbage collection won't call it."""

        def __init__(self) -> None:
            self.n = 0
            self.closed = threading.Event()

        def __iter__(self) -> Counter:
            return self

        def __next__(self) -> int:
            self.n += 1
            return self.n

        def close(self) -> None:
            self.closed.set()

    counter = Counter()

    async def main() -> None:
        stream = ThreadStream(lambda: counter, max_pending=2)
        assert await stream.__anext__() == 1
        await stream.aclose()

    asyncio.run(main())
    assert counter.closed.is_set()


def test_backpressure_holds_the_worker_until_the_consumer_reads() -> None:
    source = Source()  # endless

    async def main() -> None:
        stream = ThreadStream(source, max_pending=3)
        # the worker queues 3 items and waits with a 4th in hand (``produced`` counts resumed yields)
        await asyncio.to_thread(wait_until, lambda: source.produced >= 3, 5, 0.005)
        await asyncio.sleep(0.2)  # room for an unbounded worker to run ahead (it must not)
        assert source.produced == 3
        assert await stream.take() == ["0", "1", "2"]
        await asyncio.to_thread(wait_until, lambda: source.produced >= 6, 5, 0.005)
        await asyncio.sleep(0.1)
        assert source.produced == 6
        assert await stream.take() == ["3", "4", "5"]
        await stream.aclose()  # a worker blocked on a full queue wakes up to stop
        assert source.closed.is_set() and not stream.thread.is_alive()

    asyncio.run(main())


def test_max_pending_must_be_positive() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="max_pending"):
            ThreadStream(Source(["a"]), max_pending=0)

    asyncio.run(main())


class EndlessModel(BaseChatModel):
    name = "endless"

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.threads: list[threading.Thread] = []

    def stream(self, messages, **params):
        self.threads.append(threading.current_thread())
        try:
            n = 0
            while True:
                time.sleep(0.001)
                yield f"{n} "
                n += 1
        finally:
            self.closed.set()


def test_astream_yields_each_delta_and_closes_the_backend_when_left_early() -> None:
    model = EndlessModel()

    async def main() -> list[str]:
        got: list[str] = []
        stream = model.astream([{"role": "user", "content": "x"}])
        async for delta in stream:
            got.append(delta)
            if len(got) == 5:
                break
        await stream.aclose()
        return got

    assert asyncio.run(main()) == ["0 ", "1 ", "2 ", "3 ", "4 "]
    assert model.closed.wait(5)
    model.threads[0].join(5)
    assert not model.threads[0].is_alive()


def test_cancelling_an_astream_consumer_stops_the_backend() -> None:
    model = EndlessModel()

    async def main() -> None:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in model.astream([{"role": "user", "content": "x"}]):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert model.closed.wait(5)
    model.threads[0].join(5)
    assert not model.threads[0].is_alive()


def test_astream_raises_the_backend_error_and_agenerate_joins() -> None:
    class Model(BaseChatModel):
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        def stream(self, messages, **params):
            yield "he"
            yield "llo"
            if self.fail:
                raise RuntimeError("CUDA fell over")

    async def main() -> None:
        assert await Model(False).agenerate([]) == "hello"
        got: list[str] = []
        with pytest.raises(RuntimeError, match="CUDA fell over"):
            async for delta in Model(True).astream([]):
                got.append(delta)
        assert got == ["he", "llo"]

    asyncio.run(main())
