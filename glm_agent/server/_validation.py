"""Request checks where OpenAI is strict: typed fields without coercion, valid tool schemas, answered calls.

Deliberately lenient (documented in the README): unknown fields are ignored (as vLLM does), legacy
``function`` messages need only content, and tool schemas are checked as JSON Schema but not against
OpenAI's narrower "strict mode" subset.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jsonschema
from pydantic import BaseModel, ValidationError

from glm_agent.server._errors import APIError, param_path

__all__ = ["validate_body", "check_tool_schemas", "check_tool_messages"]

Model = TypeVar("Model", bound=BaseModel)


def validate_body(data: dict[str, Any], schema: type[Model]) -> Model:
    """``data`` as ``schema`` (pydantic strict: ``true`` is not 1, ``"yes"`` is not true), or a 400."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        problems = "; ".join(f"{param_path(e['loc']) or 'body'}: {e['msg']}" for e in errors[:5])
        raise APIError(400, f"invalid request: {problems}", param=param_path(errors[0]["loc"])) from None


def check_tool_schemas(tools: list[Any] | None) -> None:
    """Each tool's ``parameters`` is a valid JSON Schema (Draft 2020-12) of an object."""
    for index, item in enumerate(tools or []):
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or "parameters" not in function:
            continue  # the shape itself is checked by the mapping, with its own message
        parameters = function["parameters"]
        param = f"tools[{index}].function.parameters"
        if not isinstance(parameters, dict):
            raise APIError(400, f"{param} must be a JSON Schema object", param=param, code="invalid_schema")
        try:
            jsonschema.Draft202012Validator.check_schema(parameters)
        except jsonschema.SchemaError as exc:
            where = "".join(f"[{p!r}]" for p in exc.path)
            raise APIError(
                400,
                f"{param} is not a valid JSON Schema: {exc.message}" + (f" (at {where})" if where else ""),
                param=param,
                code="invalid_schema",
            ) from None
        if parameters.get("type", "object") != "object":
            raise APIError(
                400,
                f"{param} must describe an object (type: 'object'), not type {parameters['type']!r}",
                param=param,
                code="invalid_schema",
            )


def check_tool_messages(messages: list[Any]) -> None:
    """Every ``tool`` message answers an earlier assistant ``tool_calls`` entry by its ``tool_call_id``."""
    call_ids: set[str] = set()
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue  # the mapping refuses it with its own message
        if message.get("role") == "assistant" and isinstance(message.get("tool_calls"), list):
            call_ids.update(
                c["id"] for c in message["tool_calls"] if isinstance(c, dict) and isinstance(c.get("id"), str)
            )
        if message.get("role") != "tool":
            continue
        call_id = message.get("tool_call_id")
        param = f"messages[{index}].tool_call_id"
        if not isinstance(call_id, str) or not call_id:
            raise APIError(400, f"{param} is missing: a tool message answers a call by its id", param=param)
        if call_id not in call_ids:
            raise APIError(
                400,
                f"{param} is {call_id!r}, which no earlier assistant message's tool_calls has; "
                "a tool message must answer a preceding call",
                param=param,
            )
