"""A ``ToolRegistry`` served as an MCP server (stdio, streamable HTTP, or mounted on another ASGI app).

Tools keep their JSON Schemas; a failed call (bad arguments, an exception, a
timeout) comes back as an ``is_error`` result carrying the observation text the
model would have read; images and other bytes come back as ``ImageContent`` /
embedded blobs.
"""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from glm_agent import __version__
from glm_agent.tools import ToolRegistry, ToolResult

__all__ = ["mcp_server_for", "serve_mcp_stdio", "mcp_http_app", "mount_mcp"]

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
    return types.EmbeddedResource(
        type="resource", resource=types.BlobResourceContents(uri=path.resolve().as_uri(), mime_type=guessed, blob=data)
    )


def result_to_mcp(result: ToolResult) -> types.CallToolResult:
    """Observation text first, then every file the call produced (images as ``ImageContent``)."""
    content: list[types.ContentBlock] = [types.TextContent(type="text", text=result.observation)]
    for path in result.files:
        try:
            content.append(_file_block(path))
        except OSError as exc:
            content.append(types.TextContent(type="text", text=f"[{path}: cannot be read: {exc}]"))
    return types.CallToolResult(content=content, is_error=not result.ok)


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


def mcp_http_app(
    registry: ToolRegistry, *, path: str = "/mcp", host: str = "127.0.0.1", name: str = "glm-agent"
) -> Any:
    """A Starlette app serving the registry over streamable HTTP at ``path`` (run it with uvicorn)."""
    server = mcp_server_for(registry, name=name)
    return server.streamable_http_app(streamable_http_path=path, host=host)


def mount_mcp(
    app: Any, registry: ToolRegistry, *, path: str = "/mcp", host: str = "127.0.0.1", name: str = "glm-agent"
) -> None:
    """Add the MCP endpoint at ``path`` to a Starlette/FastAPI ``app`` (its session manager runs in the app's lifespan)."""
    server = mcp_server_for(registry, name=name)
    sub = server.streamable_http_app(streamable_http_path=path, host=host)
    app.router.routes.extend(sub.routes)
    outer: Callable[[Any], AbstractAsyncContextManager[Any]] = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(the_app: Any) -> AsyncIterator[Any]:
        async with server.session_manager.run(), outer(the_app) as state:
            yield state

    app.router.lifespan_context = lifespan
