"""The FastAPI app: routes, request checks, the queue, and errors in OpenAI's shape."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import socket
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from glm_agent.chatglm3.openai_format import chatglm3_tools
from glm_agent.chatglm3.parser import ASSISTANT_TOKEN
from glm_agent.chatglm3.tokenizer import SPECIAL_TOKENS, ChatGLM3Tokenizer
from glm_agent.errors import ContextLengthError, GlmAgentError
from glm_agent.models.base import BaseChatModel
from glm_agent.server._errors import APIError, param_path
from glm_agent.server._guard import RequestGuard
from glm_agent.server._prepare import (
    PreparedChat,
    PreparedCompletion,
    PromptBudget,
    prepare_chat,
    prepare_completion,
)
from glm_agent.server._protocol import head_timeout_protocol
from glm_agent.server._schemas import ChatRequest, CompletionRequest, request_body_openapi
from glm_agent.server._stream import (
    ContentOut,
    QueueFull,
    ReplyTranslator,
    RequestGate,
    StopScanner,
    ThreadStream,
    ToolCallOut,
)

__all__ = ["create_app", "serve", "APIError"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 1024
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_HEAD_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
PREPARE_WORKERS = 4


class _Disconnected(Exception):
    """The client went away before its answer was ready."""


def _backend_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, GlmAgentError):
        return APIError(500, f"{type(exc).__name__}: {exc}", type="server_error", code="model_error")
    logger.error("generation failed", exc_info=exc)
    return APIError(500, f"the model failed: {type(exc).__name__}: {exc}", type="server_error")


class _Server:
    """What the routes share: the backend, its tokenizer, the queue and the limits."""

    def __init__(
        self,
        model: Any,
        tokenizer: ChatGLM3Tokenizer,
        *,
        tools: Any,
        model_name: str | None,
        max_concurrency: int,
        max_queue: int,
        context_length: int | None,
        default_max_tokens: int,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name or getattr(model, "name", None) or "chatglm3"
        self.context_length = context_length if context_length is not None else getattr(model, "context_length", None)
        self.default_max_tokens = default_max_tokens
        self.created = int(time.time())
        if tools is not None and hasattr(tools, "openai_schemas"):
            tools = tools.openai_schemas()
        self.default_tools: list[dict[str, Any]] | None = list(tools) if tools else None
        chatglm3_tools(self.default_tools)  # refuse bad server tools at start, not per request
        self.gate = RequestGate(max_concurrency, max_queue)
        self.specials = list(SPECIAL_TOKENS)
        self.budget = PromptBudget(tokenizer, self.context_length)
        self.workers = concurrent.futures.ThreadPoolExecutor(PREPARE_WORKERS, thread_name_prefix="glm-agent-prepare")
        weakref.finalize(self, self.workers.shutdown, wait=False)  # the pool's threads end with the app

    # -- request checks ----------------------------------------------------------------------
    async def in_worker(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run request preparation (parsing, mapping, tokenizing) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.workers, function, *args)

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(
                404,
                f"the model {name!r} does not exist here; this server serves {self.model_name!r}",
                code="model_not_found",
                param="model",
            )

    def max_new_tokens(self, prompt_tokens: int, requested: int | None, param: str) -> int:
        ctx = self.context_length
        if ctx is None:
            return requested or self.default_max_tokens
        if prompt_tokens >= ctx or (requested is not None and prompt_tokens + requested > ctx):
            asked = f" plus {requested} new tokens" if requested is not None else ""
            raise APIError(
                400,
                f"the prompt has {prompt_tokens} tokens{asked}, but the model's context holds {ctx}; "
                "shorten the messages or lower max_tokens",
                code="context_length_exceeded",
                param=param,
            )
        return requested or min(self.default_max_tokens, ctx - prompt_tokens)

    def count_tokens(self, text: str) -> int:
        parts = text.split(ASSISTANT_TOKEN)
        return sum(len(self.tokenizer.encode(p)) for p in parts if p) + len(parts) - 1

    # -- generation --------------------------------------------------------------------------
    async def start(self, make_iter: Callable[[], Iterator[str]], request: Request) -> tuple[ThreadStream, str | None]:
        """Wait for a slot (or 429), start generating, and await the first delta (errors become statuses)."""
        try:
            await _unless_disconnected(request, self.gate.acquire(), undo=lambda _: self.gate.release())
        except QueueFull as exc:
            raise APIError(
                429, f"the server is busy: {exc}; retry later", type="rate_limit_exceeded", code="queue_full"
            ) from None
        stream = ThreadStream(make_iter, on_done=self.gate.release, name=self.model_name)
        try:
            first = await _unless_disconnected(request, _first(stream))
        except BaseException as exc:
            stream.close()
            if isinstance(exc, (_Disconnected, asyncio.CancelledError)):
                raise
            raise _backend_error(exc) from None
        return stream, first


async def _first(stream: ThreadStream) -> str | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


async def _unless_disconnected(request: Request, awaitable: Any, undo: Callable[[Any], None] | None = None) -> Any:
    """Await ``awaitable``, cancelling it (and raising ``_Disconnected``) if the client disconnects.

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
        raise _Disconnected()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


def _stream_end(obj: str, ident: str, created: int, model: str, usage: dict[str, int] | None) -> Iterator[str]:
    """The end of an SSE stream: the usage-only chunk (``stream_options.include_usage``), then ``[DONE]``."""
    if usage is not None:
        yield _sse({"id": ident, "object": obj, "created": created, "model": model, "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _deltas(stream: ThreadStream, first: str | None, scanner: StopScanner) -> AsyncIterator[str]:
    """The backend's text after stop strings; closes the backend stream when done or abandoned."""
    try:
        if first is not None:
            text = scanner.feed(first)
            if text:
                yield text
            async for delta in stream:
                if scanner.stopped:
                    break
                text = scanner.feed(delta)
                if text:
                    yield text
        tail = scanner.flush()
        if tail:
            yield tail
    finally:
        stream.close()


def create_app(
    model: Any,
    tokenizer: ChatGLM3Tokenizer,
    *,
    tools: Any = None,
    api_key: str | None = None,
    model_name: str | None = None,
    max_concurrency: int = 1,
    max_queue: int = 32,
    context_length: int | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    mcp_path: str | None = None,
    mcp_host: str = "127.0.0.1",
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> FastAPI:
    """The FastAPI app serving ``model`` (any backend with ``stream``; ``stream_ids`` for raw prompts).

    ``tools``: a ToolRegistry or OpenAI tool schemas offered when a request sends none.
    ``mcp_path``: also serve the ``tools`` registry as an MCP server (streamable HTTP) there;
    ``mcp_host`` is the address served on (loopback turns on the SDK's DNS-rebinding protection).
    ``api_key``: required on every route but ``/health`` (docs and the OpenAPI schema included).
    ``context_length``: refuse prompts that do not fit (default: ``model.context_length`` if any).
    ``max_request_bytes`` / ``body_timeout``: a larger body is a 413, a slower one a 408.
    """
    if max_request_bytes < 1 or body_timeout <= 0:
        raise ValueError("max_request_bytes and body_timeout must be positive")
    state = _Server(
        model,
        tokenizer,
        tools=tools,
        model_name=model_name,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        context_length=context_length,
        default_max_tokens=default_max_tokens,
    )
    app = FastAPI(title="glm-agent", description="OpenAI-compatible ChatGLM3 server")
    app.state.glm = state
    if mcp_path is not None:
        from glm_agent.mcp import mount_mcp
        from glm_agent.tools import ToolRegistry

        registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry()
        mount_mcp(app, registry, path=mcp_path, host=mcp_host)
    app.add_middleware(RequestGuard, api_key=api_key, max_request_bytes=max_request_bytes, body_timeout=body_timeout)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        problems = "; ".join(f"{param_path(e['loc']) or 'request'}: {e['msg']}" for e in errors[:5])
        err = APIError(422, f"invalid request: {problems}", param=param_path(errors[0]["loc"]) if errors else None)
        return JSONResponse(err.body(), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("request failed", exc_info=exc)
        err = APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
        return JSONResponse(err.body(), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": state.model_name, "active": state.gate.active, "waiting": state.gate.waiting}

    def _model_card() -> dict[str, Any]:
        return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "glm-agent"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        return {"object": "list", "data": [_model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model_card(name: str, request: Request) -> dict[str, Any]:
        state.check_model(name)
        return _model_card()

    @app.post("/v1/chat/completions", openapi_extra=request_body_openapi(ChatRequest))
    async def chat(request: Request) -> Response:
        prepared: PreparedChat = await state.in_worker(
            prepare_chat, await request.body(), tokenizer, state.default_tools, state.budget
        )
        body, choice, messages, prompt_ids = prepared.body, prepared.choice, prepared.messages, prepared.prompt_ids
        state.check_model(body.model)
        max_new = state.max_new_tokens(len(prompt_ids), body.requested_max_tokens(), "messages")
        params = body.generation_params(max_new)
        try:
            stream, first = await state.start(lambda: model.stream(messages, **params), request)
        except _Disconnected:
            return Response(status_code=499)
        translator = ReplyTranslator(choice)
        scanner = StopScanner(body.stop_list())
        ident, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())

        def finish() -> tuple[str, dict[str, int]]:
            completion = state.count_tokens(translator.raw)
            if translator.calls:
                reason = "tool_calls"
            elif not scanner.stopped and completion >= max_new:
                reason = "length"
            else:
                reason = "stop"
            return reason, _usage(len(prompt_ids), completion)

        if not body.stream:

            async def collect() -> dict[str, Any]:
                texts: list[str] = []
                async for delta in _deltas(stream, first, scanner):
                    texts.extend(o.text for o in translator.feed(delta) if isinstance(o, ContentOut))
                texts.extend(o.text for o in translator.close() if isinstance(o, ContentOut))
                reason, usage = finish()
                message: dict[str, Any] = {
                    "role": "assistant",
                    "content": "".join(texts) or (None if translator.calls else ""),
                }
                if translator.calls:
                    message["tool_calls"] = [
                        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                        for c in translator.calls
                    ]
                return {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": state.model_name,
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
                    "usage": usage,
                }

            try:
                return JSONResponse(await _unless_disconnected(request, collect()))
            except _Disconnected:
                return Response(status_code=499)
            except APIError:
                raise
            except Exception as exc:
                raise _backend_error(exc) from None
            finally:
                stream.close()

        def chunk(delta: dict[str, Any], reason: str | None = None, usage: dict[str, int] | None = None) -> str:
            data: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": state.model_name,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
            }
            if usage is not None:
                data["usage"] = usage
            return _sse(data)

        def render(outs: list[Any]) -> Iterator[str]:
            for out in outs:
                if isinstance(out, ContentOut):
                    yield chunk({"content": out.text})
                elif isinstance(out, ToolCallOut):
                    yield chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": out.index,
                                    "id": out.id,
                                    "type": "function",
                                    "function": {"name": out.name, "arguments": ""},
                                }
                            ]
                        }
                    )
                    yield chunk({"tool_calls": [{"index": out.index, "function": {"arguments": out.arguments}}]})

        async def events() -> AsyncIterator[str]:
            try:
                yield chunk({"role": "assistant", "content": ""})
                async for delta in _deltas(stream, first, scanner):
                    for line in render(translator.feed(delta)):
                        yield line
                for line in render(translator.close()):
                    yield line
                reason, usage = finish()
                yield chunk({}, reason, usage)
                for line in _stream_end(
                    "chat.completion.chunk", ident, created, state.model_name, usage if body.include_usage() else None
                ):
                    yield line
            except Exception as exc:
                yield _sse(_backend_error(exc).body())
            finally:
                stream.close()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/completions", openapi_extra=request_body_openapi(CompletionRequest))
    async def completions(request: Request) -> Response:
        if getattr(type(model), "stream_ids", BaseChatModel.stream_ids) is BaseChatModel.stream_ids:
            raise APIError(
                400,
                f"the backend {state.model_name!r} cannot continue raw prompts; use /v1/chat/completions",
                code="unsupported",
            )
        prepared: PreparedCompletion = await state.in_worker(
            prepare_completion, await request.body(), tokenizer, state.budget
        )
        body, prompt_ids = prepared.body, prepared.prompt_ids
        state.check_model(body.model)
        stops = body.stop_list()
        for i in body.stop_token_ids or []:
            if not 0 <= i < tokenizer.vocab_size:
                raise APIError(400, f"stop token id {i} is outside the vocabulary", param="stop_token_ids")
            text = tokenizer.decode([i])
            if text:  # eos decodes to nothing: backends always stop on it
                stops.append(text)
        max_new = state.max_new_tokens(len(prompt_ids), body.max_tokens, "prompt")
        params = body.generation_params(max_new)
        try:
            stream, first = await state.start(lambda: model.stream_ids(prompt_ids, **params), request)
        except _Disconnected:
            return Response(status_code=499)
        scanner = StopScanner(stops, remove=state.specials if body.skip_special_tokens else None)
        ident, created = "cmpl-" + uuid.uuid4().hex, int(time.time())
        produced: list[str] = []

        def finish() -> tuple[str, dict[str, int]]:
            completion = state.count_tokens("".join(produced))
            reason = "length" if not scanner.stopped and completion >= max_new else "stop"
            return reason, _usage(len(prompt_ids), completion)

        def payload(text: str, reason: str | None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": state.model_name,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
            }

        if not body.stream:

            async def collect() -> dict[str, Any]:
                async for delta in _deltas(stream, first, scanner):
                    produced.append(delta)
                reason, usage = finish()
                return {**payload("".join(produced), reason), "usage": usage}

            try:
                return JSONResponse(await _unless_disconnected(request, collect()))
            except _Disconnected:
                return Response(status_code=499)
            except Exception as exc:
                raise _backend_error(exc) from None
            finally:
                stream.close()

        async def events() -> AsyncIterator[str]:
            try:
                async for delta in _deltas(stream, first, scanner):
                    produced.append(delta)
                    yield _sse(payload(delta, None))
                reason, usage = finish()
                yield _sse({**payload("", reason), "usage": usage})
                for line in _stream_end(
                    "text_completion", ident, created, state.model_name, usage if body.include_usage() else None
                ):
                    yield line
            except Exception as exc:
                yield _sse(_backend_error(exc).body())
            finally:
                stream.close()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def serve(
    model: Any,
    tokenizer: ChatGLM3Tokenizer,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    head_timeout: float = DEFAULT_HEAD_TIMEOUT,
    **app_options: Any,
) -> None:
    """Serve ``model`` until interrupted (``app_options`` go to :func:`create_app`).

    ``head_timeout``: seconds a connection may take to send a request's head (slowloris), else a 408.
    """
    import uvicorn

    if app_options.get("mcp_path"):
        app_options.setdefault("mcp_host", host)
    if not head_timeout > 0:
        raise ValueError("head_timeout must be a positive number of seconds")
    app = create_app(model, tokenizer, **app_options)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=head_timeout_protocol(head_timeout))
    listener = _listen(host, port)  # a busy port fails here, before anything says "serving"
    port = listener.getsockname()[1]
    logger.info("serving %s on http://%s:%d/v1", app.state.glm.model_name, host, port)
    uvicorn.Server(config).run(sockets=[listener])


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
