"""``connect_mcp``: MCP servers (a config file or descriptions) as toolsets of a ``ToolRegistry``."""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from glm_agent.errors import MCPConnectionError
from glm_agent.mcp._config import MCPServerHTTP, MCPServerSpec, MCPServerStdio, load_mcp_config
from glm_agent.mcp._connection import MCPConnection
from glm_agent.tools import ToolRegistry

__all__ = ["connect_mcp", "MCPServers"]

logger = logging.getLogger(__name__)

MCPServers = str | Path | Mapping[str, Any]


def _specs(servers: MCPServers, environ: Mapping[str, str] | None) -> dict[str, MCPServerSpec]:
    if isinstance(servers, Mapping) and "mcpServers" not in servers:
        specs: dict[str, MCPServerSpec] = {}
        for name, spec in servers.items():
            if not isinstance(spec, (MCPServerStdio, MCPServerHTTP)):
                raise TypeError(
                    f"MCP server {name!r}: expected MCPServerStdio or MCPServerHTTP, not {type(spec).__name__} "
                    '(or pass a {"mcpServers": ...} configuration)'
                )
            specs[str(name)] = spec
        return specs
    return load_mcp_config(servers, environ=environ)


def _start_all(connections: list[MCPConnection]) -> None:
    """Start the servers side by side; if one fails, close them all and say which failed and why."""
    if not connections:
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(connections))) as pool:
        outcomes = list(pool.map(_try_start, connections))
    failures = [str(exc) for exc in outcomes if exc is not None]
    if failures:
        for connection in connections:
            connection.close()
        raise MCPConnectionError("\n".join(failures))


def _try_start(connection: MCPConnection) -> BaseException | None:
    try:
        connection.start()
    except MCPConnectionError as exc:
        return exc
    return None


def connect_mcp(
    servers: MCPServers,
    *,
    registry: ToolRegistry | None = None,
    environ: Mapping[str, str] | None = None,
    **registry_options: Any,
) -> ToolRegistry:
    """Connect to MCP servers and add their tools (named ``server__tool``) to a registry.

    ``servers`` is a ``{"mcpServers": ...}`` JSON file or object, or a mapping of names to
    ``MCPServerStdio`` / ``MCPServerHTTP``. The servers start side by side; if one cannot,
    all are closed and ``MCPConnectionError`` says which and why. Returns ``registry`` (or a
    new ``ToolRegistry(**registry_options)``); close it (or use it as a context manager, or
    close the agent that holds it) to end the servers.

    ```python
    with connect_mcp("mcp.json") as tools:
        Agent(model, tools=tools).run("What time is it in Tokyo?")
    ```
    """
    specs = _specs(servers, environ)
    connections = [MCPConnection(name, spec) for name, spec in specs.items()]
    _start_all(connections)
    target = registry if registry is not None else ToolRegistry(**registry_options)
    added: list[MCPConnection] = []
    try:
        for connection in connections:
            spec = connection.spec
            target.add_toolset(
                connection, prefix=connection.name, include=spec.include_tools, exclude=spec.exclude_tools
            )
            added.append(connection)
    except BaseException:
        for connection in connections:
            if connection not in added:
                connection.close()
        raise
    logger.info("MCP servers connected: %s", ", ".join(f"{c.name} ({len(c.list_tools())} tools)" for c in connections))
    return target
