"""A notebook as a conversation's history: its cells become ``interpreter`` calls and observations.

:func:`notebook_history` reads a notebook (run again in the session's sandboxed kernel, or with the
outputs it has stored) into ChatGLM3 messages: code cells as the assistant's ``interpreter`` calls,
their outputs as observations (as the model reads its own), markdown cells as the assistant's
text. The model then sees what the notebook did, and its own code continues in the same kernel.
:func:`append_run` adds an agent's turn to the notebook as markdown and code cells with outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glm_agent.errors import InterpreterError
from glm_agent.interpreter._notebook import build_notebook, nbformat, notebook_outputs
from glm_agent.interpreter._observation import format_observation
from glm_agent.interpreter._results import ExecutionResult, strip_ansi
from glm_agent.interpreter._session import CodeInterpreter
from glm_agent.messages import INTERPRETER, AssistantMessage, Message, MessageLike, ObservationMessage, UserMessage

__all__ = [
    "NotebookHistory",
    "read_notebook",
    "notebook_history",
    "append_run",
    "check_fits",
    "save_notebook",
    "CUT_MARKER",
]

CUT_MARKER = "[{count} earlier cells of the notebook are not shown]"


@dataclass
class NotebookHistory:
    """The notebook (its cells' outputs as run), the messages made of it, and how many cells were left out."""

    notebook: Any
    messages: list[Message]
    left_out: int = 0


def read_notebook(path: str | Path) -> Any:
    """A notebook file as nbformat v4, validated; a clear error when it is not one."""
    try:
        notebook = nbformat.read(str(path), as_version=4)
        nbformat.validate(notebook)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path} is not a valid Jupyter notebook: {exc}") from exc
    return notebook


def _stored_text(outputs: Sequence[Any]) -> str:
    """A code cell's stored outputs as the model reads them: text as is, ``[Image]`` for images."""
    pieces: list[str] = []
    for output in outputs:
        kind = output.get("output_type")
        if kind == "stream":
            pieces.append("".join(output.get("text", "")))
        elif kind == "error":
            pieces.append(strip_ansi("\n".join(output.get("traceback", []))) + "\n")
        elif kind in ("display_data", "execute_result"):
            data = output.get("data", {})
            if any(mime.startswith("image/") for mime in data):
                pieces.append("[Image]\n")
            elif "text/plain" in data:
                pieces.append("".join(data["text/plain"]) + "\n")
    return "".join(pieces)


def notebook_history(
    notebook: Any,
    interpreter: CodeInterpreter | None,
    *,
    name: str = "the notebook",
    last_cells: int | None = None,
) -> NotebookHistory:
    """Run the notebook's code cells in ``interpreter`` (None: use their stored outputs) and make them messages.

    ``last_cells``: keep only the last N cells, with a marker saying how many went before them.
    Cells run in order even when they fail (as "Run all" would not: the notebook's own errors are
    part of what the model should see).
    """
    cells = [c for c in notebook.cells if c.cell_type in ("code", "markdown") and "".join(c.source).strip()]
    left_out = 0
    if last_cells is not None and 0 <= last_cells < len(cells):
        left_out = len(cells) - last_cells
    ran = "ran in the code interpreter, in order" if interpreter is not None else "ran earlier (their saved outputs)"
    messages: list[Message] = [UserMessage(content=f"Here is {name}: its cells {ran}. Continue from where it ends.")]
    if left_out:
        messages.append(AssistantMessage(content=CUT_MARKER.format(count=left_out)))
    for index, cell in enumerate(cells):
        source = "".join(cell.source)
        if cell.cell_type == "code" and interpreter is not None:
            result: ExecutionResult = interpreter.run(source)
            cell.outputs = notebook_outputs(result)
            cell.execution_count = result.execution_count
            observation = result.observation
        elif cell.cell_type == "code":
            observation = format_observation(_stored_text(cell.get("outputs", [])), [], 2000)
        if index < left_out:
            continue
        if cell.cell_type == "markdown":
            messages.append(AssistantMessage(content=source))
        else:
            messages.append(AssistantMessage(metadata=INTERPRETER, content=f"```python\n{source}\n```"))
            messages.append(ObservationMessage(content=observation))
    messages.append(AssistantMessage(content="The notebook has run; its outputs are above."))
    return NotebookHistory(notebook, messages, left_out)


def append_run(
    notebook: Any, question: str, conversation: Sequence[MessageLike], runs: Sequence[ExecutionResult]
) -> Any:
    """The notebook with the question and an agent's turn (its text, code cells with outputs) appended."""
    turn = build_notebook(list(runs), [UserMessage(content=question), *conversation], observation_outputs=True)
    notebook.cells.extend(turn.cells)
    nbformat.validate(notebook)
    return notebook


def check_fits(messages: Sequence[Message], question: str, model: Any) -> None:
    """Refuse a notebook that does not fit the model's context, saying how many tokens it needs."""
    tokenizer = getattr(model, "tokenizer", None)
    context = getattr(model, "context_length", None)
    if tokenizer is None or not isinstance(context, int) or not hasattr(tokenizer, "apply_chat_template"):
        return  # a server counts for itself and says so
    needed = len(tokenizer.apply_chat_template([*messages, UserMessage(content=question)], add_generation_prompt=True))
    if needed > context:
        raise InterpreterError(
            f"the notebook needs {needed:,} tokens with the question; the model's context holds {context:,}. "
            "Keep only its last cells with --last-cells N (the cut is marked for the model)."
        )


def save_notebook(notebook: Any, path: str | Path) -> Path:
    """Validate and write a notebook (folders made as needed); return its path."""
    nbformat.validate(notebook)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(target))
    return target
