"""Serving the UI: a FastAPI app of its own (``glm-agent web``) or mounted on the API server (``serve --ui``)."""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any

from glm_agent.errors import GlmAgentError
from glm_agent.server._thread import BackgroundServer
from glm_agent.web._config import WebConfig
from glm_agent.web._sessions import SessionManager

__all__ = ["WebUI", "check_bind", "create_web_app", "mount_web_ui", "serve_web"]

log = logging.getLogger(__name__)


class WebUI:
    """The UI's parts once mounted: ``app`` (FastAPI), ``blocks`` (Gradio), ``sessions``; ``close()`` ends them."""

    def __init__(self, app: Any, blocks: Any, sessions: SessionManager) -> None:
        self.app = app
        self.blocks = blocks
        self.sessions = sessions
        self.url: str | None = None
        self._server: BackgroundServer | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> str:
        """Serve in a background thread (tests, benchmarks, notebooks); returns the URL. ``close()`` stops it."""
        check_bind(host, None if not self.blocks.auth else ("", ""))
        # lifespan on: Gradio starts its queue in the app's startup
        self._server = BackgroundServer(self.app, host, port, head_timeout=None, lifespan="on", name="glm-agent-web")
        try:
            self._server.start(timeout)
        except RuntimeError:
            self.close()
            raise GlmAgentError(f"the web UI did not start on {host}:{port}") from None
        self.url = self._server.url
        return self.url

    def close(self) -> None:
        """Stop a server started with :meth:`start`, then close every session (kernels included) and the pool."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(15)
        self.sessions.close_all()

    def __enter__(self) -> WebUI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve only to them (``localhost``)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0])).is_loopback for info in infos)


def check_bind(host: str, auth: tuple[str, str] | None) -> None:
    """Refuse to serve beyond this machine without a login: the UI runs code in kernels."""
    if not is_loopback(host) and auth is None:
        raise GlmAgentError(
            f"refusing to serve the web UI on {host} without a login: anyone who reaches it can run code. "
            "Pass --auth USER:PASS (or bind to 127.0.0.1 and use an SSH tunnel)"
        )


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``USER:PASS`` -> (user, password); a clear error for anything else."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise GlmAgentError("--auth takes USER:PASS, both non-empty (e.g. --auth alice:s3cret)")
    return user, password


def mount_web_ui(app: Any, config: WebConfig, *, path: str = "/ui", auth: tuple[str, str] | None = None) -> WebUI:
    """Mount the UI on an existing FastAPI ``app`` at ``path``; call ``close()`` on the result at shutdown."""
    import gradio as gr

    from glm_agent.web._app import CSS, THEME, build_blocks

    sessions = SessionManager(config)
    try:
        blocks = build_blocks(sessions)
        gr.mount_gradio_app(
            app,
            blocks,
            path=path,
            auth=auth,
            footer_links=[],
            run_history=False,
            ssr_mode=False,
            mcp_server=False,
            enable_monitoring=False,
            pwa=False,
            theme=THEME,
            css=CSS,
            show_error=True,
        )
    except BaseException:
        sessions.close_all()
        raise
    return WebUI(app, blocks, sessions)


def create_web_app(config: WebConfig, *, auth: tuple[str, str] | None = None) -> WebUI:
    """A FastAPI app serving only the UI, at ``/``."""
    from fastapi import FastAPI

    app = FastAPI(title=config.title, docs_url=None, redoc_url=None, openapi_url=None)
    return mount_web_ui(app, config, path="", auth=auth)


def serve_web(
    config: WebConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: tuple[str, str] | None = None,
    log_level: str = "info",
) -> None:
    """Serve the UI until interrupted; sessions and kernels are closed on the way out."""
    import uvicorn

    check_bind(host, auth)
    ui = create_web_app(config, auth=auth)
    log.info("glm-agent web UI on http://%s:%d", host, port)
    try:
        uvicorn.run(ui.app, host=host, port=port, log_level=log_level)
    finally:
        ui.close()
