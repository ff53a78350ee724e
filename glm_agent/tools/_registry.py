"""``ToolRegistry``: the tools an agent may call, their schemas, and safe calls by name."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from glm_agent.errors import ToolDefinitionError
from glm_agent.tools import _observation as obs
from glm_agent.tools._loading import load_module_tools
from glm_agent.tools._output import ToolOutput
from glm_agent.tools._result import ErrorKind, ToolResult
from glm_agent.tools._runner import ToolTimeout
from glm_agent.tools._tool import Tool, ToolArgumentsError
from glm_agent.tools._toolset import MountedToolset, Toolset, check_prefix, frozen

__all__ = ["ToolRegistry", "load_tools"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_OBSERVATION_CHARS = 4000


class ToolRegistry:
    """A named set of tools.

    ``call`` / ``acall`` never raise for a bad call: an unknown tool, bad
    arguments, an exception or a timeout come back as a failed ``ToolResult``
    whose observation tells the model what to fix, and the registry stays usable.

    Args:
        tools: tools (or plain functions) to register.
        output_dir: where bytes and images returned by tools are saved
            (default: a temporary folder made on first use and kept).
        max_observation_chars: longer observations are cut with a marker (None: never).
        default_timeout: seconds a tool may run when it has no timeout of its own (None: no limit).
    """

    def __init__(
        self,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        *,
        output_dir: str | Path | None = None,
        max_observation_chars: int | None = DEFAULT_MAX_OBSERVATION_CHARS,
        default_timeout: float | None = None,
    ) -> None:
        if max_observation_chars is not None and max_observation_chars < 1:
            raise ValueError("max_observation_chars must be a positive number of characters or None")
        if default_timeout is not None and not default_timeout > 0:
            raise ValueError("default_timeout must be a positive number of seconds or None")
        self._tools: dict[str, Tool] = {}
        self._output_dir = Path(output_dir) if output_dir is not None else None
        self._temporary_dir: weakref.finalize[..., Any] | None = None  # the folder we made, not a given one
        self._dir_lock = threading.Lock()
        self.max_observation_chars = max_observation_chars
        self.default_timeout = default_timeout
        self._toolsets: list[MountedToolset] = []
        self._toolsets_lock = threading.RLock()
        for item in tools:
            self.register(item)

    # -- membership -------------------------------------------------------------------------
    def register(
        self,
        function: Tool | Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        replace: bool = False,
    ) -> Any:
        """Add a tool or a plain function (made a tool); also usable as a decorator.

        A second tool with the same name is a ``ToolDefinitionError`` unless ``replace=True``.
        """
        if function is None:
            return lambda fn: self.register(fn, name=name, description=description, timeout=timeout, replace=replace)
        if isinstance(function, Tool):
            changed = name is not None or description is not None or timeout is not None
            new = function.replace(name=name, description=description, timeout=timeout) if changed else function
        else:
            new = Tool(function, name=name, description=description, timeout=timeout)
        return self.add(new, replace=replace)

    def add(self, tool: Tool, *, replace: bool = False) -> Tool:
        """Add a ``Tool`` object."""
        if not isinstance(tool, Tool):
            raise TypeError(f"add() takes a Tool, not {type(tool).__name__}; use register() for a function")
        existing = self._tools.get(tool.name)
        if existing is not None and existing is not tool and not replace:
            raise ToolDefinitionError(
                f"a tool named {tool.name!r} is already registered; rename one (@tool(name=...)) or pass replace=True"
            )
        self._tools[tool.name] = tool
        return tool

    def remove(self, name: str) -> Tool:
        """Remove and return the tool called ``name``."""
        try:
            return self._tools.pop(name)
        except KeyError:
            raise KeyError(f"no tool named {name!r}; registered tools: {', '.join(self._tools) or '(none)'}") from None

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __getitem__(self, name: str) -> Tool:
        tool = self._tools.get(name)
        if tool is None:
            raise KeyError(f"no tool named {name!r}; registered tools: {', '.join(self._tools) or '(none)'}")
        return tool

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def __repr__(self) -> str:
        return f"ToolRegistry({', '.join(self._tools)})"

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def load(self, source: str | Path | ModuleType, *, replace: bool = False) -> list[Tool]:
        """Add every ``Tool`` in a module, a module path, a ``.py`` file or a folder of them."""
        tools = load_module_tools(source)
        for tool in tools:
            self.add(tool, replace=replace)
        return tools

    # -- toolsets ---------------------------------------------------------------------------
    def add_toolset(
        self,
        toolset: Toolset,
        *,
        prefix: str | None = None,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Tool]:
        """Mount a source of tools (e.g. an MCP server); its tools are added as ``prefix__tool``.

        ``include`` keeps only the named tools, ``exclude`` drops some (the source's own names).
        A name that clashes with a registered tool is a ``ToolDefinitionError``; nothing is
        added then. The registry closes the toolset in ``close()``.
        """
        if not isinstance(toolset, Toolset):
            raise TypeError(f"add_toolset() takes a Toolset (list_tools, tools_changed, close), not {toolset!r}")
        mount = MountedToolset(
            toolset, None if prefix is None else check_prefix(prefix), frozen(include), frozenset(exclude)
        )
        with self._toolsets_lock:
            tools = mount.named_tools()
            self._add_all(mount, tools)
            self._toolsets.append(mount)
        return tools

    def _add_all(self, mount: MountedToolset, tools: list[Tool]) -> None:
        for tool in tools:
            if tool.name in self._tools:
                raise ToolDefinitionError(
                    f"tool {tool.name!r} of {mount.label} clashes with a tool already registered under that name; "
                    "mount the source under another prefix or exclude the tool"
                )
        for tool in tools:
            self._tools[tool.name] = tool
        mount.names = [t.name for t in tools]

    @property
    def toolsets(self) -> list[Toolset]:
        """The mounted toolsets, in the order they were added."""
        return [m.toolset for m in self._toolsets]

    def refresh(self) -> bool:
        """Re-list every toolset whose tools changed (an MCP ``tools/list_changed``); True if any did.

        A toolset that cannot be listed now keeps its previous tools (logged as a warning).
        """
        changed = False
        with self._toolsets_lock:
            for mount in self._toolsets:
                if not mount.toolset.tools_changed:
                    continue
                old = {name: self._tools.pop(name) for name in mount.names if name in self._tools}
                try:
                    self._add_all(mount, mount.named_tools())
                except Exception as exc:
                    logger.warning("tools of %s not refreshed (%s); keeping the previous list", mount.label, exc)
                    self._tools.update(old)
                    continue
                changed = True
        return changed

    def remove_toolset(self, toolset: Toolset) -> None:
        """Take a mounted toolset's tools out of the registry and close it."""
        self._unmount(lambda mount: mount.toolset is toolset)

    def _unmount(self, leaving: Callable[[MountedToolset], bool]) -> None:
        """Take the mounts ``leaving`` picks out (their tools with them), then close them outside the lock."""
        with self._toolsets_lock:
            gone = [m for m in self._toolsets if leaving(m)]
            self._toolsets = [m for m in self._toolsets if not leaving(m)]
            for mount in gone:
                for name in mount.names:
                    self._tools.pop(name, None)
        for mount in gone:
            self._close(mount)

    @staticmethod
    def _close(mount: MountedToolset) -> None:
        try:
            mount.toolset.close()
        except Exception as exc:
            logger.warning("closing toolset %s failed: %s", mount.label, exc, exc_info=exc)

    def close(self) -> None:
        """Close every mounted toolset (their tools leave the registry; plain tools stay) and remove the
        temporary folder of saved outputs, if the registry made one."""
        self._unmount(lambda mount: True)
        with self._dir_lock:
            finalizer, self._temporary_dir = self._temporary_dir, None
            if finalizer is not None:
                finalizer()
                self._output_dir = None

    def __enter__(self) -> ToolRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schemas ----------------------------------------------------------------------------
    def chatglm3_schemas(self) -> list[dict[str, Any]]:
        """The tools for a ChatGLM3 system message (``SystemMessage(tools=...)``)."""
        return [t.chatglm3_schema() for t in self._tools.values()]

    def openai_schemas(self) -> list[dict[str, Any]]:
        """The tools in the OpenAI ``tools=[{"type": "function", ...}]`` shape."""
        return [t.openai_schema() for t in self._tools.values()]

    # -- calls ------------------------------------------------------------------------------
    @property
    def output_dir(self) -> Path:
        """Where returned bytes and images are saved; a temporary folder is made on first use (and removed
        with the registry: :meth:`close`, or when it is garbage-collected or the process exits)."""
        with self._dir_lock:
            if self._output_dir is None:
                self._output_dir = Path(tempfile.mkdtemp(prefix="glm-agent-tools-"))
                self._temporary_dir = weakref.finalize(self, shutil.rmtree, self._output_dir, True)
            return self._output_dir

    def call(
        self, name: str, arguments: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> ToolResult:
        """Validate the arguments, run the tool and return its result; never raises for a bad call.

        A sync tool with a time limit runs in a worker thread; past the limit it is
        abandoned (a thread cannot be killed) and a ``timeout`` result comes back.
        """
        start = time.perf_counter()
        prepared = self._prepare(name, arguments, start)
        if isinstance(prepared, ToolResult):
            return prepared
        tool, kwargs, args = prepared
        limit = self._limit(tool, timeout)
        try:
            value = tool.invoke(kwargs, limit)
        except ToolTimeout:
            return self._failed(tool.name, args, "timeout", obs.timeout_text(tool.name, limit or 0), start)
        except (Exception, SystemExit) as exc:
            logger.info("tool %r failed with %s: %s", tool.name, type(exc).__name__, exc)
            logger.debug("traceback of tool %r", tool.name, exc_info=exc)
            return self._failed(tool.name, args, "exception", obs.exception_text(tool.name, exc), start, exc)
        return self._finish(tool, args, value, start)

    async def acall(
        self, name: str, arguments: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> ToolResult:
        """``call`` for async code: async tools run on the loop, sync tools in a thread."""
        start = time.perf_counter()
        prepared = self._prepare(name, arguments, start)
        if isinstance(prepared, ToolResult):
            return prepared
        tool, kwargs, args = prepared
        limit = self._limit(tool, timeout)
        try:
            value = await tool.ainvoke(kwargs, limit)
        except ToolTimeout:
            return self._failed(tool.name, args, "timeout", obs.timeout_text(tool.name, limit or 0), start)
        except (Exception, SystemExit) as exc:
            logger.info("tool %r failed with %s: %s", tool.name, type(exc).__name__, exc)
            logger.debug("traceback of tool %r", tool.name, exc_info=exc)
            return self._failed(tool.name, args, "exception", obs.exception_text(tool.name, exc), start, exc)
        return self._finish(tool, args, value, start)

    def check(self, name: str, arguments: Mapping[str, Any] | None = None) -> ToolResult | None:
        """The failed result a call would get without running anything (an unknown tool, bad arguments),
        or None when it may run: what an agent checks before anyone is asked to approve the call."""
        prepared = self._prepare(name, arguments, time.perf_counter())
        return prepared if isinstance(prepared, ToolResult) else None

    def _limit(self, tool: Tool, timeout: float | None) -> float | None:
        if timeout is not None:
            return timeout
        return tool.timeout if tool.timeout is not None else self.default_timeout

    def _prepare(
        self, name: str, arguments: Mapping[str, Any] | None, start: float
    ) -> ToolResult | tuple[Tool, dict[str, Any], dict[str, Any]]:
        args = dict(arguments) if isinstance(arguments, Mapping) else {}
        clean_name = name.strip() if isinstance(name, str) else str(name)
        tool = self._tools.get(clean_name)
        if tool is None:
            return self._failed(clean_name, args, "unknown_tool", obs.unknown_tool_text(clean_name, self._tools), start)
        try:
            kwargs = tool.validate_arguments(arguments)
        except ToolArgumentsError as exc:
            text = obs.invalid_arguments_text(tool.name, exc.problems)
            return self._failed(tool.name, args, "invalid_arguments", text, start, exc)
        return tool, kwargs, args

    def _failed(
        self,
        name: str,
        arguments: dict[str, Any],
        kind: ErrorKind,
        text: str,
        start: float,
        exc: BaseException | None = None,
    ) -> ToolResult:
        return self._result(name, arguments, text, start, ok=False, error=kind, exception=exc)

    def _result(self, name: str, arguments: dict[str, Any], text: str, start: float, **fields: Any) -> ToolResult:
        """A result whose observation is ``text`` cut to the registry's limit (the whole text kept)."""
        shown, cut = obs.truncate(text, self.max_observation_chars)
        return ToolResult(
            name=name,
            arguments=arguments,
            observation=shown,
            elapsed_s=time.perf_counter() - start,
            truncated=cut,
            full_text=text,
            **fields,
        )

    def _finish(self, tool: Tool, arguments: dict[str, Any], value: Any, start: float) -> ToolResult:
        if isinstance(value, ToolOutput):
            return self._finish_output(tool, arguments, value, start)
        try:
            text, files = obs.render_value(value, tool.name, lambda: self.output_dir)
        except Exception as exc:
            logger.warning("result of tool %r could not be rendered", tool.name, exc_info=exc)
            text = (
                f"Error: the result of tool {tool.name!r} could not be turned into text ({type(exc).__name__}: {exc})"
            )
            return self._failed(tool.name, arguments, "exception", text, start, exc)
        return self._result(tool.name, arguments, text, start, ok=True, value=value, files=files)

    def _finish_output(self, tool: Tool, arguments: dict[str, Any], output: ToolOutput, start: float) -> ToolResult:
        try:
            text, files = obs.render_output(output, tool.name, lambda: self.output_dir)
        except Exception as exc:
            logger.warning("output of tool %r could not be saved", tool.name, exc_info=exc)
            text = f"Error: the output of tool {tool.name!r} could not be saved ({type(exc).__name__}: {exc})"
            return self._failed(tool.name, arguments, "exception", text, start, exc)
        if output.is_error:
            text = obs.tool_error_text(tool.name, text)
            return self._result(
                tool.name, arguments, text, start, ok=False, error="tool_error", value=output.value, files=files
            )
        return self._result(tool.name, arguments, text, start, ok=True, value=output.value, files=files)


def load_tools(
    sources: str | Path | ModuleType | Iterable[str | Path | ModuleType], **registry_options: Any
) -> ToolRegistry:
    """A new ``ToolRegistry`` with the tools of every source (see ``load_module_tools``).

    ``registry_options`` go to ``ToolRegistry`` (``output_dir``, ``default_timeout``, ...).
    Two tools with the same name are a ``ToolDefinitionError``.
    """
    registry = ToolRegistry(**registry_options)
    if isinstance(sources, (str, Path, ModuleType)):
        sources = [sources]
    for source in cast("Iterable[str | Path | ModuleType]", sources):  # mypy does not narrow ModuleType out
        registry.load(source)
    return registry
