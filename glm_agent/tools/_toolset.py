"""``Toolset``: a source of tools that can change and has to be closed (an MCP server, a plugin host).

The registry mounts toolsets; naming (``prefix__tool``) and filtering are done
here, once, for every kind of source, so a source only lists its tools.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from glm_agent.errors import ToolDefinitionError
from glm_agent.tools._tool import Tool

__all__ = ["Toolset", "MountedToolset", "prefixed_name", "check_prefix", "frozen", "PREFIX_SEPARATOR"]

PREFIX_SEPARATOR = "__"
_NAME_MAX = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9-]+(?:_[A-Za-z0-9-]+)*$")


@runtime_checkable
class Toolset(Protocol):
    """A source of tools: list them, say when the list changed, close the source."""

    def list_tools(self) -> Sequence[Tool]:
        """The tools the source offers now (their own names; the registry adds the prefix)."""
        ...

    @property
    def tools_changed(self) -> bool:
        """True when ``list_tools`` would now give another list than last time."""
        ...

    def close(self) -> None:
        """Release the source (end processes, close connections); safe to call twice."""
        ...


def check_prefix(prefix: str) -> str:
    """A prefix is a name without ``__`` (so ``prefix__tool`` can be split back)."""
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix) or len(prefix) > _NAME_MAX - 3:
        raise ToolDefinitionError(
            f"tool prefix {prefix!r} is not usable: use letters, digits, '-' and single '_' "
            f"(no '{PREFIX_SEPARATOR}'), at most {_NAME_MAX - 3} characters"
        )
    return prefix


def prefixed_name(prefix: str | None, name: str) -> str:
    """``prefix__name`` with characters the model cannot write replaced by ``_``; checked for length."""
    clean = _UNSAFE.sub("_", name) or "_"
    full = f"{prefix}{PREFIX_SEPARATOR}{clean}" if prefix else clean
    if len(full) > _NAME_MAX:
        where = f" of {prefix!r}" if prefix else ""
        raise ToolDefinitionError(
            f"tool {name!r}{where} would be named {full!r}, longer than {_NAME_MAX} characters; "
            "give the source a shorter name or exclude the tool"
        )
    return full


@dataclass
class MountedToolset:
    """A toolset as the registry holds it: its prefix, its filter and the names it added."""

    toolset: Toolset
    prefix: str | None = None
    include: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()
    names: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return repr(self.prefix) if self.prefix else type(self.toolset).__name__

    def named_tools(self) -> list[Tool]:
        """The toolset's tools after filtering, renamed ``prefix__tool``; a name clash is an error."""
        chosen: dict[str, Tool] = {}
        origin: dict[str, str] = {}
        for tool in self.toolset.list_tools():
            own = tool.source_name or tool.name
            if self.include is not None and own not in self.include:
                continue
            if own in self.exclude:
                continue
            full = prefixed_name(self.prefix, tool.name)
            if full in chosen:
                raise ToolDefinitionError(
                    f"tools {origin[full]!r} and {own!r} of {self.label} would both be named {full!r}; "
                    "exclude one of them"
                )
            origin[full] = own
            chosen[full] = tool if full == tool.name else tool.replace(name=full)
        return list(chosen.values())


def frozen(names: Iterable[str] | None) -> frozenset[str] | None:
    return None if names is None else frozenset(names)
