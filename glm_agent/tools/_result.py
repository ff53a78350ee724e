"""``ToolResult``: what one tool call produced, for the agent loop and for the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from glm_agent.messages import ObservationMessage

__all__ = ["ToolResult", "ErrorKind"]

ErrorKind = Literal["unknown_tool", "invalid_arguments", "exception", "timeout", "tool_error"]


@dataclass
class ToolResult:
    """The outcome of one call.

    ``observation`` is the text the model reads (cut to the registry's limit);
    ``full_text`` is the same text before cutting. A failed call has ``ok`` false,
    ``error`` set to its kind and an observation starting with ``Error:``.
    """

    name: str
    arguments: dict[str, Any]
    ok: bool
    observation: str
    value: Any = field(default=None, repr=False)  # bytes or an image would fill a screen
    error: ErrorKind | None = None
    files: list[Path] = field(default_factory=list)
    elapsed_s: float = 0.0
    truncated: bool = False
    full_text: str = ""
    exception: BaseException | None = field(default=None, repr=False)

    def to_message(self) -> ObservationMessage:
        """The observation as a message for the conversation."""
        return ObservationMessage(content=self.observation)
