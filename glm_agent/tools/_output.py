"""``ToolOutput``: a result a tool gives in parts (text and files), or a failure in its own words."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

__all__ = ["Attachment", "ToolOutput", "OutputPart"]


@dataclass(frozen=True)
class Attachment:
    """Bytes a tool returns with a MIME type (an image, a sound, a PDF); the registry saves them as a file."""

    data: bytes
    mime_type: str = "application/octet-stream"
    #: a short label shown in the observation (e.g. a resource URI)
    label: str = ""


OutputPart = Union[str, Attachment]


@dataclass(frozen=True)
class ToolOutput:
    """What a tool returns when a plain value is not enough.

    ``parts`` are shown in order: text as is, attachments saved in the registry's
    output folder and referenced by path. ``is_error=True`` makes the call a failed
    ``ToolResult`` (error kind ``"tool_error"``) whose observation is ``Error: `` and the
    text the tool gave, for failures the tool reports itself (a remote tool's error).
    ``value`` is kept on the ``ToolResult`` for the caller (e.g. structured data).
    """

    parts: Sequence[OutputPart] = ()
    is_error: bool = False
    value: Any = None

    @classmethod
    def error(cls, message: str) -> ToolOutput:
        """A failure reported by the tool, shown to the model as ``Error: message``."""
        return cls([message], is_error=True)
