"""``APIError``: an error answered in OpenAI's shape, and the ``param`` path style it names fields with."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["APIError", "param_path"]


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def param_path(keys: Iterable[str | int]) -> str | None:
    """``("messages", 1, "content")`` → ``"messages[1].content"`` (None for the body itself)."""
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text or None
