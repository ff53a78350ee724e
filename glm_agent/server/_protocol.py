"""uvicorn's h11 protocol with a deadline for a request's head (slowloris).

uvicorn closes idle keep-alive connections, but a connection that has sent part of a request head
(or nothing at all since it opened) is kept forever. Here the head must be complete within
``head_timeout`` seconds of the connection opening or of its previous response; otherwise the
connection gets a 408 in OpenAI's error shape and is closed.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from glm_agent.server._errors import APIError

__all__ = ["head_timeout_protocol"]


def _timeout_response(seconds: float) -> bytes:
    message = f"the request head did not arrive within {seconds:g} s"
    body = json.dumps(APIError(408, message, code="request_timeout").body()).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def head_timeout_protocol(head_timeout: float) -> type[H11Protocol]:
    """An ``H11Protocol`` class (for ``uvicorn.Config(http=...)``) that enforces ``head_timeout``."""

    class HeadTimeoutProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                if self._head_timer is None:
                    self._arm()
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # idle now: uvicorn's keep-alive timeout applies until the next byte

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(head_timeout, self._timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _timed_out(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(_timeout_response(head_timeout))
                self.transport.close()

    return HeadTimeoutProtocol
