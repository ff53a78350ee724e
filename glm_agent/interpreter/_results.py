"""What one run produced: typed outputs, in order, and the run's result (its text is made in ``_observation.py``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from glm_agent._html import pre
from glm_agent._transcript import fence, outputs_html, outputs_text, safe_markdown

__all__ = [
    "StreamOutput",
    "DisplayOutput",
    "ErrorOutput",
    "OmittedOutput",
    "Output",
    "ExecutionResult",
    "strip_ansi",
    "IMAGE_MIMES",
]

IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def strip_ansi(text: str) -> str:
    """Remove ANSI colour and cursor codes."""
    return _ANSI.sub("", text)


@dataclass
class StreamOutput:
    """Text the code wrote to ``stdout`` or ``stderr`` (consecutive writes merged)."""

    name: str
    text: str
    kind: Literal["stream"] = "stream"


@dataclass
class DisplayOutput:
    """A rich value: ``display_data`` (shown with display / a figure) or ``execute_result`` (the cell's value).

    ``data`` is the mime bundle as the kernel sent it (images base64, as in a notebook);
    ``image`` is the file the image was saved to in the workspace, if any.
    """

    kind: Literal["display_data", "execute_result"]
    data: dict[str, Any] = field(repr=False)  # base64 images would fill a screen: the repr names the mime types
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    execution_count: int | None = None
    image: Path | None = None

    def __repr__(self) -> str:
        mimes = ", ".join(sorted(self.data)) or "empty"
        image = f", image={str(self.image)!r}" if self.image is not None else ""
        return f"DisplayOutput({self.kind}: {mimes}{image})"


@dataclass
class ErrorOutput:
    """An exception the code raised; ``traceback`` is as the kernel sent it (with colour codes)."""

    ename: str
    evalue: str
    traceback: list[str]
    kind: Literal["error"] = "error"

    @property
    def text(self) -> str:
        """The traceback without colour codes (what the model reads)."""
        if self.traceback:
            return strip_ansi("\n".join(self.traceback))
        return f"{self.ename}: {self.evalue}"


@dataclass
class OmittedOutput:
    """Marks output that was dropped to bound memory (only the head and the tail are kept)."""

    chars: int
    outputs: int = 0
    kind: Literal["omitted"] = "omitted"

    @property
    def text(self) -> str:
        parts = []
        if self.chars:
            parts.append(f"{self.chars:,} characters")
        if self.outputs:
            parts.append(f"{self.outputs:,} outputs")
        return f"\n[... {' and '.join(parts)} of output omitted ...]\n"


Output = Union[StreamOutput, DisplayOutput, ErrorOutput, OmittedOutput]


@dataclass
class ExecutionResult:
    """The outcome of :meth:`CodeInterpreter.run`.

    - ``outputs``: everything the cell produced, in order (stream text, values, displays, errors).
    - ``text``: the full observation body (outputs as text, ``[Image]`` for images), before
      truncation; output past ``max_output_chars`` is dropped in the middle (``dropped_chars``).
    - ``observation``: what goes back to the model (fenced, truncated, with notices).
    - ``status``: ``"ok"``, ``"error"`` (an exception), ``"timeout"`` or ``"died"`` (the kernel ended).
    - ``timed_out`` / ``restarted`` / ``state_lost``: what happened to the kernel; ``notices``
      say it in words (they are part of the observation).
    - ``files``: files the cell created or changed in the workspace, as the code sees them
      (``/mnt/data/chart.png``); the observation names them. Image files among them are also
      shown as image outputs when the cell displayed no image itself.
    """

    code: str
    outputs: list[Output]
    status: Literal["ok", "error", "timeout", "died"]
    text: str
    observation: str
    execution_count: int | None = None
    timed_out: bool = False
    restarted: bool = False
    state_lost: bool = False
    notices: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    dropped_chars: int = 0
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def error(self) -> ErrorOutput | None:
        """The exception the code raised (the last one), or None."""
        errors = [o for o in self.outputs if isinstance(o, ErrorOutput)]
        return errors[-1] if errors else None

    @property
    def images(self) -> list[Path]:
        """Image files saved in the workspace, in the order they were shown."""
        return [o.image for o in self.outputs if isinstance(o, DisplayOutput) and o.image is not None]

    @property
    def stdout(self) -> str:
        return "".join(o.text for o in self.outputs if isinstance(o, StreamOutput) and o.name == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(o.text for o in self.outputs if isinstance(o, StreamOutput) and o.name == "stderr")

    def _repr_html_(self) -> str:
        """The code and its outputs, in order (text escaped, PNG/JPEG images inline, the kernel's HTML never rendered)."""
        status = "" if self.ok else f"<p><em>{self.status}</em></p>"
        return f"<div>{pre(self.code, 'python')}{outputs_html(self.outputs, self.notices)}{status}</div>"

    def _repr_markdown_(self) -> str:
        notes = "".join(f"\n\n*{safe_markdown(n)}*" for n in self.notices)
        return f"{fence(self.code, 'python')}\n\n{fence(outputs_text(self.outputs))}{notes}"
