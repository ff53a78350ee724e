"""A tool's return value (or failure) -> the observation text the model reads.

``str`` as is; ``bytes`` and PIL images saved to a file and referenced; anything
else as JSON (``ensure_ascii=False``), which covers dicts, lists, pydantic models,
dataclasses, enums, dates and paths. Long text is cut with a marker that says so.
"""

from __future__ import annotations

import json
import mimetypes
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from glm_agent.tools._output import Attachment, ToolOutput

__all__ = [
    "render_value",
    "render_output",
    "tool_error_text",
    "truncate",
    "unknown_tool_text",
    "invalid_arguments_text",
    "exception_text",
    "timeout_text",
]

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"%PDF-", ".pdf"),
    (b"PK\x03\x04", ".zip"),
)


def _extension(data: bytes) -> str:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".bin"


def _is_pil_image(value: Any) -> bool:
    # A PIL image can only exist if PIL.Image was imported; never import Pillow ourselves.
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(value, pil.Image)


def _is_figure(value: Any) -> bool:
    # A matplotlib figure (or anything drawn the same way): never import matplotlib ourselves.
    figure = sys.modules.get("matplotlib.figure")
    return figure is not None and isinstance(value, figure.Figure)


def _new_file(output_dir: Path, tool_name: str, ext: str) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir / f"{tool_name}-{uuid.uuid4().hex[:12]}{ext}"


def render_value(value: Any, tool_name: str, output_dir: Callable[[], Path]) -> tuple[str, list[Path]]:
    """Observation text for a return value, and the files written for it.

    ``output_dir`` is called only when a file has to be written, so a temporary
    folder is created only when needed.
    """
    if isinstance(value, str):
        return value, []
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        path = _new_file(output_dir(), tool_name, _extension(data))
        path.write_bytes(data)
        return f"[{len(data)} bytes saved to {path}]", [path]
    if _is_pil_image(value):
        path = _new_file(output_dir(), tool_name, ".png")
        value.save(path, format="PNG")
        return f"[Image {value.width}x{value.height} saved to {path}]", [path]
    if _is_figure(value):
        path = _new_file(output_dir(), tool_name, ".png")
        value.savefig(path, format="png", bbox_inches="tight")
        return f"[Image (a chart) saved to {path}]", [path]
    jsonable = to_jsonable_python(value, fallback=str, bytes_mode="base64")
    return json.dumps(jsonable, ensure_ascii=False), []


def _attachment_suffix(attachment: Attachment) -> str:
    mime = attachment.mime_type.split(";", 1)[0].strip().lower()
    guessed = {"image/jpeg": ".jpg", "audio/mpeg": ".mp3", "audio/wav": ".wav", "text/plain": ".txt"}.get(mime)
    guessed = guessed or mimetypes.guess_extension(mime, strict=False)
    return guessed if guessed else _extension(attachment.data)


def render_output(output: ToolOutput, tool_name: str, output_dir: Callable[[], Path]) -> tuple[str, list[Path]]:
    """Observation text for a ``ToolOutput``: text parts as is, attachments saved and referenced, one per line."""
    lines: list[str] = []
    files: list[Path] = []
    for part in output.parts:
        if isinstance(part, Attachment):
            path = _new_file(output_dir(), tool_name, _attachment_suffix(part))
            path.write_bytes(part.data)
            files.append(path)
            label = f"{part.label}, " if part.label else ""
            lines.append(f"[{label}{part.mime_type}, {len(part.data)} bytes saved to {path}]")
        else:
            lines.append(str(part))
    return "\n".join(lines), files


def tool_error_text(name: str, text: str) -> str:
    """The observation of a failure the tool reported itself (``ToolOutput(is_error=True)``)."""
    detail = text.strip() or "no message"
    return f"Error: tool {name!r} reported an error: {detail}"


def truncate(text: str, limit: int | None) -> tuple[str, bool]:
    """Cut ``text`` to ``limit`` characters plus a marker line; returns (text, was_cut)."""
    if limit is None or len(text) <= limit:
        return text, False
    marker = f"\n[... truncated: showing the first {limit} of {len(text)} characters ...]"
    return text[:limit] + marker, True


def unknown_tool_text(name: str, available: Iterable[str]) -> str:
    names = ", ".join(available) or "(none)"
    return (
        f"Error: there is no tool named {name!r}. Available tools: {names}. "
        "Call one of them by its exact name, or answer without a tool."
    )


def invalid_arguments_text(name: str, problems: Iterable[Any]) -> str:
    lines = "\n".join(str(p) for p in problems)
    return f"Error: invalid arguments for tool {name!r}:\n{lines}\nCall {name} again with corrected arguments."


def exception_text(name: str, exc: BaseException) -> str:
    message = str(exc).strip()
    detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return f"Error: tool {name!r} failed with {detail}"


def timeout_text(name: str, timeout: float) -> str:
    return (
        f"Error: tool {name!r} did not finish within {timeout:g} s and was stopped waiting for. "
        "Try a smaller request or another approach."
    )
