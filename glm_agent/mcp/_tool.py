"""A tool of an MCP server as a glm-agent ``Tool``: the server's schema, arguments checked, called on its connection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import mcp_types as types

from glm_agent.tools import SchemaTool, prefixed_name

if TYPE_CHECKING:
    from glm_agent.mcp._connection import MCPConnection

__all__ = ["MCPTool"]


class MCPTool(SchemaTool):
    """A tool of an MCP server: the server's schema, arguments checked before the call, run on its connection."""

    def __init__(self, connection: MCPConnection, remote: types.Tool) -> None:
        self.connection = connection
        description = remote.description or remote.title or ""
        super().__init__(
            prefixed_name(None, remote.name),
            remote.input_schema,
            self._call_directly,
            description=description,
            timeout=connection.spec.call_timeout,
            needs_approval=connection.spec.approval_needed(remote.name),
        )
        self.source_name: str = remote.name  # the server's own name for it (the registry may prefix it)

    def _call_directly(self, **arguments: Any) -> Any:
        """``tool(**arguments)``: the call without the registry (no argument check); a ``ToolOutput``."""
        return self.invoke(arguments, self.timeout)

    def invoke(self, kwargs: dict[str, Any], timeout: float | None) -> Any:
        return self.connection.call(self.source_name, kwargs, timeout)

    async def ainvoke(self, kwargs: dict[str, Any], timeout: float | None) -> Any:
        return await self.connection.acall(self.source_name, kwargs, timeout)
