"""The ASGI layer in front of the routes: API key, request size and body read time, before any route runs.

Only ``GET /health`` is open without a key (``/docs`` and ``/openapi.json`` too need it). Keys compare as
UTF-8 bytes in constant time. A body longer than ``max_request_bytes`` is a 413 (from ``Content-Length``
before a byte is read, else as soon as it passes the limit); a body not complete within ``body_timeout``
seconds is a 408. The whole body is read here, so a route never waits on a slow client.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

from glm_agent.server._errors import APIError

__all__ = ["RequestGuard", "OPEN_PATHS"]

OPEN_PATHS = frozenset({"/health"})

Scope = dict[str, Any]
Message = dict[str, Any]


async def send_error(send: Any, error: APIError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer ``error`` in OpenAI's shape (and close: the rest of the request is not read)."""
    body = json.dumps(error.body()).encode()
    extra = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    extra.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": extra + (headers or [])})
    await send({"type": "http.response.body", "body": body})


def _bearer(scope: Scope) -> bytes:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""


class RequestGuard:
    """ASGI middleware: auth, then the size and time limits on the body, then the app."""

    def __init__(
        self,
        app: Any,
        *,
        api_key: str | None,
        max_request_bytes: int,
        body_timeout: float,
        own_login_path: str | None = None,
    ) -> None:
        self.app = app
        self.api_key = None if api_key is None else api_key.encode("utf-8")
        self.max_request_bytes = max_request_bytes
        self.body_timeout = body_timeout
        self.own_login_path = own_login_path  # the web UI: its own login, uploads, streaming

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self._own_login(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self.api_key is not None and scope["path"] not in OPEN_PATHS:
            token = _bearer(scope)
            if not token:
                error = APIError(
                    401, "missing API key: send the header 'Authorization: Bearer KEY'", code="invalid_api_key"
                )
                await send_error(send, error, [(b"www-authenticate", b"Bearer")])
                return
            if not hmac.compare_digest(token, self.api_key):
                await send_error(send, APIError(401, "incorrect API key", code="invalid_api_key"))
                return
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = self._content_length(scope)
        if declared is not None and declared > self.max_request_bytes:
            await send_error(send, self._too_large())
            return
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.body_timeout)
        except TimeoutError:
            error = APIError(
                408, f"the request body did not arrive within {self.body_timeout:g} s", code="request_timeout"
            )
            await send_error(send, error)
            return
        except _TooLarge:
            await send_error(send, self._too_large())
            return
        if body is None:  # the client went away while sending
            return
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self) -> APIError:
        return APIError(
            413,
            f"the request body is larger than {self.max_request_bytes} bytes (the server's --max-request-bytes)",
            code="request_too_large",
        )

    def _own_login(self, path: str) -> bool:
        prefix = self.own_login_path
        return prefix is not None and (path == prefix or path.startswith(prefix.rstrip("/") + "/"))

    @staticmethod
    def _content_length(scope: Scope) -> int | None:
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    async def _read_body(self, receive: Any) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _TooLarge(Exception):
    pass


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that gives the app the body already read, then passes on (for ``http.disconnect``)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # type: ignore[no-any-return]

    return replay
