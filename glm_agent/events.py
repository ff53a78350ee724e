"""Typed events an agent run streams: text, calls, results, the final answer, errors.

Every event has ``step`` (the model turn it belongs to), ``type`` (its class name in snake_case:
``ToolCalled`` is ``"tool_called"``) and ``to_dict()`` (a JSON-ready dict, used by
``glm-agent run --json``). ``glm_agent.render`` shows them as plain text or on a rich console.

=================  ================  ==================================================================
class              ``type``          when
=================  ================  ==================================================================
``TextDelta``      ``text_delta``    a piece of the answer text, as it is generated (``text``)
``CallStarted``    ``call_started``  the model began a call (``name``: the tool, or ``interpreter``)
``ToolCalled``     ``tool_called``   a tool call is about to run (``call``: name and arguments)
``ToolReturned``   ``tool_returned`` it ran (``ok``, ``observation``, ``error``, ``files``, ``result``)
``CodeStarted``    ``code_started``  code is about to run in the interpreter (``call.code``)
``CodeFinished``   ``code_finished`` it ran (``ok``, ``observation``, ``images``, ``result``)
``CallRefused``    ``call_refused``  a call was not approved (``observation``, ``reason``)
``ParseFailed``    ``parse_failed``  a call could not be parsed (``name``, ``observation``)
``FinalAnswer``    ``final_answer``  the run's answer (``text``)
``RunError``       ``run_error``     the run stopped without one (``kind``, ``message``, ``exception``)
=================  ================  ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from glm_agent._transcript import Transcript
from glm_agent.messages import CodeCall, ToolCall

__all__ = [
    "AgentEvent",
    "TextDelta",
    "CallStarted",
    "ToolCalled",
    "ToolReturned",
    "CodeStarted",
    "CodeFinished",
    "CallRefused",
    "ParseFailed",
    "FinalAnswer",
    "RunError",
    "RunErrorKind",
    "Event",
]


@dataclass(frozen=True)
class AgentEvent:
    type: ClassVar[str] = "event"
    step: int

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for key, value in self.__dict__.items():
            if key.startswith("_") or key in ("result", "exception"):
                continue
            out[key] = _jsonable(value)
        return out

    def _repr_html_(self) -> str:
        """The event as a notebook shows it (a call as a card; every text escaped)."""
        return Transcript.of([self]).html()

    def _repr_markdown_(self) -> str:
        return Transcript.of([self]).markdown()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (ToolCall, CodeCall)):
        return value.model_dump()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


@dataclass(frozen=True)
class TextDelta(AgentEvent):
    """More of the answer (or of a thought before a call)."""

    type: ClassVar[str] = "text_delta"
    text: str


@dataclass(frozen=True)
class CallStarted(AgentEvent):
    """The model started a call; its name is known, its arguments are still being generated."""

    type: ClassVar[str] = "call_started"
    name: str


@dataclass(frozen=True)
class ToolCalled(AgentEvent):
    """A tool call was parsed and is about to run."""

    type: ClassVar[str] = "tool_called"
    call: ToolCall


@dataclass(frozen=True)
class ToolReturned(AgentEvent):
    """A tool call finished (``ok`` false for unknown tools, bad arguments, exceptions, timeouts)."""

    type: ClassVar[str] = "tool_returned"
    call: ToolCall
    ok: bool
    observation: str
    error: str | None = None
    files: list[Path] = field(default_factory=list)
    result: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class CodeStarted(AgentEvent):
    """Code from the model is about to run in the kernel."""

    type: ClassVar[str] = "code_started"
    call: CodeCall


@dataclass(frozen=True)
class CodeFinished(AgentEvent):
    """Code finished: its observation, whether it failed, and the images it made."""

    type: ClassVar[str] = "code_finished"
    call: CodeCall
    ok: bool
    observation: str
    images: list[Path] = field(default_factory=list)
    result: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class CallRefused(AgentEvent):
    """A call was not approved; the model is told so.

    ``reason`` is None when the approver said no, else why the approval check gave no answer
    (it raised, or returned something other than a bool): a gate that fails says no.
    """

    type: ClassVar[str] = "call_refused"
    call: ToolCall | CodeCall
    observation: str
    reason: str | None = None


@dataclass(frozen=True)
class ParseFailed(AgentEvent):
    """A call segment could not be parsed; the observation tells the model how to fix it."""

    type: ClassVar[str] = "parse_failed"
    name: str
    observation: str


@dataclass(frozen=True)
class FinalAnswer(AgentEvent):
    """The run ended with an answer for the user."""

    type: ClassVar[str] = "final_answer"
    text: str


#: why a run stopped without an answer (``RunResult.stopped`` says the same, with ``"answer"`` for an answer)
RunErrorKind = Literal["max_steps", "model_error", "cancelled"]


@dataclass(frozen=True)
class RunError(AgentEvent):
    """The run stopped without an answer: ``kind`` is ``max_steps``, ``model_error`` or ``cancelled``
    (the same names as ``RunResult.stopped``)."""

    type: ClassVar[str] = "run_error"
    kind: RunErrorKind
    message: str
    exception: BaseException | None = field(default=None, repr=False, compare=False)


Event = Union[
    TextDelta,
    CallStarted,
    ToolCalled,
    ToolReturned,
    CodeStarted,
    CodeFinished,
    CallRefused,
    ParseFailed,
    FinalAnswer,
    RunError,
]
