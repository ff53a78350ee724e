"""The API server's app on uvicorn in a background thread, with its slowloris deadline (tests, benchmarks, notebooks)."""

from __future__ import annotations

from typing import Any, Literal

from glm_agent._background_server import BackgroundServer as _Base
from glm_agent.server._protocol import head_timeout_protocol

__all__ = ["BackgroundServer"]


class BackgroundServer(_Base):
    """:class:`glm_agent._background_server.BackgroundServer` with the server's head deadline.

    ``with BackgroundServer(app) as srv: srv.url`` → ``http://127.0.0.1:PORT``; leaving stops it.
    ``head_timeout``: seconds a connection may take to send a request's head, else a 408
    (``None``: uvicorn's own protocol, no deadline).
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        head_timeout: float | None = 10.0,
        *,
        lifespan: Literal["auto", "on", "off"] = "off",
        name: str = "glm-agent-server",
    ) -> None:
        http = None if head_timeout is None else head_timeout_protocol(head_timeout)
        super().__init__(app, host, port, log_level, http=http, lifespan=lifespan, name=name)
