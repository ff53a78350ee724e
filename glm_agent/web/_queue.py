"""One shared model, many browser sessions: generations take turns, and a waiting session is told so."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from glm_agent.errors import StoppedWhileWaiting
from glm_agent.messages import MessageLike
from glm_agent.models.base import BaseChatModel, ChatModel

__all__ = ["ModelQueue", "QueuedModel"]

WaitFn = Callable[[int], None]  # called with the number of generations ahead (0: this one runs now)
StopFn = Callable[[], bool]


class ModelQueue:
    """First come, first served: up to ``slots`` generations at once on the shared model (a local model
    decodes that many together: its ``max_batch``); beyond, a session waits and is told its place."""

    def __init__(self, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.slots = slots
        self._cond = threading.Condition()
        self._line: list[object] = []

    @property
    def waiting(self) -> int:
        """Generations running or waiting."""
        with self._cond:
            return len(self._line)

    @contextmanager
    def turn(self, on_wait: WaitFn, should_stop: StopFn) -> Iterator[None]:
        """Wait for this caller's turn (reporting the line ahead as it changes), hold it, then let the next go."""
        me = object()
        with self._cond:
            self._line.append(me)
        try:
            reported = -1
            with self._cond:
                while self._line.index(me) >= self.slots:
                    ahead = self._line.index(me) - self.slots + 1
                    if ahead != reported:
                        on_wait(ahead)
                        reported = ahead
                    self._cond.wait(0.2)
                    if should_stop():
                        raise StoppedWhileWaiting("stopped while waiting for the model")
            if reported > 0:
                on_wait(0)
            yield
        finally:
            with self._cond:
                self._line.remove(me)
                self._cond.notify_all()


class QueuedModel(BaseChatModel):
    """A session's view of the shared model: ``stream`` waits in the :class:`ModelQueue` first.

    Other attributes (``name``, ``tokenizer``, ``context_length``) are the shared model's.
    """

    def __init__(self, model: ChatModel, queue: ModelQueue, on_wait: WaitFn, should_stop: StopFn) -> None:
        self.model = model
        self.name = model.name
        self.queue = queue
        self.on_wait = on_wait
        self.should_stop = should_stop
        #: this session's last generation's stats, when the model gives them (a local model's reused tokens)
        self.last_stats: Any = None

    def stream(self, messages: Sequence[MessageLike], **params: Any) -> Iterator[str]:
        with self.queue.turn(self.on_wait, self.should_stop):
            inner = self.model.stream(messages, **params)
            self.last_stats = getattr(inner, "stats", None)
            try:
                yield from inner
            finally:
                close = getattr(inner, "close", None)
                if close is not None:
                    close()  # a local model stops at the next token

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)
