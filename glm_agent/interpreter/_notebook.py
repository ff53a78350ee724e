"""Notebook export: a session's runs (with outputs, images included) and its conversation as .ipynb."""

from __future__ import annotations

import base64
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat as _nbformat
from nbformat import v4 as _v4

from glm_agent._host_files import open_regular
from glm_agent.interpreter._results import (
    DisplayOutput,
    ErrorOutput,
    ExecutionResult,
    OmittedOutput,
    StreamOutput,
)

if TYPE_CHECKING:
    from glm_agent.messages import MessageLike

# nbformat has no type hints: its builders are used through Any (mypy --strict forbids untyped calls)
nbformat: Any = _nbformat
v4: Any = _v4

__all__ = ["build_notebook", "write_notebook", "conversation_to_notebook", "notebook_outputs"]

_FENCED = re.compile(r"```[^\n`]*\n(.*?)\n?```", re.DOTALL)


def _code_of(content: str) -> str:
    """The code of an ``interpreter`` call: the first fenced block, else the whole content."""
    match = _FENCED.search(content)
    return (match.group(1) if match else content).strip("\n")


def notebook_outputs(result: ExecutionResult) -> list[Any]:
    out: list[Any] = []
    for output in result.outputs:
        if isinstance(output, StreamOutput):
            out.append(v4.new_output("stream", name=output.name, text=output.text))
        elif isinstance(output, DisplayOutput):
            if output.kind == "execute_result":
                out.append(
                    v4.new_output(
                        "execute_result",
                        data=output.data,
                        metadata=output.metadata,
                        execution_count=output.execution_count,
                    )
                )
            else:
                out.append(v4.new_output("display_data", data=output.data, metadata=output.metadata))
        elif isinstance(output, ErrorOutput):
            out.append(v4.new_output("error", ename=output.ename, evalue=output.evalue, traceback=output.traceback))
        elif isinstance(output, OmittedOutput):
            out.append(v4.new_output("stream", name="stderr", text=output.text))
    for notice in result.notices:
        out.append(v4.new_output("stream", name="stderr", text=notice + "\n"))
    return out


_SAVED_IMAGE = re.compile(r"saved to (/[^\]\n]+?\.(?:png|jpe?g|gif|webp))\]", re.IGNORECASE)
_IMAGE_MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
_MAX_ATTACHED = 10 * 1024 * 1024


def _observation_cell(text: str, tool_outputs: Path | None) -> Any:
    """An observation as markdown, with the images a tool saved (named in it) attached and shown.

    Only files directly in ``tool_outputs`` (the registry's folder of saved outputs) are read:
    the observation is text a tool or a web page may have written, and must not pick host files.
    """
    cell = v4.new_markdown_cell(f"**Observation**\n\n{text}")
    attachments: dict[str, Any] = {}
    for match in _SAVED_IMAGE.finditer(text) if tool_outputs is not None else ():
        path = Path(match.group(1))
        if path.parent != tool_outputs:
            continue
        try:
            with open_regular(tool_outputs, path.name) as image:
                if os.fstat(image.fileno()).st_size > _MAX_ATTACHED:
                    continue
                data = base64.b64encode(image.read()).decode("ascii")
        except OSError:
            continue
        attachments[path.name] = {_IMAGE_MIME[path.suffix.lower()]: data}
        cell.source += f"\n\n![{path.name}](attachment:{path.name})"
    if attachments:
        cell.attachments = attachments
    return cell


def _code_cell(result: ExecutionResult) -> Any:
    return v4.new_code_cell(result.code, outputs=notebook_outputs(result), execution_count=result.execution_count)


def build_notebook(
    history: Sequence[ExecutionResult],
    conversation: Sequence[MessageLike] | None = None,
    *,
    observation_outputs: bool = False,
    tool_outputs: Path | None = None,
) -> Any:
    """An nbformat v4 notebook: markdown for the conversation's text, code cells for the runs, in order.

    Each ``interpreter`` call in the conversation is matched to the next run with the same
    code; runs that no message mentions are appended in their order at the end.
    ``observation_outputs``: a call with no matching run gets the observation that answered it
    as its cell's output (text, as the model read it) instead of a markdown cell.
    ``tool_outputs``: the folder where tools' images were saved; those an observation names are attached.
    """
    from glm_agent.messages import INTERPRETER, AssistantMessage, ObservationMessage, UserMessage, to_messages

    cells: list[Any] = []
    pending = list(history)
    shown_by_code = False  # the last cell is a run whose outputs already show the next observation
    # observation_outputs: the calls not yet answered, in order (a cell without a run, "run", or "tool")
    waiting: list[Any] = []
    for message in to_messages(conversation or []):
        if observation_outputs and isinstance(message, ObservationMessage) and waiting:
            entry = waiting.pop(0)
            if entry == "tool":
                cells.append(_observation_cell(message.content, tool_outputs))
            elif entry != "run":
                entry.outputs.append(v4.new_output("stream", name="stdout", text=_code_of(message.content) + "\n"))
            continue
        if isinstance(message, UserMessage):
            waiting = []
            cells.append(v4.new_markdown_cell(f"**User**\n\n{message.content}"))
        elif isinstance(message, AssistantMessage) and message.metadata.strip() == INTERPRETER:
            code = _code_of(message.content)
            match = next((r for r in pending if r.code.strip("\n") == code), None)
            if match is not None:
                pending.remove(match)
                cells.append(_code_cell(match))
            else:
                cells.append(v4.new_code_cell(code))
            waiting.append(cells[-1] if match is None else "run")
            shown_by_code = match is not None
            continue
        elif isinstance(message, AssistantMessage) and message.metadata.strip():
            waiting.append("tool")
            cells.append(v4.new_markdown_cell(f"**Tool call** `{message.metadata.strip()}`\n\n{message.content}"))
        elif isinstance(message, AssistantMessage):
            cells.append(v4.new_markdown_cell(f"**Assistant**\n\n{message.content}"))
        elif isinstance(message, ObservationMessage) and not shown_by_code:
            cells.append(_observation_cell(message.content, tool_outputs))
        shown_by_code = False
    cells.extend(_code_cell(r) for r in pending)
    notebook = v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {
        "name": "python",
        "version": ".".join(map(str, sys.version_info[:3])),
        "mimetype": "text/x-python",
        "file_extension": ".py",
    }
    return notebook


def write_notebook(
    path: Path,
    history: Sequence[ExecutionResult],
    conversation: Sequence[MessageLike] | None,
    *,
    observation_outputs: bool = False,
    tool_outputs: Path | None = None,
) -> Path:
    """Build, validate and write the notebook; return its path."""
    notebook = build_notebook(history, conversation, observation_outputs=observation_outputs, tool_outputs=tool_outputs)
    nbformat.validate(notebook)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(path))
    return path


def conversation_to_notebook(
    conversation: Sequence[MessageLike], path: str | Path, *, interpreter: Any = None, tool_outputs: Path | None = None
) -> Path:
    """A conversation as a notebook: its text as markdown, its ``interpreter`` calls as code cells.

    With the ``interpreter`` that ran them, cells carry the real outputs (images embedded);
    without one (a conversation loaded from JSON Lines), each cell's output is the
    observation the model read. With ``tool_outputs`` (``ToolRegistry.output_dir``), images
    tools saved there are attached to their observations.
    """
    history = list(getattr(interpreter, "history", None) or [])
    folder = Path(tool_outputs).absolute() if tool_outputs is not None else None
    return write_notebook(Path(path), history, conversation, observation_outputs=True, tool_outputs=folder)
