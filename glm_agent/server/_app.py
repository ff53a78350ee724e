"""The FastAPI app: the shared state, the routes (module-level handlers), errors in OpenAI's shape."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from glm_agent._shutdown import sigterm_exits
from glm_agent.chatglm3.parser import ASSISTANT_TOKEN
from glm_agent.chatglm3.tokenizer import SPECIAL_TOKENS, ChatGLM3Tokenizer
from glm_agent.models.base import BaseChatModel, ChatModel
from glm_agent.server._errors import APIError, param_path
from glm_agent.server._guard import RequestGuard
from glm_agent.server._observe import MetricsMiddleware, ServerMetrics
from glm_agent.server._prepare import PromptBudget, prepare_chat, prepare_completion
from glm_agent.server._protocol import head_timeout_protocol
from glm_agent.server._respond import ChatReply, CompletionReply, respond
from glm_agent.server._schemas import ChatRequest, CompletionRequest, request_body_openapi
from glm_agent.server._stream import RequestGate, StopScanner

if TYPE_CHECKING:
    from glm_agent.web import Login, WebConfig

__all__ = ["create_app", "serve", "APIError"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 1024
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_HEAD_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
PREPARE_WORKERS = 4

T = TypeVar("T")


class ServerState:
    """What the routes share (``app.state.glm``): the backend, its tokenizer, the queue, the limits, the workers."""

    def __init__(
        self,
        model: ChatModel,
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
        self.model_name: str = model_name or getattr(model, "name", None) or "chatglm3"
        self.context_length: int | None = (
            context_length if context_length is not None else getattr(model, "context_length", None)
        )
        self.default_max_tokens = default_max_tokens
        self.created = int(time.time())
        self.gate = RequestGate(max_concurrency, max_queue)
        self.specials = list(SPECIAL_TOKENS)
        self.budget = PromptBudget(tokenizer, self.context_length)
        self.metrics: Any = None  # ServerMetrics, set by create_app
        self.workers = concurrent.futures.ThreadPoolExecutor(PREPARE_WORKERS, thread_name_prefix="glm-agent-prepare")
        weakref.finalize(self, self.workers.shutdown, wait=False)  # the pool's threads end with the app

    # -- request checks ----------------------------------------------------------------------
    async def in_worker(self, function: Callable[..., T], *args: Any) -> T:
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

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "glm-agent"}


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.glm
    return state


# -- routes --------------------------------------------------------------------------------------
async def health(request: Request) -> dict[str, Any]:
    state = _state(request)
    out = {"status": "ok", "model": state.model_name, "active": state.gate.active, "waiting": state.gate.waiting}
    cache_info = getattr(state.model, "cache_info", None)  # a local model's KV cache
    if callable(cache_info):
        out["kv_cache"] = cache_info()
    load = getattr(state.model, "engine_info", None)  # a local model's engine: sequences running and waiting
    if callable(load):
        out["engine"] = load()
    return out


async def metrics(request: Request) -> Response:
    """Prometheus text (behind the API key when one is set)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = _state(request).metrics.registry
    body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_state(request).model_card()]}


async def get_model(name: str, request: Request) -> dict[str, Any]:
    state = _state(request)
    state.check_model(name)
    return state.model_card()


async def chat_completions(request: Request) -> Response:
    state = _state(request)
    prepared = await state.in_worker(prepare_chat, await request.body(), state.tokenizer, state.budget)
    body, messages, prompt_tokens = prepared.body, prepared.messages, len(prepared.prompt_ids)
    state.check_model(body.model)
    max_new = state.max_new_tokens(prompt_tokens, body.requested_max_tokens(), "messages")
    params = body.generation_params(max_new)
    reply = ChatReply(
        prepared.choice,
        model_name=state.model_name,
        prompt_tokens=prompt_tokens,
        max_new=max_new,
        scanner=StopScanner(body.stop_list()),
        count_tokens=state.count_tokens,
    )
    return await respond(
        request,
        state.gate,
        lambda: state.model.stream(messages, **params),
        reply,
        stream=body.stream,
        include_usage=body.include_usage(),
    )


async def completions(request: Request) -> Response:
    state = _state(request)
    tokenizer = state.tokenizer
    stream_ids = getattr(state.model, "stream_ids", None)  # not part of ChatModel: raw prompts are optional
    if stream_ids is None or getattr(type(state.model), "stream_ids", None) is BaseChatModel.stream_ids:
        raise APIError(
            400,
            f"the backend {state.model_name!r} cannot continue raw prompts; use /v1/chat/completions",
            code="unsupported",
        )
    prepared = await state.in_worker(prepare_completion, await request.body(), tokenizer, state.budget)
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
    reply = CompletionReply(
        model_name=state.model_name,
        prompt_tokens=len(prompt_ids),
        max_new=max_new,
        scanner=StopScanner(stops, remove=state.specials if body.skip_special_tokens else None),
        count_tokens=state.count_tokens,
    )
    return await respond(
        request,
        state.gate,
        lambda: stream_ids(prompt_ids, **params),
        reply,
        stream=body.stream,
        include_usage=body.include_usage(),
    )


# -- errors --------------------------------------------------------------------------------------
async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    err = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
    return JSONResponse(err.body(), status_code=exc.status_code)


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    problems = "; ".join(f"{param_path(e['loc']) or 'request'}: {e['msg']}" for e in errors[:5])
    err = APIError(422, f"invalid request: {problems}", param=param_path(errors[0]["loc"]) if errors else None)
    return JSONResponse(err.body(), status_code=422)


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.error("request failed", exc_info=exc)
    err = APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
    return JSONResponse(err.body(), status_code=500)


def create_app(
    model: ChatModel,
    tokenizer: ChatGLM3Tokenizer,
    *,
    tools: Any = None,
    api_key: str | None = None,
    model_name: str | None = None,
    max_concurrency: int | None = None,
    max_queue: int = 32,
    context_length: int | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    mcp_path: str | None = None,
    mcp_host: str = "127.0.0.1",
    allowed_hosts: tuple[str, ...] = (),
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    ui_path: str | None = None,
    web_sessions: Callable[[], int] | None = None,
) -> FastAPI:
    """The FastAPI app serving ``model`` (any backend with ``stream``; ``stream_ids`` for raw prompts).

    ``tools``: a ToolRegistry served at ``mcp_path`` (MCP) and by the UI's agents; ``/v1`` never offers it
    (a client gets calls only for the tools it declared: it cannot run the server's).
    ``mcp_path``: also serve the ``tools`` registry as an MCP server (streamable HTTP) there;
    ``mcp_host`` is the address served on: ``/mcp`` answers only ``Host`` headers naming it (or
    ``allowed_hosts``) and refuses other origins.
    ``api_key``: required on every route but ``/health`` (docs and the OpenAPI schema included).
    ``context_length``: refuse prompts that do not fit (default: ``model.context_length`` if any).
    ``max_concurrency``: generations at once (default: a local model's ``max_batch``, which its engine
    decodes together; else 1); ``max_queue`` more wait, beyond that a 429.
    ``max_request_bytes`` / ``body_timeout``: a larger body is a 413, a slower one a 408.
    ``ui_path``: where the web UI will be mounted; it has its own door (login, Host and Origin
    checks, its own limits; :mod:`glm_agent.web`), so the Bearer key does not apply there.
    ``web_sessions``: how many web UI sessions are open (for ``/metrics``).

    ``/metrics`` answers Prometheus text: requests by route and status, running and waiting, time to
    first token, time per output token, request duration, tokens, the KV cache, interpreter runs.
    """
    if max_request_bytes < 1 or body_timeout <= 0:
        raise ValueError("max_request_bytes and body_timeout must be positive")
    state = ServerState(
        model,
        tokenizer,
        tools=tools,
        model_name=model_name,
        max_concurrency=max_concurrency or int(getattr(model, "max_batch", 1)),
        max_queue=max_queue,
        context_length=context_length,
        default_max_tokens=default_max_tokens,
    )
    app = FastAPI(title="glm-agent", description="OpenAI-compatible ChatGLM3 server")
    app.state.glm = state
    state.metrics = ServerMetrics(state, web_sessions=web_sessions)
    if mcp_path is not None:
        from glm_agent.mcp import mount_mcp
        from glm_agent.tools import ToolRegistry

        registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry()
        mount_mcp(app, registry, path=mcp_path, host=mcp_host, allowed_hosts=allowed_hosts)
    app.add_middleware(
        RequestGuard,
        api_key=api_key,
        max_request_bytes=max_request_bytes,
        body_timeout=body_timeout,
        own_login_path=ui_path,
    )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)  # outermost: counts the guard's refusals too
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _unexpected)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/models/{name:path}", get_model, methods=["GET"])
    chat_body, completion_body = request_body_openapi(ChatRequest), request_body_openapi(CompletionRequest)
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"], openapi_extra=chat_body)
    app.add_api_route("/v1/completions", completions, methods=["POST"], openapi_extra=completion_body)
    return app


def serve(
    model: ChatModel,
    tokenizer: ChatGLM3Tokenizer,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    head_timeout: float = DEFAULT_HEAD_TIMEOUT,
    ui: WebConfig | None = None,
    ui_login: Login | None = None,
    **app_options: Any,
) -> None:
    """Serve ``model`` until interrupted (Ctrl-C or SIGTERM; ``app_options`` go to :func:`create_app`).

    ``head_timeout``: seconds a connection may take to send a request's head (slowloris), else a 408.
    ``ui``: a :class:`glm_agent.web.WebConfig` to serve the browser UI at ``/ui`` as well, behind
    ``ui_login`` (a :class:`glm_agent.web.Login`: users, or the API key as the password); its
    sessions, kernels and files are closed on the way out.
    """
    import uvicorn

    if app_options.get("mcp_path"):
        app_options.setdefault("mcp_host", host)
    if not head_timeout > 0:
        raise ValueError("head_timeout must be a positive number of seconds")
    if ui is not None:
        app_options["ui_path"] = "/ui"
    app = create_app(model, tokenizer, **app_options)
    web = None
    if ui is not None:
        from glm_agent.web import mount_web_ui

        limit = app_options.get("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES)
        web = mount_web_ui(app, ui, path="/ui", login=ui_login, host=host, max_request_bytes=limit)
        sessions = web.sessions
        app.state.glm.metrics.watch_web_sessions(lambda: len(sessions))
    try:
        config = uvicorn.Config(
            app, host=host, port=port, log_level=log_level, http=head_timeout_protocol(head_timeout)
        )
        listener = _listen(host, port)  # a busy port fails here, before anything says "serving"
        port = listener.getsockname()[1]
        if web is not None:
            logger.info("web UI on http://%s:%d/ui", host, port)
        logger.info("serving %s on http://%s:%d/v1", app.state.glm.model_name, host, port)
        with sigterm_exits():
            uvicorn.Server(config).run(sockets=[listener])
    finally:
        if web is not None:
            web.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
