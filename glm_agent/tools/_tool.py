"""``Tool``: a Python function with a ChatGLM3 schema and argument validation; the ``@tool`` decorator."""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, overload

from pydantic import BaseModel, ValidationError

from glm_agent.errors import ArgumentProblem, ToolArgumentsError, ToolDefinitionError
from glm_agent.tools._runner import run_async, run_sync
from glm_agent.tools._schema import (
    build_arguments_model,
    check_tool_name,
    describe_function,
    parameters_schema,
)

__all__ = ["Tool", "tool", "ToolArgumentsError", "ArgumentProblem"]

logger = logging.getLogger(__name__)


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_function_and_timeout(function: Any, timeout: float | None) -> None:
    """What every tool's constructor checks first: something to call, and a usable time limit."""
    if not callable(function):
        raise ToolDefinitionError(f"a tool must be made from a callable, not {type(function).__name__}")
    if timeout is not None and not timeout > 0:
        raise ToolDefinitionError(f"timeout must be a positive number of seconds or None, not {timeout!r}")


def describe_expected(schema: Mapping[str, Any]) -> str:
    """A short human (and model) readable account of what a JSON Schema accepts."""
    if "enum" in schema:
        return "one of " + ", ".join(_short_repr(v) for v in schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        text = " or ".join(kind)
    elif kind == "array" and isinstance(schema.get("items"), Mapping) and schema["items"]:
        text = f"array of {describe_expected(schema['items'])}"
    elif isinstance(kind, str):
        text = kind
    elif "anyOf" in schema:
        text = " or ".join(describe_expected(b) for b in schema["anyOf"])
    else:
        text = "any value"
    if "format" in schema:
        text += f" ({schema['format']})"
    return text


class Tool:
    """A function the model can call, with its ChatGLM3 schema.

    Calling the ``Tool`` object calls the function unchanged; ``validate_arguments``
    turns a model's arguments into keyword arguments for it. Run calls through a
    ``ToolRegistry`` to get timeouts and observation text. ``needs_approval``: an agent runs
    a call of this tool only when its approver says yes (with no approver, never).
    """

    #: the tool's name where it comes from (a remote server's own name), when the model sees another
    source_name: str | None = None
    #: a call runs only when the agent's approver says yes (no approver: the call is refused)
    needs_approval: bool = False

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        needs_approval: bool = False,
    ) -> None:
        check_function_and_timeout(function, timeout)
        self.needs_approval = bool(needs_approval)
        where = getattr(function, "__qualname__", None) or repr(function)
        self.name: str = check_tool_name(name if name is not None else getattr(function, "__name__", ""), where)
        spec = describe_function(function)
        self.description: str = spec.description if description is None else description
        self.function = function
        self.timeout = timeout
        self.is_async: bool = inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
            getattr(function, "__call__", None)  # noqa: B004 (a callable object with an async __call__)
        )
        self.arguments_model: type[BaseModel] = build_arguments_model(self.name, function, spec.parameters)
        self.parameters: dict[str, Any] = parameters_schema(self.arguments_model, function)
        self._aliases = {f.alias: key for key, f in self.arguments_model.model_fields.items()}
        self.__wrapped__ = function
        self.__doc__ = getattr(function, "__doc__", None)
        self.__name__ = getattr(function, "__name__", self.name)
        self.__qualname__ = getattr(function, "__qualname__", self.name)
        self.__module__ = getattr(function, "__module__", __name__)

    @classmethod
    def from_function(
        cls,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        needs_approval: bool = False,
    ) -> Tool:
        """Make a tool from a plain function (the same as ``@tool``)."""
        return cls(function, name=name, description=description, timeout=timeout, needs_approval=needs_approval)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __repr__(self) -> str:
        kind = "async " if self.is_async else ""
        return f"<{kind}Tool {self.name!r} ({', '.join(self.parameters['properties'])})>"

    @property
    def parameter_names(self) -> list[str]:
        return list(self.parameters["properties"])

    def replace(
        self,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        needs_approval: bool | None = None,
    ) -> Tool:
        """A copy with another name, description, time limit or approval mark (the function and schema stay)."""
        new = copy.copy(self)
        if needs_approval is not None:
            new.needs_approval = bool(needs_approval)
        if name is not None:
            new.name = check_tool_name(name, repr(self))
        if description is not None:
            new.description = description
        if timeout is not None:
            if not timeout > 0:
                raise ToolDefinitionError(f"timeout must be a positive number of seconds, not {timeout!r}")
            new.timeout = timeout
        return new

    def invoke(self, kwargs: dict[str, Any], timeout: float | None) -> Any:
        """Run the tool on validated arguments from sync code (what ``ToolRegistry.call`` does).

        Raises ``ToolTimeout`` past ``timeout`` seconds. A tool that runs elsewhere
        (a remote server) overrides this and ``ainvoke`` to apply the limit itself.
        """
        return run_sync(self.name, self.function, kwargs, timeout, self.is_async)

    async def ainvoke(self, kwargs: dict[str, Any], timeout: float | None) -> Any:
        """``invoke`` for async code: async functions run on the loop, sync ones in a thread."""
        return await run_async(self.name, self.function, kwargs, timeout, self.is_async)

    def chatglm3_schema(self) -> dict[str, Any]:
        """The ``{"name", "description", "parameters"}`` shape ChatGLM3 was tuned on."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    def openai_schema(self) -> dict[str, Any]:
        """The OpenAI ``{"type": "function", "function": {...}}`` shape."""
        return {"type": "function", "function": self.chatglm3_schema()}

    def validate_arguments(self, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check and coerce a call's arguments; return keyword arguments for the function.

        Raises ``ToolArgumentsError`` naming every bad, missing or unexpected argument.
        Parameters the call leaves out are not passed, so the function's own defaults apply.
        """
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, Mapping):
            raise ToolArgumentsError(
                self.name,
                [ArgumentProblem("(arguments)", f"expected keyword arguments, got {type(arguments).__name__}")],
            )
        problems = [
            ArgumentProblem(
                str(key),
                "unexpected argument; this tool takes "
                + (", ".join(self.parameter_names) if self.parameter_names else "no arguments"),
            )
            for key in arguments
            if key not in self._aliases
        ]
        try:
            validated = self.arguments_model.model_validate({k: v for k, v in arguments.items() if k in self._aliases})
        except ValidationError as exc:
            problems.extend(self._problems(exc))
            raise ToolArgumentsError(self.name, problems) from None
        if problems:
            raise ToolArgumentsError(self.name, problems)
        given = validated.model_fields_set
        return {
            field.alias or key: getattr(validated, key)
            for key, field in self.arguments_model.model_fields.items()
            if key in given
        }

    def _problems(self, exc: ValidationError) -> list[ArgumentProblem]:
        problems: list[ArgumentProblem] = []
        for err in exc.errors(include_url=False):
            loc = [str(part) for part in err.get("loc", ())]
            argument = ".".join(loc) or "(arguments)"
            top = self.parameters["properties"].get(loc[0], {}) if loc else {}
            expected = f"; expected {describe_expected(top)}" if top and len(loc) == 1 else ""
            if err.get("type") == "missing":
                what = "required argument is missing" if len(loc) == 1 else "required field is missing"
                problems.append(ArgumentProblem(argument, what + expected))
            else:
                got = _short_repr(err.get("input"))
                problems.append(ArgumentProblem(argument, f"{err.get('msg', 'invalid value')} (got {got}){expected}"))
        return problems


@overload
def tool(function: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    needs_approval: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    needs_approval: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function a tool: ``@tool`` or ``@tool(name=..., description=..., timeout=..., needs_approval=...)``.

    The schema comes from the type hints and the docstring. A parameter
    without a type hint is a ``ToolDefinitionError`` (annotate it ``Any`` to
    accept anything). ``needs_approval=True`` marks a tool whose calls an agent runs only when
    its approver says yes (``Agent(approve=...)``; without an approver they are refused).
    """
    if function is not None:
        return Tool(function, name=name, description=description, timeout=timeout, needs_approval=needs_approval)

    def decorate(fn: Callable[..., Any]) -> Tool:
        return Tool(fn, name=name, description=description, timeout=timeout, needs_approval=needs_approval)

    return decorate
