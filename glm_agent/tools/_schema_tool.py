"""``SchemaTool``: a tool described by a JSON Schema instead of a Python signature.

For tools defined elsewhere (a remote server, a config file): the parameters
schema is shown to the model as given (``$defs``, ``anyOf`` and all) and the
arguments are checked against it with ``jsonschema`` before the call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from glm_agent.errors import ToolDefinitionError
from glm_agent.tools._schema import check_tool_name
from glm_agent.tools._tool import (
    ArgumentProblem,
    Tool,
    ToolArgumentsError,
    check_function_and_timeout,
    describe_expected,
)

__all__ = ["SchemaTool"]


def _validator_for(schema: Mapping[str, Any], where: str) -> Any:
    try:
        import jsonschema
    except ImportError as exc:  # pragma: no cover - jsonschema comes with the mcp and dev extras
        raise ToolDefinitionError(
            f"{where}: tools described by a JSON Schema need the jsonschema package; "
            "pip install jsonschema (or glm-agent[mcp])"
        ) from exc
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        raise ToolDefinitionError(f"{where}: the parameters are not a valid JSON Schema: {exc.message}") from exc
    return cls(schema)


def _path(error: Any) -> str:
    return ".".join(str(part) for part in error.absolute_path)


class SchemaTool(Tool):
    """A tool whose parameters are a JSON Schema; ``function`` gets the checked arguments as keywords.

    Args:
        name: the name the model calls (1-64 letters, digits, ``_`` or ``-``).
        parameters: a JSON Schema of an object (``{"type": "object", "properties": ...}``).
        function: called as ``function(**arguments)``; may be ``async``.
        description: what the tool does, for the model.
        timeout: seconds a call may run (None: the registry's default).
        needs_approval: an agent runs a call only when its approver says yes.
    """

    def __init__(
        self,
        name: str,
        parameters: Mapping[str, Any],
        function: Callable[..., Any],
        *,
        description: str = "",
        timeout: float | None = None,
        needs_approval: bool = False,
    ) -> None:
        check_function_and_timeout(function, timeout)
        self.needs_approval = bool(needs_approval)
        if not isinstance(parameters, Mapping):
            raise ToolDefinitionError(f"tool {name!r}: parameters must be a JSON Schema object, not {parameters!r}")
        self.name = check_tool_name(name, f"tool {name!r}")
        self.description = description
        self.function = function
        self.timeout = timeout
        self.is_async = inspect.iscoroutinefunction(function)
        self.parameters = dict(parameters)
        self._validator = _validator_for(self.parameters, f"tool {name!r}")
        self.__wrapped__ = function
        self.__doc__ = description
        self.__name__ = self.name
        self.__qualname__ = self.name
        self.__module__ = getattr(function, "__module__", __name__)

    def __repr__(self) -> str:
        return f"<SchemaTool {self.name!r} ({', '.join(self.parameter_names)})>"

    @property
    def parameter_names(self) -> list[str]:
        properties = self.parameters.get("properties")
        return list(properties) if isinstance(properties, Mapping) else []

    def validate_arguments(self, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check the arguments against the schema; raise ``ToolArgumentsError`` naming every problem."""
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, Mapping):
            raise ToolArgumentsError(
                self.name,
                [ArgumentProblem("(arguments)", f"expected keyword arguments, got {type(arguments).__name__}")],
            )
        given = dict(arguments)
        problems: list[ArgumentProblem] = []
        for error in sorted(self._validator.iter_errors(given), key=lambda e: [str(p) for p in e.absolute_path]):
            for problem in self._problems(error):
                if problem not in problems:
                    problems.append(problem)
        if problems:
            raise ToolArgumentsError(self.name, problems)
        return given

    def _problems(self, error: Any) -> list[ArgumentProblem]:
        where = _path(error)
        if error.validator == "required" and isinstance(error.instance, Mapping):
            what = "required argument is missing" if not where else "required field is missing"
            missing = [p for p in error.validator_value if p not in error.instance]
            return [ArgumentProblem(f"{where}.{p}" if where else str(p), what) for p in missing]
        if error.validator == "additionalProperties" and not where:
            names = ", ".join(self.parameter_names) or "no arguments"
            extra = [k for k in error.instance if k not in (self.parameters.get("properties") or {})]
            return [ArgumentProblem(str(k), f"unexpected argument; this tool takes {names}") for k in extra] or [
                ArgumentProblem("(arguments)", error.message)
            ]
        properties = self.parameters.get("properties") or {}
        top = properties.get(where) if isinstance(properties, Mapping) else None
        expected = f"; expected {describe_expected(top)}" if isinstance(top, Mapping) and top else ""
        return [ArgumentProblem(where or "(arguments)", f"{error.message}{expected}")]
