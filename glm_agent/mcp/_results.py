"""An MCP ``CallToolResult`` -> a ``ToolOutput`` (the registry turns it into an observation and files)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import mcp_types as types

from glm_agent.tools import Attachment, OutputPart, ToolOutput

__all__ = ["result_to_output"]


def _decode(data: str) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _resource_part(resource: types.TextResourceContents | types.BlobResourceContents) -> OutputPart:
    uri = str(resource.uri)
    mime = resource.mime_type or ""
    if isinstance(resource, types.TextResourceContents):
        head = f"[resource {uri}" + (f" ({mime})" if mime else "") + "]"
        return f"{head}\n{resource.text}"
    data = _decode(resource.blob)
    if data is None:
        return f"[resource {uri}: undecodable base64 data]"
    return Attachment(data, mime or "application/octet-stream", label=f"resource {uri}")


def _link_text(link: types.ResourceLink) -> str:
    details = [str(link.uri)]
    if link.mime_type:
        details.append(link.mime_type)
    if link.size is not None:
        details.append(f"{link.size} bytes")
    text = f"[resource link {link.name!r}: {', '.join(details)}]"
    return f"{text} {link.description}" if link.description else text


def content_parts(blocks: list[Any], *, with_text: bool = True) -> list[OutputPart]:
    """Text as is, images and audio as attachments, resources summarised; unknown blocks named."""
    parts: list[OutputPart] = []
    for block in blocks:
        if isinstance(block, types.TextContent):
            if with_text:
                parts.append(block.text)
        elif isinstance(block, (types.ImageContent, types.AudioContent)):
            data = _decode(block.data)
            if data is None:
                parts.append(f"[{block.type} ({block.mime_type}): undecodable base64 data]")
            else:
                parts.append(Attachment(data, block.mime_type or "application/octet-stream", label=block.type))
        elif isinstance(block, types.EmbeddedResource):
            parts.append(_resource_part(block.resource))
        elif isinstance(block, types.ResourceLink):
            parts.append(_link_text(block))
        else:
            parts.append(f"[{getattr(block, 'type', type(block).__name__)} content not shown]")
    return parts


def result_to_output(result: types.CallToolResult) -> ToolOutput:
    """The result as the model should read it.

    ``structured_content`` is preferred when present (as JSON; the text blocks usually
    repeat it), other blocks are kept; ``is_error`` makes a failed result carrying the
    server's text.
    """
    structured = result.structured_content
    if structured is not None and not result.is_error:
        parts: list[OutputPart] = [json.dumps(structured, ensure_ascii=False)]
        parts.extend(content_parts(list(result.content), with_text=False))
        return ToolOutput(parts, value=structured)
    parts = content_parts(list(result.content))
    if result.is_error:
        return ToolOutput(parts or ["the server reported an error without a message"], is_error=True)
    return ToolOutput(parts, value=structured)
