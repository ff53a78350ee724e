"""A ``ToolRegistry`` served as an MCP server (stdio, streamable HTTP, or mounted on another ASGI app).

Tools keep their JSON Schemas; a failed call (bad arguments, an exception, a
timeout) comes back as an ``is_error`` result carrying the observation text the
model would have read; images and other bytes come back as ``ImageContent`` /
embedded blobs named by the file's name only (no host path leaves).

Over HTTP the endpoint answers only requests whose ``Host`` names the address it is
served on (:func:`glm_agent._net.host_names`; the SDK alone protects only 127.0.0.1,
``localhost`` and ``::1``) and refuses other origins; ``api_key`` requires
``Authorization: Bearer KEY`` on every request.
"""

from __future__ import annotations

import base64
import hmac
import json
import mimetypes
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings

from glm_agent._net import host_names
from glm_agent._version import __version__
from glm_agent.tools import ToolRegistry, ToolResult

__all__ = ["mcp_server_for", "serve_mcp_stdio", "mcp_http_app", "mount_mcp", "transport_security"]

_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}


def _file_block(path: Path) -> types.ContentBlock:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    mime = _IMAGE_TYPES.get(path.suffix.lower())
    if mime is not None:
        return types.ImageContent(type="image", data=data, mime_type=mime)
    guessed = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if guessed.startswith("audio/"):
        return types.AudioContent(type="audio", data=data, mime_type=guessed)
    uri = f"glm-agent://files/{quote(path.name)}"  # the name only: no host path in a result
    return types.EmbeddedResource(
        type="resource", resource=types.BlobResourceContents(uri=uri, mime_type=guessed, blob=data)
    )


def result_to_mcp(result: ToolResult) -> types.CallToolResult:
    """Observation text first, then every file the call produced (images as ``ImageContent``).

    Files are named by their names only: where this process saved them is no client's business.
    """
    text = result.observation
    for path in result.files:
        text = text.replace(str(path), path.name)
    content: list[types.ContentBlock] = [types.TextContent(type="text", text=text)]
    structured = _structured(result)
    for path in result.files:
        try:
            content.append(_file_block(path))
        except OSError as exc:
            content.append(types.TextContent(type="text", text=f"[{path.name}: cannot be read: {exc.strerror or exc}]"))
    return types.CallToolResult(content=content, is_error=not result.ok, structured_content=structured)


def _structured(result: ToolResult) -> dict[str, Any] | None:
    """A dict a tool returned, as MCP's ``structuredContent`` (JSON-ready; the text block says the same)."""
    if not result.ok or not isinstance(result.value, dict):
        return None
    try:
        value = json.loads(json.dumps(result.value, default=str))
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _tool_of(schema: dict[str, Any]) -> types.Tool:
    return types.Tool(name=schema["name"], description=schema["description"] or None, input_schema=schema["parameters"])


def mcp_server_for(registry: ToolRegistry, *, name: str = "glm-agent", instructions: str | None = None) -> Server[Any]:
    """An SDK low-level ``Server`` that lists and calls the registry's tools."""

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[_tool_of(t.chatglm3_schema()) for t in registry])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        result = await registry.acall(params.name, params.arguments or {})
        return result_to_mcp(result)

    return Server(
        name, version=__version__, instructions=instructions, on_list_tools=list_tools, on_call_tool=call_tool
    )


async def serve_mcp_stdio(registry: ToolRegistry, *, name: str = "glm-agent") -> None:
    """Serve the registry over this process's stdin/stdout until the client closes it."""
    server = mcp_server_for(registry, name=name)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def transport_security(host: str, allowed_hosts: Iterable[str] = ()) -> TransportSecuritySettings:
    """Host and Origin checks for an endpoint served on ``host`` (its names, and ``allowed_hosts``), any port."""
    hosts, origins = [], []
    for name in sorted(host_names(host, allowed_hosts)):
        shown = f"[{name}]" if ":" in name else name
        hosts += [shown, f"{shown}:*"]
        origins += [f"{scheme}://{shown}{port}" for scheme in ("http", "https") for port in ("", ":*")]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


class _BearerKey:
    """ASGI: every HTTP request needs ``Authorization: Bearer KEY`` (compared in constant time), else 401."""

    def __init__(self, app: Any, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = b""
            for name, value in scope.get("headers", []):
                if name.lower() == b"authorization":
                    scheme, _, token = bytes(value).partition(b" ")
                    given = token.strip() if scheme.lower() == b"bearer" else b""
            if not hmac.compare_digest(given, self.key):
                body = b'{"error": "missing or incorrect API key: send Authorization: Bearer KEY"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", b"Bearer"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def mcp_http_app(
    registry: ToolRegistry,
    *,
    path: str = "/mcp",
    host: str = "127.0.0.1",
    name: str = "glm-agent",
    api_key: str | None = None,
    allowed_hosts: Iterable[str] = (),
) -> Any:
    """A Starlette app serving the registry over streamable HTTP at ``path`` (run it with uvicorn).

    ``host``: the address it is served on (its names are the ``Host`` headers answered, with
    ``allowed_hosts``). ``api_key``: required as a Bearer token on every request.
    """
    server = mcp_server_for(registry, name=name)
    app = server.streamable_http_app(
        streamable_http_path=path, host=host, transport_security=transport_security(host, allowed_hosts)
    )
    if api_key:
        app.add_middleware(_BearerKey, key=api_key)
    return app


def mount_mcp(
    app: Any,
    registry: ToolRegistry,
    *,
    path: str = "/mcp",
    host: str = "127.0.0.1",
    name: str = "glm-agent",
    allowed_hosts: Iterable[str] = (),
) -> None:
    """Add the MCP endpoint at ``path`` to a Starlette/FastAPI ``app`` (its session manager runs in the app's lifespan).

    The ``app``'s own guard is its authentication (``glm-agent serve --api-key`` covers ``/mcp``).
    """
    server = mcp_server_for(registry, name=name)
    sub = server.streamable_http_app(
        streamable_http_path=path, host=host, transport_security=transport_security(host, allowed_hosts)
    )
    app.router.routes.extend(sub.routes)
    outer: Callable[[Any], AbstractAsyncContextManager[Any]] = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(the_app: Any) -> AsyncIterator[Any]:
        async with server.session_manager.run(), outer(the_app) as state:
            yield state

    app.router.lifespan_context = lifespan
