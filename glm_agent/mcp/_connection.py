"""``MCPConnection``: one MCP server, its tools as ``Tool`` s, its life (connect, calls, crash, close).

Each connection has one owner task on the background loop that enters the SDK's
``Client`` and leaves it at close; calls run as separate tasks on that loop, each
with a time limit, so a hung call ends as a timeout and the connection stays usable.
A server that dies is reported in the failing call's observation and restarted on
the next call, once. Closing ends a stdio server and every process it started.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import weakref
from collections.abc import Awaitable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any, Literal, TypeVar

import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.stdio import get_default_environment, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from glm_agent._version import __version__
from glm_agent.errors import MCPConnectionError
from glm_agent.mcp._config import MCPServerHTTP, MCPServerSpec, MCPServerStdio, check_server_name
from glm_agent.mcp._loop import arun_on_loop, run_on_loop
from glm_agent.mcp._processes import TAG_VARIABLE, end_tagged_processes, new_tag
from glm_agent.mcp._results import result_to_output
from glm_agent.mcp._stderr import StderrTail
from glm_agent.mcp._tool import MCPTool
from glm_agent.tools import Tool, ToolOutput, ToolTimeout

__all__ = ["MCPConnection", "close_all_connections"]

logger = logging.getLogger(__name__)

State = Literal["new", "up", "down", "failed", "closed"]
T = TypeVar("T")

_CLOSE_GRACE = 10.0  # the SDK's stdio shutdown takes at most ~6 s (stdin close, SIGTERM, SIGKILL)
_BACKSTOP = 5.0  # extra seconds a waiting thread allows beyond a coroutine's own limit
_open: weakref.WeakSet[MCPConnection] = weakref.WeakSet()


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    inner = getattr(exc, "exceptions", None)
    while isinstance(inner, (list, tuple)) and inner and isinstance(inner[0], BaseException):
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return exc


def _describe(exc: BaseException) -> str:
    leaf = _leaf(exc)
    text = str(leaf).strip()
    return f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__


async def _limited(awaitable: Awaitable[T], limit: float) -> T:
    """Await with a time limit (``TimeoutError`` past it), without an extra task where asyncio allows."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(limit):
            return await awaitable
    try:  # pragma: no cover - Python 3.10
        return await asyncio.wait_for(awaitable, limit)
    except asyncio.TimeoutError:  # pragma: no cover
        raise TimeoutError(limit) from None


class MCPConnection:
    """A connection to one MCP server and a ``Toolset`` of its tools (mount it with ``add_toolset``).

    ``start()`` connects (within ``spec.connect_timeout``); ``call``/``acall`` run a tool
    (within ``spec.call_timeout`` or the given limit) and return a ``ToolOutput``;
    ``close()`` ends the server. Usable from any thread and any event loop.
    """

    def __init__(self, name: str, spec: MCPServerSpec) -> None:
        self.name = check_server_name(name)
        self.spec = spec
        self.state: State = "new"
        self.last_error = ""
        self.restarts = 0
        self.tag = new_tag()
        self._client: Client | None = None
        self._stop: asyncio.Event | None = None
        self._owner: asyncio.Task[None] | None = None
        self._stderr: StderrTail | None = None
        self._changed = False
        self._listed = False
        self._start_lock = threading.RLock()  # start, restart and close, one at a time
        self._tools: list[Tool] = []

    def __repr__(self) -> str:
        return f"<MCPConnection {self.name!r} {self.state}>"

    # -- the Toolset face ------------------------------------------------------------------------
    def list_tools(self) -> Sequence[Tool]:
        """The server's tools (fetched again after a ``tools/list_changed`` or a restart)."""
        if not self._listed or self._changed:
            self._ensure_up()
            remote = run_on_loop(self._alist(), self.spec.connect_timeout + _BACKSTOP)
            self._changed = False
            self._listed = True
            tools: list[Tool] = []
            for item in remote:
                try:
                    tools.append(MCPTool(self, item))
                except Exception as exc:
                    logger.warning("MCP server %r: tool %r skipped: %s", self.name, item.name, exc)
            self._tools = tools
        return list(self._tools)

    @property
    def tools_changed(self) -> bool:
        return self._changed

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> MCPConnection:
        """Start the server and finish the MCP handshake; ``MCPConnectionError`` if it cannot."""
        with self._start_lock:
            if self.state == "up":
                return self
            if self.state == "closed":
                raise MCPConnectionError(f"MCP server {self.name!r} was closed; make a new connection")
            try:
                run_on_loop(self._astart(), self.spec.connect_timeout + _CLOSE_GRACE + _BACKSTOP)
            except TimeoutError:
                raise MCPConnectionError(self._start_failed("no answer from the background loop")) from None
            _open.add(self)
            return self

    def _start_failed(self, why: str) -> str:
        tail = self._stderr.tail() if self._stderr else ""
        return f"MCP server {self.name!r} could not be started: {why}{tail}"

    def _describe_target(self) -> str:
        spec = self.spec
        if isinstance(spec, MCPServerStdio):
            return " ".join([spec.command, *spec.args])
        return spec.url

    async def _astart(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._stop = asyncio.Event()
        self._owner = loop.create_task(self._own(ready), name=f"glm-agent-mcp-{self.name}")
        try:
            await _limited(asyncio.shield(ready), self.spec.connect_timeout)
        except TimeoutError:
            self._owner.cancel()
            await asyncio.wait({self._owner}, timeout=_CLOSE_GRACE)
            self._set_state("failed", f"no MCP handshake within {self.spec.connect_timeout:g} s")
            raise MCPConnectionError(
                self._start_failed(
                    f"no MCP handshake within {self.spec.connect_timeout:g} s from {self._describe_target()} "
                    "(raise connectTimeout in the configuration if the server is slow to start)"
                )
            ) from None
        except Exception as exc:
            await asyncio.wait({self._owner}, timeout=_CLOSE_GRACE)
            self._set_state("failed", _describe(exc))
            raise MCPConnectionError(self._start_failed(f"{_describe(exc)} ({self._describe_target()})")) from None
        self._set_state("up", "")

    def _set_state(self, state: State, error: str) -> None:
        if self.state != "closed":
            self.state = state
        self.last_error = error

    def _transport(self, stack: AsyncExitStack) -> Any:
        spec = self.spec
        if isinstance(spec, MCPServerHTTP):
            import httpx2

            http = httpx2.AsyncClient(
                headers=dict(spec.headers), timeout=httpx2.Timeout(spec.connect_timeout, read=300.0)
            )
            stack.push_async_callback(http.aclose)
            return streamable_http_client(spec.url, http_client=http)
        self._stderr = StderrTail(self.name)
        params = StdioServerParameters(
            command=spec.command,
            args=list(spec.args),
            env={**get_default_environment(), **(spec.env or {}), TAG_VARIABLE: self.tag},
            cwd=spec.cwd,
        )
        return stdio_client(params, errlog=self._stderr.writer)

    async def _own(self, ready: asyncio.Future[None]) -> None:
        """The owner task: enter the client, wait for close, leave it (same task, as anyio requires)."""
        try:
            async with AsyncExitStack() as stack:
                client = Client(
                    self._transport(stack),
                    mode="legacy",
                    message_handler=self._on_message,
                    client_info=types.Implementation(name="glm-agent", version=__version__),
                    cache=None,
                )
                try:
                    await stack.enter_async_context(client)
                finally:
                    if self._stderr is not None:
                        self._stderr.close_writer()
                self._client = client
                if not ready.done():
                    ready.set_result(None)
                assert self._stop is not None
                await self._stop.wait()
        except asyncio.CancelledError:
            if not ready.done():
                ready.cancel()
            raise
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else MCPConnectionError(_describe(exc)))
            else:
                logger.warning("MCP server %r: connection ended with %s", self.name, _describe(exc))
        finally:
            self._client = None  # leftover children are ended by _teardown, in the closing thread

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            logger.info("MCP server %r: tool list changed", self.name)
            self._changed = True
        elif isinstance(message, Exception):
            logger.warning("MCP server %r: transport error: %s", self.name, message)

    def _ensure_up(self) -> None:
        """Start on first use; after a crash restart once; after a failed restart refuse."""
        if self.state == "up":
            return
        with self._start_lock:
            self._bring_up()

    def _bring_up(self) -> None:
        if self.state == "up":
            return
        if self.state == "down":
            logger.info("MCP server %r: restarting after %s", self.name, self.last_error)
            self.restarts += 1
            self._teardown()
            crash = self.last_error
            try:
                self.start()
            except MCPConnectionError as exc:
                self._set_state("failed", f"it stopped ({crash}) and the restart failed: {exc}")
                raise MCPConnectionError(f"MCP server {self.name!r} {self.last_error}") from None
            self._changed = True
            return
        if self.state == "failed" and self.restarts:
            raise MCPConnectionError(f"MCP server {self.name!r} is not available: {self.last_error}")
        self.start()

    def _teardown(self) -> None:
        owner, stop = self._owner, self._stop
        if owner is None or stop is None:
            return
        self._owner = None

        async def finish() -> None:
            stop.set()
            await asyncio.wait({owner}, timeout=_CLOSE_GRACE)
            if not owner.done():
                owner.cancel()
                await asyncio.wait({owner}, timeout=_CLOSE_GRACE)

        try:
            run_on_loop(finish(), 2 * _CLOSE_GRACE + _BACKSTOP)
        except Exception as exc:
            logger.warning("MCP server %r did not close cleanly: %s", self.name, _describe(exc))
        if isinstance(self.spec, MCPServerStdio):
            end_tagged_processes(self.tag)

    def close(self) -> None:
        """End the connection; a stdio server and all its children are ended. Safe to call twice."""
        with self._start_lock:
            self.state = "closed"
            self._teardown()
            _open.discard(self)

    def __enter__(self) -> MCPConnection:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------------------
    def call(self, tool: str, arguments: Mapping[str, Any] | None = None, timeout: float | None = None) -> ToolOutput:
        """Call the server's tool ``tool`` (its own name) and wait; ``ToolTimeout`` past the limit."""
        limit = timeout if timeout is not None else self.spec.call_timeout
        try:
            self._ensure_up()
        except MCPConnectionError as exc:
            return ToolOutput.error(str(exc))
        try:
            return run_on_loop(self._acall(tool, dict(arguments or {}), limit), limit + _BACKSTOP)
        except TimeoutError:
            raise ToolTimeout(limit) from None

    async def acall(
        self, tool: str, arguments: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> ToolOutput:
        """``call`` for async code (any event loop)."""
        limit = timeout if timeout is not None else self.spec.call_timeout
        if self.state != "up":
            try:
                await asyncio.to_thread(self._ensure_up)
            except MCPConnectionError as exc:
                return ToolOutput.error(str(exc))
        try:
            return await arun_on_loop(self._acall(tool, dict(arguments or {}), limit), limit + _BACKSTOP)
        except TimeoutError:
            raise ToolTimeout(limit) from None

    async def _acall(self, tool: str, arguments: dict[str, Any], limit: float) -> ToolOutput:
        client = self._client
        if client is None or self.state != "up":
            return ToolOutput.error(f"MCP server {self.name!r} is not connected ({self.last_error or self.state})")
        try:
            # the session's call (what Client.call_tool wraps): no input-required rounds or extension
            # claims to drive, since this client offers neither elicitation nor extensions
            result = await _limited(client.session.call_tool(tool, arguments), limit)
        except TimeoutError:  # our limit (an OSError subclass: it must not read as a crash below)
            raise
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                return self._crashed(str(exc.message))
            return ToolOutput.error(f"the MCP server {self.name!r} refused the call: {exc.message}")
        except (OSError, EOFError) as exc:
            return self._crashed(_describe(exc))
        except Exception as exc:
            if self._client is None:
                return self._crashed(_describe(exc))
            return ToolOutput.error(f"the call to MCP server {self.name!r} failed: {_describe(exc)}")
        if not isinstance(result, types.CallToolResult):
            return ToolOutput.error(
                f"the MCP server {self.name!r} answered with a {type(result).__name__}, not a tool result"
            )
        return result_to_output(result)

    def _crashed(self, why: str) -> ToolOutput:
        if self.state == "up":
            self._set_state("down", f"the connection closed ({why})")
        tail = self._stderr.tail() if self._stderr else ""
        again = "it will be restarted on the next call" if self.state == "down" else "it is not available"
        logger.warning("MCP server %r stopped during a call: %s", self.name, why)
        return ToolOutput.error(f"the MCP server {self.name!r} stopped during the call ({why}); {again}.{tail}")

    async def _alist(self) -> list[types.Tool]:
        client = self._client
        if client is None:
            raise MCPConnectionError(f"MCP server {self.name!r} is not connected")

        async def pages() -> list[types.Tool]:
            tools: list[types.Tool] = []
            cursor: str | None = None
            for _ in range(1000):
                page = await client.list_tools(cursor=cursor)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    break
            return tools

        try:
            return await _limited(pages(), self.spec.connect_timeout)
        except TimeoutError:
            raise MCPConnectionError(
                f"MCP server {self.name!r} did not list its tools within {self.spec.connect_timeout:g} s"
            ) from None


def close_all_connections() -> None:
    """Close every open connection (at interpreter exit; servers and their children end)."""
    for connection in list(_open):
        try:
            connection.close()
        except Exception as exc:  # pragma: no cover - best effort at exit
            logger.warning("closing MCP server %r failed: %s", connection.name, exc)


atexit.register(close_all_connections)
