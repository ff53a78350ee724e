"""MCP in both directions, on the official ``mcp`` SDK (2.x; ``pip install glm-agent[mcp]``).

Tools in: any MCP server's tools join a ``ToolRegistry`` as ``server__tool``::

    from glm_agent.mcp import connect_mcp, MCPServerStdio

    with connect_mcp("mcp.json") as tools:            # {"mcpServers": {...}}, ${VAR} expanded
        Agent(model, tools=tools).run("What time is it in Tokyo?")

    tools = connect_mcp({"time": MCPServerStdio("uvx", ["mcp-server-time"])})

Tools out: ``mcp_server_for(registry)`` (an SDK ``Server``), ``serve_mcp_stdio``,
``mcp_http_app`` and ``mount_mcp`` (add ``/mcp`` to a FastAPI app).
"""

from __future__ import annotations

from glm_agent.mcp._config import MCPServerHTTP, MCPServerSpec, MCPServerStdio, load_mcp_config
from glm_agent.mcp._connect import connect_mcp
from glm_agent.mcp._connection import MCPConnection, close_all_connections
from glm_agent.mcp._results import result_to_output
from glm_agent.mcp._serve import mcp_http_app, mcp_server_for, mount_mcp, result_to_mcp, serve_mcp_stdio
from glm_agent.mcp._tool import MCPTool

__all__ = [
    "connect_mcp",
    "load_mcp_config",
    "MCPServerStdio",
    "MCPServerHTTP",
    "MCPServerSpec",
    "MCPConnection",
    "MCPTool",
    "close_all_connections",
    "result_to_output",
    "mcp_server_for",
    "serve_mcp_stdio",
    "mcp_http_app",
    "mount_mcp",
    "result_to_mcp",
]
