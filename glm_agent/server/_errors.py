"""``APIError``: an error answered in OpenAI's shape; the ``param`` path style; how backend failures map onto it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from glm_agent.errors import ContextLengthError, GlmAgentError

__all__ = ["APIError", "param_path", "Disconnected", "backend_error"]

logger = logging.getLogger(__name__)


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


class Disconnected(Exception):
    """The client went away before its answer was ready."""


def backend_error(exc: BaseException) -> APIError:
    """The API error for a failure while generating: 400 for a prompt too long, else 500."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, GlmAgentError):
        return APIError(500, f"{type(exc).__name__}: {exc}", type="server_error", code="model_error")
    logger.error("generation failed", exc_info=exc)
    return APIError(500, f"the model failed: {type(exc).__name__}: {exc}", type="server_error")
