"""An MCP server for the tests, on the official SDK: ``python mcp_test_server.py [stdio | http PORT]``.

Tools: text, structured output, an image, an error, a slow call, a crash, a child
process, embedded resources, a schema with ``$defs``/``anyOf``, and a tool that adds a
tool (``tools/list_changed``).
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from typing import Literal

import mcp_types as types
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

# A 1x1 red PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)

server = MCPServer("glm-agent-test-server")
_children: list[subprocess.Popen[bytes]] = []
PID_FILE = os.environ.get("MCP_TEST_PID_FILE")  # the server and its children append their pids here


def _note_pid(pid: int) -> None:
    if PID_FILE:
        with open(PID_FILE, "a") as f:
            f.write(f"{pid}\n")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def long_text(size: int) -> str:
    """Return a text of `size` characters."""
    return "x" * size


@server.tool()
def red_pixel() -> Image:
    """Return a 1x1 red PNG image."""
    return Image(data=PNG, format="png")


@server.tool()
def fail(message: str) -> str:
    """Always fails with the given message."""
    raise ToolError(message)


@server.tool()
def report_error(message: str) -> types.CallToolResult:
    """Return an is_error result with two text blocks."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message), types.TextContent(type="text", text="second line")],
        is_error=True,
    )


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
def crash() -> str:
    """The server process exits at once (a crash)."""
    sys.stderr.write("test server: crashing on purpose\n")
    sys.stderr.flush()
    os._exit(3)


@server.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.tool()
def spawn_child() -> int:
    """Start a long-running child process of the server; return its pid."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    _children.append(child)
    _note_pid(child.pid)
    return child.pid


@server.tool()
def resources() -> list[types.ContentBlock]:
    """Return an embedded text resource, a blob resource and a resource link."""
    return [
        types.EmbeddedResource(
            type="resource",
            resource=types.TextResourceContents(uri="file:///notes.txt", mime_type="text/plain", text="hello notes"),
        ),
        types.EmbeddedResource(
            type="resource",
            resource=types.BlobResourceContents(
                uri="file:///pixel.png", mime_type="image/png", blob=base64.b64encode(PNG).decode()
            ),
        ),
        types.ResourceLink(type="resource_link", name="report", uri="file:///report.pdf", mime_type="application/pdf"),
    ]


class Place(BaseModel):
    city: str
    country: str | None = None


class Event(BaseModel):
    title: str = Field(description="What happens")
    where: Place
    kind: Literal["meeting", "party"] = "meeting"


@server.tool()
def schedule(event: Event, attendees: list[str] | None = None) -> str:
    """Schedule an event (a schema with $defs and anyOf)."""
    people = ", ".join(attendees or []) or "nobody"
    return f"{event.kind} {event.title!r} in {event.where.city} with {people}"


@server.tool()
async def add_late_tool(ctx: Context) -> str:
    """Register a new tool `late` and announce it (tools/list_changed)."""

    def late() -> str:
        """A tool that appeared later."""
        return "late tool here"

    server.add_tool(late)
    await ctx.session.send_tool_list_changed()
    return "added"


def main() -> None:
    _note_pid(os.getpid())
    transport = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))


if __name__ == "__main__":
    main()
