"""Serving the UI: a FastAPI app of its own (``glm-agent web``) or mounted on the API server (``serve --ui``).

Either way the UI sits behind its door (:mod:`glm_agent.web._door`), and a session's files are
served by a route of ours (the owner's cookie required, files opened without following links),
never copied into Gradio's cache.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from glm_agent._background_server import BackgroundServer
from glm_agent._net import LOOPBACK_NAMES, host_names
from glm_agent._shutdown import sigterm_exits
from glm_agent.errors import GlmAgentError
from glm_agent.web._config import WebConfig
from glm_agent.web._door import Door, UIGuard, client_cookie
from glm_agent.web._login import Login, check_bind
from glm_agent.web._manager import SessionManager
from glm_agent.web._sessions import FileArea

__all__ = ["WebUI", "create_web_app", "mount_web_ui", "serve_web", "FILES_ROUTE"]

logger = logging.getLogger(__name__)

#: where a session's files are served, under the UI's path: .../glm-agent/files/TOKEN/AREA/NAME
FILES_ROUTE = "/glm-agent/files"
_INLINE_IMAGES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
_MiB = 1024 * 1024


class WebUI:
    """The UI's parts once mounted: ``app`` (FastAPI), ``blocks`` (Gradio), ``sessions``, ``door``; ``close()`` ends them."""

    def __init__(self, app: Any, blocks: Any, sessions: SessionManager, door: Door, login: Login | None) -> None:
        self.app = app
        self.blocks = blocks
        self.sessions = sessions
        self.door = door
        self.login = login
        self.url: str | None = None
        self._server: BackgroundServer | None = None

    def bind(self, host: str) -> None:
        """Answer requests whose ``Host`` names ``host`` (and the config's ``allowed_hosts``); refuse a
        non-loopback ``host`` without a login."""
        check_bind(host, self.login)
        self.door.hosts = host_names(host, self.sessions.config.allowed_hosts)

    def start(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> str:
        """Serve in a background thread (tests, benchmarks, notebooks); returns the URL. ``close()`` stops it."""
        self.bind(host)
        # lifespan on: Gradio starts its queue in the app's startup
        self._server = BackgroundServer(self.app, host, port, lifespan="on", name="glm-agent-web")
        try:
            self._server.start(timeout)
        except RuntimeError:
            self.close()
            raise GlmAgentError(f"the web UI did not start on {host}:{port}") from None
        self.url = self._server.url
        return self.url

    def close(self) -> None:
        """Stop a server started with :meth:`start`, then close every session (kernels and files included),
        the pool, and remove uploads no session took."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(15)
        self.sessions.close_all()
        self.door.uploads.remove_all()

    def __enter__(self) -> WebUI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pending_events(blocks: Any) -> Any:
    """How many events of a session wait in Gradio's queue (its own bookkeeping, read-only)."""

    def pending(session_hash: str) -> int:
        queue = getattr(blocks, "_queue", None)
        ids = getattr(queue, "pending_event_ids_session", {}).get(session_hash)
        return len(ids) if ids else 0

    return pending


def _gradio_login(app: Any, prefix: str) -> Any:
    """The user a request is logged in as with Gradio's login (its token cookie), for the door."""
    from starlette.routing import Mount

    mounted = [r.app for r in app.routes if isinstance(r, Mount) and r.path == prefix]
    if not mounted or not hasattr(mounted[-1], "tokens"):
        raise GlmAgentError("the web UI's login could not be found on the app it was mounted on")
    gradio_app: Any = mounted[-1]
    names = (f"access-token-{gradio_app.cookie_id}", f"access-token-unsecure-{gradio_app.cookie_id}")

    def login_user(headers: list[tuple[bytes, bytes]]) -> str | None:
        for name, value in headers:
            if name != b"cookie":
                continue
            for part in value.decode("latin-1").split(";"):
                key, _, token = part.strip().partition("=")
                if key in names and token:
                    user = gradio_app.tokens.get(token)
                    if isinstance(user, str):
                        return user
        return None

    return login_user


def _file_chunks(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(256 * 1024):
            yield chunk


def _download_route(sessions: SessionManager) -> Any:
    async def download(token: str, area: str, name: str, request: Request) -> Response:
        """A session's file, for its owner's browser only (the client cookie), as an attachment
        unless it is a PNG/JPEG/GIF image shown in the chat."""
        session = sessions.by_token(token)
        client = client_cookie([(k.lower(), v) for k, v in request.scope.get("headers", [])])
        if session is None or client is None or area not in ("workspace", "session"):
            return JSONResponse({"error": "not found"}, status_code=404)
        if not session.owner.client or session.owner.client != client:
            return JSONResponse({"error": "not found"}, status_code=404)
        kind: FileArea = "workspace" if area == "workspace" else "session"
        try:
            handle = await asyncio.to_thread(session.open_download, kind, name)
        except FileNotFoundError:
            return JSONResponse({"error": f"{name}: no such file"}, status_code=404)
        except (PermissionError, OSError) as exc:
            logger.warning("refused a download of %r: %s", name, exc)
            return JSONResponse({"error": f"{name} cannot be downloaded: not a regular file"}, status_code=403)
        size = os.fstat(handle.fileno()).st_size
        suffix = os.path.splitext(name)[1].lower()
        inline = kind == "session" and suffix in _INLINE_IMAGES
        media = _INLINE_IMAGES.get(suffix) if inline else (mimetypes.guess_type(name)[0] or "application/octet-stream")
        disposition = "inline" if inline else f"attachment; filename*=UTF-8''{quote(name)}"
        headers = {
            "content-length": str(size),
            "content-disposition": disposition,
            "content-security-policy": "default-src 'none'; sandbox",
            "cache-control": "private, no-store",
        }
        return StreamingResponse(
            _file_chunks(handle), media_type=media if inline else "application/octet-stream", headers=headers
        )

    return download


def mount_web_ui(
    app: Any,
    config: WebConfig,
    *,
    path: str = "/ui",
    login: Login | None = None,
    host: str = "127.0.0.1",
    max_request_bytes: int = 4 * _MiB,
) -> WebUI:
    """Mount the UI on an existing FastAPI ``app`` at ``path``; call ``close()`` on the result at shutdown.

    ``login``: users (or the API key) the UI asks for. ``host``: the address it is served on (the
    ``Host`` names it answers to; :meth:`WebUI.bind` changes it). ``max_request_bytes``: the largest
    request body but uploads (``config.max_upload_bytes`` per file, ``config.max_session_bytes`` a request).
    """
    import gradio as gr
    from gradio.utils import get_upload_folder

    from glm_agent.web._app import CSS, THEME, build_blocks

    prefix = path.rstrip("/")
    check_bind(host, login)
    door = Door(
        prefix=prefix,
        hosts=host_names(host, config.allowed_hosts) if host else frozenset(LOOPBACK_NAMES),
        max_request_bytes=max_request_bytes,
        max_upload_request_bytes=config.max_session_bytes + _MiB,  # multipart framing
        upload_budget_bytes=config.max_session_bytes * config.max_sessions,
        upload_folder=get_upload_folder(),
        events_per_client=8 * config.per_client_sessions(),
        max_events=8 * config.max_sessions,
    )

    def file_url(token: str, area: str, name: str) -> str:
        return f"{prefix}{FILES_ROUTE}/{token}/{area}/{quote(name)}"

    sessions = SessionManager(config, door=door, file_url=file_url)
    try:
        blocks = build_blocks(sessions)
        door.pending_events = _pending_events(blocks)
        # before Gradio's mount, which takes every path under the prefix
        app.add_api_route(
            f"{prefix}{FILES_ROUTE}/{{token}}/{{area}}/{{name}}", _download_route(sessions), methods=["GET"]
        )
        gr.mount_gradio_app(
            app,
            blocks,
            path=path,
            auth=login,
            max_file_size=config.max_upload_bytes,
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
        if login is not None:
            door.login_user = _gradio_login(app, prefix)
        app.add_middleware(UIGuard, door=door)
    except BaseException:
        sessions.close_all()
        raise
    return WebUI(app, blocks, sessions, door, login)


def create_web_app(config: WebConfig, *, login: Login | None = None, host: str = "127.0.0.1") -> WebUI:
    """A FastAPI app serving only the UI, at ``/``."""
    from fastapi import FastAPI

    app = FastAPI(title=config.title, docs_url=None, redoc_url=None, openapi_url=None)
    return mount_web_ui(app, config, path="", login=login, host=host)


def serve_web(
    config: WebConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    login: Login | None = None,
    log_level: str = "info",
) -> None:
    """Serve the UI until interrupted (Ctrl-C or SIGTERM); sessions, kernels and files are closed on the way out."""
    import uvicorn

    check_bind(host, login)
    ui = create_web_app(config, login=login, host=host)
    logger.info("glm-agent web UI on http://%s:%d", host, port)
    try:
        with sigterm_exits():
            uvicorn.run(ui.app, host=host, port=port, log_level=log_level, access_log=False)
    finally:
        ui.close()
