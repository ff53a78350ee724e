"""One generation answered as OpenAI wants it: a JSON body, or server-sent events.

:func:`respond` is shared by the routes: wait for a slot, start the backend, then either collect
the reply (a client that leaves gets 499 and stops generation) or stream it as SSE (an error
mid-stream becomes an ``{"error": ...}`` event). What differs between routes is a :class:`Reply`:
how backend text becomes chunks and the final body.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry.trace import use_span

from glm_agent._thread_stream import ThreadStream
from glm_agent.chatglm3.openai_format import ToolChoice
from glm_agent.server._errors import APIError, Disconnected, backend_error
from glm_agent.server._observe import RequestObserver
from glm_agent.server._stream import ContentOut, Out, QueueFull, ReplyTranslator, RequestGate, StopScanner, ToolCallOut
from glm_agent.telemetry import in_context

__all__ = ["Reply", "ChatReply", "CompletionReply", "respond", "unless_disconnected"]

T = TypeVar("T")


class Reply:
    """One request's answer under construction: counts, finish reason, usage, and the stream's end.

    Subclasses turn backend text into chunks (``feed``/``close``) and build the JSON ``body``.
    """

    chunk_object = ""  # the ``object`` of stream chunks

    def __init__(
        self,
        *,
        prefix: str,
        model_name: str,
        prompt_tokens: int,
        max_new: int,
        scanner: StopScanner,
        count_tokens: Callable[[str], int],
    ) -> None:
        self.id = prefix + uuid.uuid4().hex
        self.created = int(time.time())
        self.model_name = model_name
        self.prompt_tokens = prompt_tokens
        self.max_new = max_new
        self.scanner = scanner
        self.count_tokens = count_tokens
        self.reason = "stop"
        self.usage: dict[str, Any] = {}
        self.cached_tokens: int | None = None  # prompt tokens the backend reused from its cache, when it says

    def opening(self) -> list[dict[str, Any]]:
        """Chunks sent before any text."""
        return []

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Take text after stop strings; the chunks to send now (when streaming)."""
        raise NotImplementedError

    def close(self) -> list[dict[str, Any]]:
        """The backend is done; the remaining chunks, ending with the one that carries finish_reason."""
        raise NotImplementedError

    def body(self) -> dict[str, Any]:
        """The whole answer as one JSON body (after ``close``)."""
        raise NotImplementedError

    def _finish(self, text: str, called: bool = False) -> None:
        """Set ``reason`` and ``usage`` from the whole reply text (re-encoded: backends stream text, not ids)."""
        completion = self.count_tokens(text)
        if called:
            self.reason = "tool_calls"
        elif not self.scanner.stopped and completion >= self.max_new:
            self.reason = "length"
        else:
            self.reason = "stop"
        total = self.prompt_tokens + completion
        self.usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion, "total_tokens": total}
        if self.cached_tokens is not None:  # as OpenAI reports prompt caching
            self.usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}

    def ending(self, usage: dict[str, Any] | None) -> Iterator[str]:
        """The end of an SSE stream: the usage-only chunk (``stream_options.include_usage``), then ``[DONE]``."""
        if usage is not None:
            yield sse(self._envelope([], usage=usage))
        yield "data: [DONE]\n\n"

    def _envelope(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """What every chunk and body says around its choices."""
        data = {"id": self.id, "object": self.chunk_object, "created": self.created, "model": self.model_name}
        return {**data, "choices": choices, **extra}


class ChatReply(Reply):
    """``/v1/chat/completions``: content and tool calls, parsed from ChatGLM3's reply as it streams."""

    chunk_object = "chat.completion.chunk"

    def __init__(self, choice: ToolChoice, **common: Any) -> None:
        super().__init__(prefix="chatcmpl-", **common)
        self.translator = ReplyTranslator(choice)
        self.texts: list[str] = []

    def opening(self) -> list[dict[str, Any]]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def feed(self, text: str) -> list[dict[str, Any]]:
        return self._render(self.translator.feed(text))

    def close(self) -> list[dict[str, Any]]:
        chunks = self._render(self.translator.close())
        self._finish(self.translator.raw, called=bool(self.translator.calls))
        return [*chunks, self._chunk({}, self.reason)]  # usage comes once, after it (include_usage), as OpenAI sends it

    def body(self) -> dict[str, Any]:
        calls = self.translator.calls
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.texts) or (None if calls else "")}
        if calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
            ]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.reason}
        return {**self._envelope([choice], usage=self.usage), "object": "chat.completion"}

    def _render(self, outs: list[Out]) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        for out in outs:
            if isinstance(out, ContentOut):
                self.texts.append(out.text)
                chunks.append(self._chunk({"content": out.text}))
            elif isinstance(out, ToolCallOut):
                head = {
                    "index": out.index,
                    "id": out.id,
                    "type": "function",
                    "function": {"name": out.name, "arguments": ""},
                }
                chunks.append(self._chunk({"tool_calls": [head]}))
                chunks.append(
                    self._chunk({"tool_calls": [{"index": out.index, "function": {"arguments": out.arguments}}]})
                )
        return chunks

    def _chunk(self, delta: dict[str, Any], reason: str | None = None, **usage: dict[str, int]) -> dict[str, Any]:
        return self._envelope([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}], **usage)


class CompletionReply(Reply):
    """``/v1/completions``: the continuation text as it comes."""

    chunk_object = "text_completion"

    def __init__(self, **common: Any) -> None:
        super().__init__(prefix="cmpl-", **common)
        self.produced: list[str] = []

    def feed(self, text: str) -> list[dict[str, Any]]:
        self.produced.append(text)
        return [self._payload(text, None)]

    def close(self) -> list[dict[str, Any]]:
        self._finish("".join(self.produced))
        return [self._payload("", self.reason)]  # usage comes once, after it (include_usage)

    def body(self) -> dict[str, Any]:
        return {**self._payload("".join(self.produced), self.reason), "usage": self.usage}

    def _payload(self, text: str, reason: str | None) -> dict[str, Any]:
        return self._envelope([{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}])


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def respond(
    request: Request,
    gate: RequestGate,
    make_iter: Callable[[], Iterator[str]],
    reply: Reply,
    *,
    stream: bool,
    include_usage: bool,
) -> Response:
    """Generate with ``make_iter`` once ``gate`` has a slot and answer ``reply`` as JSON or as SSE."""
    state = request.app.state.glm
    observer = RequestObserver(
        getattr(state, "metrics", None),
        request.headers,
        reply.model_name,
        str(getattr(state.model, "provider", "glm_agent")),
    )
    started: list[Iterator[str]] = []

    def start() -> Iterator[str]:  # in the generation thread: the server span is current for the backend
        if not observer.span.is_recording():  # no SDK: nothing to make current
            started.append(make_iter())
            return started[0]
        with use_span(observer.span):
            started.append(make_iter())
        return in_context(started[0], observer.span)

    def close_reply() -> list[dict[str, Any]]:
        stats = getattr(started[0], "stats", None) if started else None  # LocalModel's GenerationStream
        if stats is not None:
            reply.cached_tokens = int(stats.reused_tokens)
        chunks = reply.close()
        observer.finish(reply.usage, reply.reason)
        return chunks

    try:
        backend, first = await _start(request, gate, start, reply.model_name)
    except Disconnected:
        observer.fail("client_disconnected")
        return Response(status_code=499)
    except BaseException as exc:
        observer.fail(type(exc).__name__, exc)
        raise
    observer.first_text()
    texts = _texts(backend, first, reply.scanner)
    if not stream:

        async def collect() -> dict[str, Any]:
            async for text in texts:
                reply.feed(text)
            close_reply()
            return reply.body()

        try:
            return JSONResponse(await unless_disconnected(request, collect()))
        except Disconnected:
            observer.fail("client_disconnected")
            return Response(status_code=499)
        except Exception as exc:
            observer.fail(type(exc).__name__, exc)
            raise backend_error(exc) from None
        finally:
            backend.close()

    async def events() -> AsyncIterator[str]:
        try:
            for chunk in reply.opening():
                yield sse(chunk)
            async for text in texts:
                for chunk in reply.feed(text):
                    yield sse(chunk)
            for chunk in close_reply():
                yield sse(chunk)
            for line in reply.ending(reply.usage if include_usage else None):
                yield line
        except Exception as exc:
            observer.fail(type(exc).__name__, exc)
            yield sse(backend_error(exc).body())
        finally:
            observer.fail("client_disconnected")  # a no-op once finished
            backend.close()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _start(
    request: Request, gate: RequestGate, make_iter: Callable[[], Iterator[str]], name: str
) -> tuple[ThreadStream[str], list[str]]:
    """Wait for a slot (or 429), start generating, and await the first text (errors become statuses)."""
    try:
        await unless_disconnected(request, gate.acquire(), undo=lambda _: gate.release())
    except QueueFull as exc:
        raise APIError(
            429, f"the server is busy: {exc}; retry later", type="rate_limit_exceeded", code="queue_full"
        ) from None
    backend = ThreadStream(make_iter, name=f"{name}-generate", on_done=gate.release)
    try:
        first = await unless_disconnected(request, backend.take())
    except BaseException as exc:
        backend.close()
        if isinstance(exc, (Disconnected, asyncio.CancelledError)):
            raise
        raise backend_error(exc) from None
    return backend, first


async def _texts(backend: ThreadStream[str], first: list[str], scanner: StopScanner) -> AsyncIterator[str]:
    """The backend's text after stop strings, a batch at a time; closes the backend when done or abandoned."""
    try:
        batch = first
        while batch and not scanner.stopped:
            text = scanner.feed("".join(batch))
            if text:
                yield text
            batch = await backend.take()
        tail = scanner.flush()
        if tail:
            yield tail
    finally:
        backend.close()


async def unless_disconnected(request: Request, awaitable: Awaitable[T], undo: Callable[[T], None] | None = None) -> T:
    """Await ``awaitable``, cancelling it (and raising ``Disconnected``) if the client disconnects.

    ``undo`` gets a result that arrived anyway while cancelling (e.g. a queue slot to give back).
    """
    task = asyncio.ensure_future(awaitable)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        try:
            late = await task
        except BaseException:  # noqa: S110 (the cancelled task's own error is of no interest)
            pass
        else:
            if undo is not None:
                undo(late)
        raise Disconnected()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
