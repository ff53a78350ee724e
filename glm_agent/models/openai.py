"""A chat backend on any OpenAI-compatible server: ``glm-agent serve``, vLLM, or a hosted provider.

Two modes, both yielding the raw ChatGLM3 reply text the agent parses like any other backend's:

- ``chat``: ``/chat/completions`` with tools; the agent's history is mapped to OpenAI's shape and
  returned ``tool_calls`` are mapped back to ChatGLM3 call segments.
- ``completion``: the exact ChatGLM3 prompt, built by our tokenizer, sent as token ids to
  ``/completions`` with ChatGLM3's stop ids and special tokens kept: exact prompting on a vLLM
  server running chatglm3-6b.

Connection errors, 429 and 5xx are retried with exponential backoff (``Retry-After`` honoured);
other 4xx are not. Every malformed answer is a :class:`ModelError` that says what was wrong.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from glm_agent.chatglm3.openai_format import chatglm3_to_openai
from glm_agent.errors import GlmAgentError, ModelError
from glm_agent.messages import MessageLike, to_messages
from glm_agent.models._openai_stream import (
    Assembler,
    ChatAssembler,
    CompletionAssembler,
    ReplyReader,
    error_from_body,
    read_json,
)
from glm_agent.models.base import BaseChatModel, GenerationParams
from glm_agent.telemetry import inject_traceparent

__all__ = ["OpenAIModel", "retry_decision"]

logger = logging.getLogger(__name__)

_RETRYABLE = (httpx.NetworkError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.RemoteProtocolError)
_SEND_ERRORS = (*_RETRYABLE, httpx.TimeoutException)  # what retry_decision judges; others propagate


def _normalise_base_url(url: str) -> str:
    url = url.rstrip("/")
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
    return url


class OpenAIModel(BaseChatModel):
    """Chat with an OpenAI-compatible server.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (a bare host gets ``/v1``).
        model: the model id to request (default: the first one ``GET /models`` lists).
        mode: ``"chat"`` or ``"completion"`` (needs ``tokenizer``).
        api_key: sent as ``Authorization: Bearer KEY``.
        tokenizer: a ChatGLM3Tokenizer or a path to one (completion mode).
        timeout: seconds to wait for each read (a token may take a while on a busy server).
        connect_timeout: seconds to wait for a connection.
        max_retries: retries on connection errors, 429 and 5xx.
        backoff: first retry delay in seconds, doubled each time (at most ``max_backoff``).
        transport / async_transport: httpx transports (e.g. for a proxy or tests of a remote API).
    """

    provider = "openai"  # gen_ai.provider.name in traces

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str | None = None,
        *,
        mode: Literal["chat", "completion"] = "chat",
        api_key: str | None = None,
        tokenizer: Any = None,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if mode not in ("chat", "completion"):
            raise ValueError(f"mode must be 'chat' or 'completion', not {mode!r}")
        if max_retries < 0 or backoff < 0:
            raise ValueError("max_retries and backoff must be >= 0")
        if isinstance(tokenizer, (str, Path)):
            from glm_agent.chatglm3.tokenizer import ChatGLM3Tokenizer

            tokenizer = ChatGLM3Tokenizer.from_pretrained(tokenizer)
        if mode == "completion" and tokenizer is None:
            raise ValueError(
                "completion mode builds the ChatGLM3 prompt itself: pass tokenizer= (a ChatGLM3Tokenizer or its path)"
            )
        self.base_url = _normalise_base_url(base_url)
        self.model = model
        self.mode = mode
        self.tokenizer = tokenizer
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.headers = {"Accept": "text/event-stream", **(headers or {})}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._transport = transport
        self._async_transport = async_transport
        self._client: httpx.Client | None = None
        self.name = f"openai:{model or self.base_url}"
        #: the usage the server reported for the last reply (None when it sent none)
        self.last_usage: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"OpenAIModel({self.base_url!r}, model={self.model!r}, mode={self.mode!r})"

    # -- requests ------------------------------------------------------------------------------
    def _sampling(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            p = GenerationParams.of(params)
        except ValueError as exc:
            raise ValueError(f"bad generation parameters for {self.name}: {exc}") from None
        body: dict[str, Any] = {"max_tokens": p.max_new_tokens, "temperature": p.temperature, "top_p": p.top_p}
        if p.top_k is not None:
            body["top_k"] = p.top_k
        if p.repetition_penalty != 1.0:
            body["repetition_penalty"] = p.repetition_penalty
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        return body

    def _chat_body(self, messages: Sequence[MessageLike], params: dict[str, Any]) -> dict[str, Any]:
        oa_messages, tools = chatglm3_to_openai(messages)
        body: dict[str, Any] = {"messages": oa_messages, "stream": True, **_USAGE, **self._sampling(params)}
        if tools:
            body["tools"] = tools
        return body

    def _completion_body(self, prompt_ids: Sequence[int], params: dict[str, Any]) -> dict[str, Any]:
        stop_ids = list(self.tokenizer.stop_ids) if self.tokenizer is not None else []
        return {
            "prompt": [int(i) for i in prompt_ids],
            "stream": True,
            **_USAGE,
            "stop_token_ids": stop_ids,
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
            **self._sampling(params),
        }

    def _request(
        self, messages: Sequence[MessageLike], params: dict[str, Any]
    ) -> tuple[str, dict[str, Any], type[Assembler]]:
        if self.mode == "chat":
            return "/chat/completions", self._chat_body(messages, params), ChatAssembler
        ids = self.tokenizer.apply_chat_template(to_messages(messages), add_generation_prompt=True)
        return "/completions", self._completion_body(ids, params), CompletionAssembler

    def _decide(self, attempt: int, url: str, outcome: httpx.Response | httpx.HTTPError) -> float | GlmAgentError:
        decision = retry_decision(
            attempt, outcome, url=url, max_retries=self.max_retries, backoff=self.backoff, max_backoff=self.max_backoff
        )
        if not isinstance(decision, GlmAgentError):
            why = type(outcome).__name__ if isinstance(outcome, Exception) else f"HTTP {outcome.status_code}"
            logger.warning("retrying %s in %.2f s after %s", url, decision, why)
        return decision

    # -- sync ----------------------------------------------------------------------------------
    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, transport=self._transport, headers=self.headers)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> OpenAIModel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        url = self.base_url + path
        for attempt in itertools.count():
            outcome: httpx.Response | httpx.HTTPError
            try:
                outcome = self.client.send(
                    self.client.build_request(method, url, json=body, headers=inject_traceparent({})), stream=True
                )
            except _SEND_ERRORS as exc:
                outcome = exc
            else:
                if outcome.status_code < 400:
                    return outcome
                outcome.read()
                outcome.close()
            decision = self._decide(attempt, url, outcome)
            if isinstance(decision, GlmAgentError):
                raise decision
            time.sleep(decision)
        raise AssertionError("unreachable")  # pragma: no cover

    def _model_name(self) -> str:
        if self.model is None:
            response = self._send("GET", "/models", None)
            try:
                response.read()
                self.model = _first_model(self.base_url, read_json(self.base_url + "/models", response))
            finally:
                response.close()
        return self.model

    def _events(self, path: str, body: dict[str, Any], assembler_type: type[Assembler]) -> Iterator[str]:
        body = {"model": self._model_name(), **body}
        reader = ReplyReader(self.base_url + path, assembler_type)
        response = self._send("POST", path, body)
        try:
            if not reader.is_stream(response):
                response.read()
                yield from reader.whole(response)
            else:
                with reader.broken_stream():
                    for line in response.iter_lines():
                        yield from reader.line(line)
                        if reader.done:
                            break
                yield from reader.end()
            self.last_usage = reader.usage
        finally:
            response.close()

    def stream(self, messages: Sequence[MessageLike], **params: Any) -> Iterator[str]:
        path, body, assembler = self._request(messages, params)
        return self._events(path, body, assembler)

    def stream_ids(self, prompt_ids: Sequence[int], **params: Any) -> Iterator[str]:
        """Continue raw prompt ids on the server's ``/completions`` (any mode)."""
        return self._events("/completions", self._completion_body(prompt_ids, params), CompletionAssembler)

    # -- async ---------------------------------------------------------------------------------
    async def _asend(
        self, client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None
    ) -> httpx.Response:
        url = self.base_url + path
        for attempt in itertools.count():
            outcome: httpx.Response | httpx.HTTPError
            try:
                outcome = await client.send(
                    client.build_request(method, url, json=body, headers=inject_traceparent({})), stream=True
                )
            except _SEND_ERRORS as exc:
                outcome = exc
            else:
                if outcome.status_code < 400:
                    return outcome
                await outcome.aread()
                await outcome.aclose()
            decision = self._decide(attempt, url, outcome)
            if isinstance(decision, GlmAgentError):
                raise decision
            await asyncio.sleep(decision)
        raise AssertionError("unreachable")  # pragma: no cover

    async def astream(self, messages: Sequence[MessageLike], **params: Any) -> AsyncIterator[str]:
        path, body, assembler_type = self._request(messages, params)
        reader = ReplyReader(self.base_url + path, assembler_type)
        async with httpx.AsyncClient(
            timeout=self.timeout, transport=self._async_transport, headers=self.headers
        ) as client:
            if self.model is None:
                response = await self._asend(client, "GET", "/models", None)
                try:
                    await response.aread()
                    self.model = _first_model(self.base_url, read_json(self.base_url + "/models", response))
                finally:
                    await response.aclose()
            response = await self._asend(client, "POST", path, {"model": self.model, **body})
            try:
                if not reader.is_stream(response):
                    await response.aread()
                    for piece in reader.whole(response):
                        yield piece
                else:
                    with reader.broken_stream():
                        async for line in response.aiter_lines():
                            for piece in reader.line(line):
                                yield piece
                            if reader.done:
                                break
                    for piece in reader.end():
                        yield piece
                self.last_usage = reader.usage
            finally:
                await response.aclose()


#: ask for the usage chunk at the end of a stream (OpenAI's and vLLM's way: ``last_usage``)
_USAGE: dict[str, Any] = {"stream_options": {"include_usage": True}}


def retry_decision(
    attempt: int,
    outcome: httpx.Response | httpx.HTTPError,
    *,
    url: str,
    max_retries: int,
    backoff: float,
    max_backoff: float,
) -> float | GlmAgentError:
    """What to do after try number ``attempt`` (0-based) of a request ended in ``outcome``.

    Returns the seconds to wait before the next try, or the error (a :class:`ModelError`) that ends the
    request. Connection errors, 429 and 5xx are retried (``Retry-After`` honoured, at most 60 s),
    with exponential backoff capped at ``max_backoff``; a read timeout and other 4xx are not.
    ``outcome`` is an error response (its body read) or the exception ``send`` raised. Pure.
    """
    last = attempt >= max_retries
    delay = min(max_backoff, backoff * 2.0**attempt)
    if isinstance(outcome, httpx.HTTPError):
        if isinstance(outcome, _RETRYABLE):
            if last:
                error = ModelError(f"cannot reach {url} after {attempt + 1} tries: {type(outcome).__name__}: {outcome}")
                error.__cause__ = outcome
                return error
            return delay
        error = ModelError(f"{url} did not answer in time ({type(outcome).__name__}); raise timeout=")
        error.__cause__ = outcome
        return error
    if (outcome.status_code == 429 or outcome.status_code >= 500) and not last:
        after = outcome.headers.get("retry-after")
        try:
            return min(float(after), 60.0) if after is not None else delay
        except ValueError:
            return delay
    try:
        body: Any = outcome.json()
    except ValueError:
        body = outcome.text
    return error_from_body(url, outcome.status_code, body)


def _first_model(base_url: str, data: Any) -> str:
    items = data.get("data") if isinstance(data, dict) else None
    if (
        not isinstance(items, list)
        or not items
        or not isinstance(items[0], dict)
        or not isinstance(items[0].get("id"), str)
    ):
        raise ModelError(f"{base_url}/models lists no model; pass model= explicitly")
    name: str = items[0]["id"]
    return name
