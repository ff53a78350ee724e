"""Signature + docstring -> parameter specs, a pydantic arguments model and a ChatGLM3 JSON Schema.

The JSON Schema is the shape ChatGLM3 was tuned on: an object with ``type``,
``properties`` and ``required``; nested definitions are inlined (no ``$ref``),
pydantic's ``title`` keys are dropped, ``Optional[X]`` becomes
``{"type": [X, "null"]}`` and a ``None`` default is left implicit (the
parameter is simply not required).
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import docstring_parser
import typing_extensions
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from glm_agent.errors import ToolDefinitionError
from glm_agent.messages import INTERPRETER

__all__ = [
    "ParameterSpec",
    "FunctionSpec",
    "describe_function",
    "build_arguments_model",
    "parameters_schema",
    "clean_schema",
    "check_tool_name",
]

logger = logging.getLogger(__name__)

_EMPTY = inspect.Parameter.empty
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_RESERVED_NAMES = {INTERPRETER}

# JSON Schema keywords whose value is a schema / a map of schemas / a list of schemas.
_SCHEMA_KEYS = {
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "additionalItems",
}
_MAP_KEYS = {"properties", "patternProperties", "dependentSchemas"}
_LIST_KEYS = {"anyOf", "oneOf", "allOf", "prefixItems"}
_FIRST_KEYS = ("type", "description")


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter of a tool function, after reading its annotation and the docstring."""

    name: str
    annotation: Any
    default: Any
    description: str | None
    force_required: bool = False

    @property
    def has_default(self) -> bool:
        return self.default is not _EMPTY and not self.force_required


@dataclass(frozen=True)
class FunctionSpec:
    """What a function says about itself: its description and its parameters."""

    description: str
    parameters: tuple[ParameterSpec, ...]


def check_tool_name(name: str, where: str) -> str:
    """Return ``name`` if the model can write it as a call's metadata line, else raise."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ToolDefinitionError(
            f"tool name {name!r} of {where} is not usable: use 1-64 letters, digits, '_' or '-' "
            "(pass name=... to @tool)"
        )
    if name in _RESERVED_NAMES:
        raise ToolDefinitionError(
            f"tool name {name!r} of {where} is reserved for the code interpreter; pass another name=... to @tool"
        )
    return name


def _qualname(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _parse_docstring(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    doc = inspect.getdoc(fn)
    if not doc:
        return "", {}
    try:
        parsed = docstring_parser.parse(doc)
    except docstring_parser.ParseError as exc:
        logger.debug("docstring of %s not parsed (%s); using it whole", _qualname(fn), exc)
        return doc.strip(), {}
    parts = [p.strip() for p in (parsed.short_description, parsed.long_description) if p and p.strip()]
    params = {p.arg_name: p.description.strip() for p in parsed.params if p.description and p.description.strip()}
    return "\n".join(parts), params


def _split_annotated(hint: Any, fn: Callable[..., Any], pname: str) -> tuple[Any, str | None, bool | None]:
    """Take the ChatGLM3 convention ``Annotated[T, "description", required]`` apart.

    Returns the annotation without the string/bool metadata (other metadata such
    as ``Field(...)`` is kept), the description string and the required flag.
    """
    if typing.get_origin(hint) is not Annotated:
        return hint, None, None
    base, *metadata = typing.get_args(hint)
    description: str | None = None
    required: bool | None = None
    rest: list[Any] = []
    for item in metadata:
        if isinstance(item, str) and description is None:
            description = item
        elif isinstance(item, bool) and required is None:
            required = item
        elif isinstance(item, (str, bool)):
            raise ToolDefinitionError(
                f"parameter {pname!r} of {_qualname(fn)} has more than one description or required flag "
                "in Annotated[...]; use Annotated[T, 'description', required]"
            )
        else:
            rest.append(item)
    args = (base, *rest)
    annotation = Annotated[args] if rest else base
    return annotation, description, required


def _field_description(annotation: Any) -> str | None:
    if typing.get_origin(annotation) is Annotated:
        for item in typing.get_args(annotation)[1:]:
            if isinstance(item, FieldInfo) and item.description:
                return item.description
    return None


def describe_function(fn: Callable[..., Any]) -> FunctionSpec:
    """Read a function's signature, type hints and docstring (Google, NumPy, reST or Epydoc)."""
    where = _qualname(fn)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise ToolDefinitionError(f"cannot read the signature of {where}: {exc}") from exc
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # NameError for an unresolved forward reference, and friends
        raise ToolDefinitionError(
            f"cannot resolve the type hints of {where}: {type(exc).__name__}: {exc}; "
            "define the types used in the signature at module level"
        ) from exc
    description, docs = _parse_docstring(fn)
    params: list[ParameterSpec] = []
    for pname, param in signature.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(
                f"parameter {pname!r} of {where} is *args/**kwargs; a tool takes named parameters only"
            )
        if pname not in hints:
            raise ToolDefinitionError(
                f"parameter {pname!r} of {where} has no type hint; annotate it "
                f"(e.g. `{pname}: str`, or `{pname}: Any` to accept anything)"
            )
        annotation, annotated_doc, required = _split_annotated(hints[pname], fn, pname)
        if required is False and param.default is _EMPTY:
            raise ToolDefinitionError(
                f"parameter {pname!r} of {where} is marked not required in Annotated[...] but has no default; "
                "give it a default value"
            )
        pdesc = annotated_doc or _field_description(annotation) or docs.get(pname)
        params.append(ParameterSpec(pname, annotation, param.default, pdesc, force_required=required is True))
    unknown = set(docs) - {p.name for p in params}
    if unknown:
        logger.debug("docstring of %s documents unknown parameters %s", where, sorted(unknown))
    return FunctionSpec(description, tuple(params))


def portable_annotation(annotation: Any) -> Any:
    """``annotation`` with every ``typing.TypedDict`` in it made a ``typing_extensions.TypedDict``.

    pydantic refuses ``typing.TypedDict`` before Python 3.12 (it lacks what pydantic reads);
    the same class rebuilt with ``typing_extensions`` has the same keys, types, totality and
    docstring. Other annotations come back as they are.
    """
    if sys.version_info >= (3, 12):
        return annotation
    return _portable(annotation)


@functools.lru_cache(maxsize=256)
def _portable_typed_dict(cls: type) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    required = getattr(cls, "__required_keys__", frozenset(hints))
    fields = {
        name: (typing_extensions.Required if name in required else typing_extensions.NotRequired)[_portable(hint)]
        for name, hint in hints.items()
    }
    make: Any = typing_extensions.TypedDict  # the functional form, with a name known only at run time
    portable = make(cls.__name__, fields)
    portable.__doc__ = cls.__doc__
    portable.__module__ = cls.__module__
    return portable


def _portable(annotation: Any) -> Any:
    if isinstance(annotation, type) and type(annotation).__module__ == "typing" and typing.is_typeddict(annotation):
        return _portable_typed_dict(annotation)
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if not args or origin is None:
        return annotation
    if origin is Annotated:
        return annotation.copy_with((_portable(args[0]),))  # the metadata (descriptions, Field) stays
    converted = tuple(_portable(a) for a in args)
    if converted == args:
        return annotation
    try:
        return annotation.copy_with(converted)
    except AttributeError:  # X | Y (types.UnionType) and builtin generics
        return typing.Union[converted] if origin in (typing.Union, types.UnionType) else origin[converted]


def build_arguments_model(tool_name: str, fn: Callable[..., Any], params: tuple[ParameterSpec, ...]) -> type[BaseModel]:
    """A pydantic model that validates and coerces a call's arguments (keyed by parameter name)."""
    fields: dict[str, Any] = {}
    for index, p in enumerate(params):
        kwargs: dict[str, Any] = {"alias": p.name}
        if p.description and not _field_description(p.annotation):
            kwargs["description"] = p.description
        if p.has_default:
            kwargs["default"] = p.default
        fields[f"p{index}"] = (portable_annotation(p.annotation), Field(**kwargs))
    config = ConfigDict(coerce_numbers_to_str=True, arbitrary_types_allowed=False)
    try:
        return create_model(f"{tool_name}_arguments", __config__=config, **fields)
    except Exception as exc:
        culprit = _find_bad_parameter(tool_name, params)
        raise ToolDefinitionError(f"cannot build a tool from {_qualname(fn)}{culprit}: {exc}".rstrip()) from exc


def _find_bad_parameter(tool_name: str, params: tuple[ParameterSpec, ...]) -> str:
    for index, p in enumerate(params):
        try:
            fields: dict[str, Any] = {f"p{index}": (portable_annotation(p.annotation), Field(alias=p.name))}
            model = create_model(f"{tool_name}_check", **fields)
            model.model_json_schema(by_alias=True)
        except Exception:
            return f" (parameter {p.name!r}: type {p.annotation!r} is not supported)"
    return ""


def parameters_schema(model: type[BaseModel], fn: Callable[..., Any]) -> dict[str, Any]:
    """The ChatGLM3 ``parameters`` object for an arguments model."""
    try:
        raw = model.model_json_schema(by_alias=True)
    except Exception as exc:
        raise ToolDefinitionError(f"cannot describe the parameters of {_qualname(fn)} as JSON Schema: {exc}") from exc
    defs = raw.get("$defs", {})
    properties: dict[str, Any] = {}
    for name, schema in raw.get("properties", {}).items():
        try:
            properties[name] = clean_schema(schema, defs)
        except ToolDefinitionError as exc:
            raise ToolDefinitionError(f"parameter {name!r} of {_qualname(fn)}: {exc}") from exc
    required = [f.alias or name for name, f in model.model_fields.items() if f.is_required()]
    return {"type": "object", "properties": properties, "required": required}


def clean_schema(node: Any, defs: dict[str, Any], _stack: tuple[str, ...] = ()) -> Any:
    """Inline ``$ref`` s, drop titles and ``None`` defaults, fold simple unions, put type first."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in _stack:
            raise ToolDefinitionError(
                f"type {name!r} refers to itself; recursive types cannot be inlined for ChatGLM3, "
                "use a non-recursive type (e.g. dict[str, Any])"
            )
        if name not in defs:
            raise ToolDefinitionError(f"JSON Schema reference {ref!r} has no definition")
        out.update(clean_schema(defs[name], defs, (*_stack, name)))
    for key, value in node.items():
        if key in ("$ref", "$defs", "title"):
            continue
        if key in _SCHEMA_KEYS:
            out[key] = clean_schema(value, defs, _stack)
        elif key in _MAP_KEYS and isinstance(value, dict):
            out[key] = {k: clean_schema(v, defs, _stack) for k, v in value.items()}
        elif key in _LIST_KEYS and isinstance(value, list):
            out[key] = [clean_schema(v, defs, _stack) for v in value]
        else:
            out[key] = value
    return _tidy(out)


def _tidy(node: dict[str, Any]) -> dict[str, Any]:
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
        node = {**all_of[0], **{k: v for k, v in node.items() if k != "allOf"}}
    any_of = node.get("anyOf")
    if (
        isinstance(any_of, list)
        and any_of
        and all(isinstance(b, dict) and set(b) == {"type"} and isinstance(b["type"], str) for b in any_of)
    ):
        types = list(dict.fromkeys(b["type"] for b in any_of))
        node = {k: v for k, v in node.items() if k != "anyOf"}
        node["type"] = types[0] if len(types) == 1 else types
    if "const" in node and "enum" not in node:
        node = {("enum" if k == "const" else k): ([v] if k == "const" else v) for k, v in node.items()}
    if "default" in node and node["default"] is None:
        node = {k: v for k, v in node.items() if k != "default"}
    first = {k: node[k] for k in _FIRST_KEYS if k in node}
    return {**first, **{k: v for k, v in node.items() if k not in first}}
