"""MCP server descriptions and the ``{"mcpServers": {...}}`` config file (``${VAR}`` expanded)."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from glm_agent.errors import MCPConfigError, ToolDefinitionError
from glm_agent.tools import check_prefix

__all__ = ["MCPServerStdio", "MCPServerHTTP", "MCPServerSpec", "load_mcp_config", "check_server_name"]

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_CALL_TIMEOUT = 60.0

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_KNOWN_KEYS = {
    "command",
    "args",
    "env",
    "cwd",
    "url",
    "headers",
    "type",
    "transport",
    "disabled",
    "timeout",
    "callTimeout",
    "connectTimeout",
    "includeTools",
    "excludeTools",
    "needsApproval",
}


def _positive(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise MCPConfigError(f"{what} must be a positive number of seconds, not {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class _Common:
    #: seconds to start the server and finish the MCP handshake
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    #: seconds one tool call may take (a late answer becomes a timeout observation)
    call_timeout: float = DEFAULT_CALL_TIMEOUT
    #: only these tools (the server's names); None: all
    include_tools: frozenset[str] | None = None
    #: never these tools
    exclude_tools: frozenset[str] = frozenset()
    #: tools whose calls an agent runs only when its approver says yes: True for all, or their names
    needs_approval: bool | frozenset[str] = False

    def __post_init__(self) -> None:
        _positive(self.connect_timeout, "connect_timeout")
        _positive(self.call_timeout, "call_timeout")
        if not isinstance(self.needs_approval, bool):
            object.__setattr__(self, "needs_approval", frozenset(self.needs_approval))

    def approval_needed(self, tool: str) -> bool:
        """Whether calls of the server's tool ``tool`` need a yes first."""
        marked = self.needs_approval
        return marked if isinstance(marked, bool) else tool in marked


@dataclass(frozen=True)
class MCPServerStdio(_Common):
    """A server started as a subprocess speaking MCP on stdin/stdout.

    ``env`` is added to a minimal inherited environment (PATH, HOME, ...), as the SDK does.
    The process and its children are ended when the connection closes.
    """

    command: str
    args: Sequence[str] = ()
    env: Mapping[str, str] | None = None
    cwd: str | Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.command:
            raise MCPConfigError("an MCP stdio server needs a command")
        object.__setattr__(self, "args", tuple(str(a) for a in self.args))


@dataclass(frozen=True)
class MCPServerHTTP(_Common):
    """A server reached over streamable HTTP at ``url`` (``headers`` sent with every request)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.url.startswith(("http://", "https://")):
            raise MCPConfigError(f"an MCP HTTP server needs an http(s):// url, not {self.url!r}")


MCPServerSpec = Union[MCPServerStdio, MCPServerHTTP]


def check_server_name(name: str) -> str:
    """A server name prefixes its tools (``name__tool``), so it must be a plain name without ``__``."""
    try:
        return check_prefix(name)
    except ToolDefinitionError:
        raise MCPConfigError(
            f"MCP server name {name!r} is not usable: use letters, digits, '-' and single '_' "
            "(its tools are called name__tool)"
        ) from None


def _expand(value: Any, environ: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):

        def variable(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise MCPConfigError(
                f"{where} uses ${{{name}}} but the environment variable {name} is not set; "
                f"set it, or write ${{{name}:-default}}"
            )

        return _VARIABLE.sub(variable, value)
    if isinstance(value, list):
        return [_expand(v, environ, where) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, environ, where) for k, v in value.items()}
    return value


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, (str, int, float)) for v in value.values()):
        raise MCPConfigError(f"{what} must be an object of strings")
    return {str(k): str(v) for k, v in value.items()}


def _names(value: Any, what: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MCPConfigError(f"{what} must be a list of tool names")
    return frozenset(value)


def _server(name: str, raw: Any, environ: Mapping[str, str]) -> MCPServerSpec | None:
    where = f"MCP server {name!r}"
    if not isinstance(raw, dict):
        raise MCPConfigError(f"{where}: expected an object with a command or a url")
    raw = _expand(raw, environ, where)
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        logger.info("%s: ignoring keys %s", where, ", ".join(unknown))
    if raw.get("disabled") is True:
        return None
    kind = str(raw.get("type") or raw.get("transport") or "").lower().replace("_", "-")
    if kind in ("sse",):
        raise MCPConfigError(f"{where}: the SSE transport is not supported; use the server's streamable HTTP url")
    common: dict[str, Any] = {
        "include_tools": _names(raw.get("includeTools"), f"{where}: includeTools"),
        "exclude_tools": _names(raw.get("excludeTools"), f"{where}: excludeTools") or frozenset(),
    }
    approval = raw.get("needsApproval", False)
    common["needs_approval"] = (
        approval if isinstance(approval, bool) else _names(approval, f"{where}: needsApproval (true or tool names)")
    )
    try:
        key = "callTimeout" if "callTimeout" in raw else "timeout"  # call_timeout in Python; timeout: the alias
        if key in raw:
            common["call_timeout"] = _positive(raw[key], f"{where}: {key}")
        if "connectTimeout" in raw:
            common["connect_timeout"] = _positive(raw["connectTimeout"], f"{where}: connectTimeout")
        if "url" in raw and "command" in raw:
            raise MCPConfigError("give either a command (stdio) or a url (HTTP), not both")
        if "url" in raw or kind in ("http", "streamable-http", "streamablehttp"):
            if not isinstance(raw.get("url"), str):
                raise MCPConfigError("an HTTP server needs a url string")
            return MCPServerHTTP(url=raw["url"], headers=_strings(raw.get("headers"), "headers"), **common)
        command = raw.get("command")
        if not isinstance(command, str) or not command:
            raise MCPConfigError("needs a command (stdio) or a url (HTTP)")
        args = raw.get("args", [])
        if not isinstance(args, list):
            raise MCPConfigError("args must be a list of strings")
        cwd = raw.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise MCPConfigError("cwd must be a string")
        return MCPServerStdio(
            command=command, args=args, env=_strings(raw.get("env"), "env") or None, cwd=cwd, **common
        )
    except MCPConfigError as exc:
        if str(exc).startswith(where):
            raise
        raise MCPConfigError(f"{where}: {exc}") from None


def load_mcp_config(
    source: str | Path | Mapping[str, Any], *, environ: Mapping[str, str] | None = None
) -> dict[str, MCPServerSpec]:
    """Read ``{"mcpServers": {"name": {"command", "args", "env", "cwd"} | {"url", "headers"}}}``.

    ``source`` is a JSON file or the parsed object. ``${VAR}`` and ``${VAR:-default}`` in any
    string are replaced from the environment (an unset variable without a default is an error).
    Extra keys per server, each the camelCase of its Python keyword (``MCPServerStdio(call_timeout=...)``):
    ``callTimeout`` (seconds per call; ``timeout`` is accepted too), ``connectTimeout``, ``includeTools``,
    ``excludeTools``, ``needsApproval`` (``true``, or a list of the server's tool names: their calls
    run only when the agent's approver says yes), ``disabled``. Returns the enabled servers by name.
    """
    environ = os.environ if environ is None else environ
    if isinstance(source, Mapping):
        data: Any = dict(source)
        where = "the MCP configuration"
    else:
        path = Path(source).expanduser()
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise MCPConfigError(f"cannot read the MCP configuration {path}: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MCPConfigError(
                f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
            ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("mcpServers"), dict):
        raise MCPConfigError(f'{where} must be a JSON object with "mcpServers": {{"name": {{...}}}}')
    servers: dict[str, MCPServerSpec] = {}
    for name, raw in data["mcpServers"].items():
        check_server_name(name)
        spec = _server(name, raw, environ)
        if spec is not None:
            servers[name] = spec
    return servers
