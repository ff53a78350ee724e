"""The server's streaming parts: stop strings, reply → OpenAI deltas, the queue."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Union

from glm_agent.chatglm3.openai_format import INTERPRETER, ToolChoice, call_block, new_call_id, openai_call
from glm_agent.chatglm3.parser import CallFinished, CallNamed, ReplyStreamParser, ReplyText
from glm_agent.messages import CodeCall

__all__ = ["StopScanner", "ContentOut", "ToolCallOut", "Out", "ReplyTranslator", "RequestGate", "QueueFull"]


class StopScanner:
    """Cuts streamed text at the first stop string and drops ``remove`` strings (special tokens).

    The text is scanned left to right; at each position a stop string wins over a removed string,
    and a longer one over a shorter. Text that might still begin a match is held back, so the
    result does not depend on how the text was cut into deltas.
    """

    def __init__(self, stops: list[str] | None = None, remove: list[str] | None = None) -> None:
        stops = [s for s in (stops or []) if s]
        remove = [s for s in (remove or []) if s and s not in stops]
        # at one position: stops first, then longer strings first
        self._patterns = sorted(
            [(s, True) for s in stops] + [(s, False) for s in remove], key=lambda p: (not p[1], -len(p[0]))
        )
        self._hold = max((len(s) for s, _ in self._patterns), default=1) - 1
        self._buf = ""
        self.stopped = False

    def _scan(self, final: bool) -> str:
        out: list[str] = []
        while True:
            hits = [(i, n) for n, (s, _) in enumerate(self._patterns) if (i := self._buf.find(s)) >= 0]
            if not hits:
                break
            pos = min(i for i, _ in hits)
            if not final and pos >= len(self._buf) - self._hold:
                break  # a longer match starting here may not be complete yet
            text, is_stop = self._patterns[min(n for i, n in hits if i == pos)]
            out.append(self._buf[:pos])
            self._buf = self._buf[pos + len(text) :]
            if is_stop:
                self.stopped, self._buf = True, ""
                return "".join(out)
        keep = 0 if final else min(self._hold, len(self._buf))
        out.append(self._buf[: len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep :]
        return "".join(out)

    def feed(self, delta: str) -> str:
        """The text that is now safe to emit; after a stop string, ``stopped`` is True and nothing more comes."""
        if self.stopped:
            return ""
        self._buf += delta
        return self._scan(final=False)

    def flush(self) -> str:
        """The held-back rest, at the end of the stream."""
        return "" if self.stopped else self._scan(final=True)


@dataclass(frozen=True)
class ContentOut:
    text: str


@dataclass(frozen=True)
class ToolCallOut:
    index: int
    id: str
    name: str
    arguments: str  # JSON


Out = Union[ContentOut, ToolCallOut]


class ReplyTranslator:
    """Turns raw ChatGLM3 reply deltas into OpenAI content and tool calls, as they become certain.

    A call is sent once its segment has parsed, so a malformed call can still become text: when
    calls are not enabled (no tools, ``tool_choice: "none"``), when a code call comes without an
    ``interpreter`` tool, or when the call does not parse, the segment is content
    (``"NAME\\n```python ...```"``), never an error.
    """

    def __init__(self, choice: ToolChoice) -> None:
        self.choice = choice
        self.parser = ReplyStreamParser()
        self.raw = ""
        self.calls: list[ToolCallOut] = []
        self._any_content = False
        self._need_separator = False

    def feed(self, delta: str) -> list[Out]:
        self.raw += delta
        return self._translate(self.parser.feed(delta))

    def close(self) -> list[Out]:
        return self._translate(self.parser.close())

    def _translate(self, events: list[Any]) -> list[Out]:
        out: list[Out] = []
        for event in events:
            if isinstance(event, ReplyText):
                text = event.text
                if self._need_separator and not text.startswith("\n"):
                    text = "\n" + text
                self._need_separator = False
                self._any_content = True
                out.append(ContentOut(text))
            elif isinstance(event, CallNamed):
                continue  # the name is sent with the parsed call (a malformed one becomes text)
            elif isinstance(event, CallFinished):
                out.append(self._finished(event))
        return out

    def _finished(self, event: CallFinished) -> Out:
        call = event.call
        declared = call is not None and (INTERPRETER if isinstance(call, CodeCall) else call.name) in self.choice.names
        if call is not None and self.choice.calls_enabled and declared:  # never a call the client did not declare
            item = openai_call(call, new_call_id())
            out = ToolCallOut(len(self.calls), item["id"], item["function"]["name"], item["function"]["arguments"])
            self.calls.append(out)
            return out
        if call is None:
            content = event.error.content if event.error is not None else ""
            body = content.strip()
        elif isinstance(call, CodeCall):
            body = call_block(INTERPRETER, {"code": call.code})
        else:
            body = call_block(call.name, call.arguments)
        text = f"{event.name}\n{body}"
        if self._any_content:
            text = "\n" + text
        self._any_content = True
        self._need_separator = True
        return ContentOut(text)


class QueueFull(Exception):
    """Every generation slot is busy and the waiting line is full."""


class RequestGate:
    """At most ``max_concurrency`` generations at once and ``max_queue`` requests waiting; beyond: QueueFull."""

    def __init__(self, max_concurrency: int = 1, max_queue: int = 32) -> None:
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._sem = asyncio.Semaphore(max_concurrency)
        self.waiting = 0
        self.active = 0

    async def acquire(self) -> None:
        if self._sem.locked() and self.waiting >= self.max_queue:
            raise QueueFull(f"{self.active} generations are running and {self.waiting} requests are waiting")
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._sem.release()
