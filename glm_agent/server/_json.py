"""Request bodies parsed as JSON within limits: nesting depth, integer size, standard JSON, valid Unicode.

Python's ``json`` would take ``NaN``, 4,000-digit integers (and fail past 4,300 digits), nesting up to
the recursion limit (a ``RecursionError`` past it) and lone surrogates (``"\\ud800"``, which no UTF-8
tokenizer can encode). Each of these is a 400 here, with ``param`` naming where it is.
"""

from __future__ import annotations

import json
import math
from typing import Any

from glm_agent.server._errors import APIError, param_path

__all__ = ["parse_json_object", "MAX_JSON_DEPTH", "MAX_INTEGER_DIGITS"]

MAX_JSON_DEPTH = 64
MAX_INTEGER_DIGITS = 40  # int64 and uint64 have at most 20 digits; JSON Schema bounds may be a little longer


class _Refused(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise _Refused(f"an integer has more than {MAX_INTEGER_DIGITS} digits")
    return int(text)


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:20]} is too large for a float")
    return value


Trail = tuple[Any, str | int] | None  # (parent trail, key): a path built only when it is needed


def _param(trail: Trail, limit: int | None = None) -> str | None:
    keys: list[str | int] = []
    while trail is not None:
        trail, key = trail
        keys.append(key)
    return param_path(list(reversed(keys))[:limit])


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _refuse(message: str, trail: Trail, limit: int | None = None) -> APIError:
    return APIError(400, message, code="invalid_json", param=_param(trail, limit))


def _check_tree(data: Any) -> None:
    """Depth and lone surrogates, without recursion (a deep body must not be a RecursionError)."""
    stack: list[tuple[Any, int, Trail]] = [(data, 0, None)]
    while stack:
        value, depth, trail = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _refuse(f"the request nests deeper than {MAX_JSON_DEPTH} levels", trail, limit=4)
        if isinstance(value, str):
            if _has_surrogate(value):
                raise _refuse(
                    "a string contains a lone UTF-16 surrogate (e.g. '\\ud800'); it is not valid Unicode", trail
                )
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):  # reversed onto the stack: checked in document order
                if _has_surrogate(key):
                    raise _refuse("a key contains a lone UTF-16 surrogate; it is not valid Unicode", trail)
                stack.append((item, depth + 1, (trail, key)))
        elif isinstance(value, list):
            stack.extend((value[index], depth + 1, (trail, index)) for index in range(len(value) - 1, -1, -1))


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a dict, or an ``APIError`` (400) saying what is wrong and where."""
    try:
        data = json.loads(raw, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except _Refused as exc:
        raise APIError(400, f"the request body is refused: {exc}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, f"the request nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    _check_tree(data)
    return data
