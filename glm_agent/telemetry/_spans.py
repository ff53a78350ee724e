"""Spans of one agent run on the GenAI conventions: ``invoke_agent``, a ``chat`` per model turn, an
``execute_tool`` per call. On ``opentelemetry-api`` alone they cost next to nothing (no SDK: no-op spans).

Spans are never made current across a ``yield``: a driver activates one only around a model
call, a tool call or a code run (:meth:`RunTrace.active`), so that what runs inside (an HTTP
request to a model server, an MCP call) sees it and propagates ``traceparent``.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from glm_agent.telemetry import semconv as sc

__all__ = ["RunTrace", "tracer", "truncate", "in_context", "in_context_async", "new_conversation_id"]

_VERSION = "0.1.0"


_tracer: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    """glm-agent's tracer (a proxy until an SDK is configured; it follows the provider set later)."""
    global _tracer
    if _tracer is None:
        _tracer = trace.get_tracer("glm_agent", _VERSION, schema_url=sc.SCHEMA_URL)
    return _tracer


def truncate(text: str, limit: int = sc.MAX_CONTENT_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text) - limit} more characters]"


def _messages_json(messages: Sequence[Any]) -> str:
    """Messages as the GenAI conventions' JSON (role and text parts), cut to the content limit."""
    out = []
    for message in messages:
        data = message.model_dump() if hasattr(message, "model_dump") else dict(message)
        role = str(data.get("role", ""))
        parts: list[dict[str, Any]] = [{"type": "text", "content": str(data.get("content", ""))}]
        out.append({"role": role, "parts": parts})
    return truncate(json.dumps(out, ensure_ascii=False, default=str))


class RunTrace:
    """The spans of one run: start it, report model turns and calls, end it once."""

    def __init__(self, *, agent: str, conversation_id: str, model: str, provider: str) -> None:
        self.conversation_id = conversation_id
        self.model = model
        self.provider = provider
        self._tracer = tracer()
        self._calls = 0
        self.span = self._tracer.start_span(
            f"invoke_agent {agent}",
            kind=SpanKind.INTERNAL,
            attributes={
                sc.OPERATION: "invoke_agent",
                sc.AGENT_NAME: agent,
                sc.CONVERSATION: conversation_id,
                sc.REQUEST_MODEL: model,
                **sc.provider_attributes(provider),
            },
        )
        #: False without an SDK (or when sampled out): then nothing else is built, and nothing is made current
        self.recording = self.span.is_recording()
        self._context = trace.set_span_in_context(self.span) if self.recording else None
        self.ended = False
        # what the agent's drivers leave here: the span of the action in flight, a model turn's text and stream
        self.current: Span | None = None
        self.text = ""
        self.stream: Any = None
        self.model_object: Any = None

    # -- spans ----------------------------------------------------------------------------------
    def start_chat(self, messages: Sequence[Any], params: Mapping[str, Any]) -> Span:
        if not self.recording:
            return trace.INVALID_SPAN
        attributes: dict[str, Any] = {
            sc.OPERATION: "chat",
            sc.CONVERSATION: self.conversation_id,
            sc.REQUEST_MODEL: self.model,
            **sc.provider_attributes(self.provider),
        }
        for key, name in sc.REQUEST_PARAMS.items():
            value = params.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                attributes[name] = value
        if params.get("stop"):
            attributes["gen_ai.request.stop_sequences"] = [str(s) for s in params["stop"]]
        if sc.capture_content():
            attributes[sc.INPUT_MESSAGES] = _messages_json(messages)
        return self._tracer.start_span(
            f"chat {self.model}", context=self._context, kind=SpanKind.CLIENT, attributes=attributes
        )

    def end_chat(self, span: Span, *, text: str, stats: Any = None, usage: Any = None, error: Exception | None) -> None:
        """``stats``: a local model's ``GenerationStats``; ``usage``: a server's usage dict."""
        if not span.is_recording():
            return
        if stats is not None:
            span.set_attribute(sc.INPUT_TOKENS, int(stats.prompt_tokens))
            span.set_attribute(sc.OUTPUT_TOKENS, len(stats.output_ids))
            span.set_attribute(sc.CACHED_INPUT_TOKENS, int(stats.reused_tokens))
            if stats.reused_from:
                span.set_attribute("glm_agent.cache.source", stats.reused_from)
            if stats.output_ids or stats.finish_reason != "closed":
                span.set_attribute("glm_agent.time_to_first_token_s", float(stats.time_to_first_token))
            span.set_attribute(sc.FINISH_REASONS, [stats.finish_reason or "stop"])
        elif isinstance(usage, Mapping):
            if "prompt_tokens" in usage:
                span.set_attribute(sc.INPUT_TOKENS, int(usage["prompt_tokens"]))
            if "completion_tokens" in usage:
                span.set_attribute(sc.OUTPUT_TOKENS, int(usage["completion_tokens"]))
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            if cached is not None:
                span.set_attribute(sc.CACHED_INPUT_TOKENS, int(cached))
        if sc.capture_content():
            span.set_attribute(sc.OUTPUT_MESSAGES, _messages_json([{"role": "assistant", "content": text}]))
        if error is not None:
            span.record_exception(error)
            span.set_attribute(sc.ERROR_TYPE, type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        span.end()

    def start_tool(self, name: str, arguments: Any = None, *, code: str | None = None) -> Span:
        self._calls += 1
        if not self.recording:
            return trace.INVALID_SPAN
        attributes: dict[str, Any] = {
            sc.OPERATION: "execute_tool",
            sc.CONVERSATION: self.conversation_id,
            sc.TOOL_NAME: name,
            sc.TOOL_CALL_ID: f"{self.conversation_id}-{self._calls}",
            sc.TOOL_TYPE: "extension" if code is not None else "function",
        }
        if sc.capture_content():
            if code is not None:
                attributes[sc.TOOL_ARGUMENTS] = truncate(json.dumps({"code": code}, ensure_ascii=False))
            elif arguments is not None:
                attributes[sc.TOOL_ARGUMENTS] = truncate(json.dumps(arguments, ensure_ascii=False, default=str))
        return self._tracer.start_span(
            f"execute_tool {name}", context=self._context, kind=SpanKind.INTERNAL, attributes=attributes
        )

    def end_tool(
        self, span: Span, *, ok: bool, observation: str | None, error: str | None = None, **facts: Any
    ) -> None:
        for key, value in facts.items():
            if value is not None:
                span.set_attribute(f"glm_agent.{key}", value)
        if sc.capture_content() and observation is not None:
            span.set_attribute(sc.TOOL_RESULT, truncate(observation))
        if not ok:
            span.set_attribute(sc.ERROR_TYPE, error or "tool_error")
            span.set_status(Status(StatusCode.ERROR, error or "the call failed"))
        span.end()

    def event(self, name: str, **attributes: Any) -> None:
        """An event on the run's span (a parse error, a refused call)."""
        if not self.recording:
            return
        clean = {k: v for k, v in attributes.items() if v is not None}
        self.span.add_event(name, {sc.CONVERSATION: self.conversation_id, **clean})

    def end(self, *, error_kind: str | None = None, message: str | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        if error_kind is not None:
            self.span.set_attribute(sc.ERROR_TYPE, error_kind)
            self.span.set_status(Status(StatusCode.ERROR, (message or error_kind)[:200]))
        self.span.end()

    # -- context ----------------------------------------------------------------------------------
    def active(self, span: Span | None = None) -> contextlib.AbstractContextManager[Any]:
        """Make ``span`` (else the run's span) current for what runs inside (no ``yield`` inside)."""
        if not self.recording:
            return contextlib.nullcontext()
        return trace.use_span(
            span or self.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )


def in_context(iterator: Iterator[str], span: Span) -> Iterator[str]:
    """``iterator``'s items, each produced with ``span`` current (a model server request then carries it)."""
    ctx = trace.set_span_in_context(span)
    try:
        while True:
            token = otel_context.attach(ctx)
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                otel_context.detach(token)
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


async def in_context_async(iterator: AsyncIterator[str], span: Span) -> AsyncIterator[str]:
    ctx = trace.set_span_in_context(span)
    try:
        while True:
            token = otel_context.attach(ctx)
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration:
                return
            finally:
                otel_context.detach(token)
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def new_conversation_id() -> str:
    return uuid.uuid4().hex
