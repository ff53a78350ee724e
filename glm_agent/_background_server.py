"""Run an ASGI app on uvicorn in a background thread: for tests, benchmarks and notebooks (server and web UI)."""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

__all__ = ["BackgroundServer"]


class BackgroundServer:
    """Runs an app on uvicorn in a thread (port 0 picks a free one).

    ``with BackgroundServer(app) as srv: srv.url`` → ``http://127.0.0.1:PORT``; leaving stops it.
    ``http``: a uvicorn HTTP protocol class (default: uvicorn's own); ``lifespan="on"`` runs the
    app's startup and shutdown.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        *,
        http: Any = None,
        lifespan: Literal["auto", "on", "off"] = "off",
        name: str = "glm-agent-server",
    ) -> None:
        import uvicorn

        protocol: dict[str, Any] = {} if http is None else {"http": http}
        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan=lifespan, **protocol)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name=name, daemon=True)
        self.host = host
        self.port = port

    def start(self, timeout: float = 20.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
