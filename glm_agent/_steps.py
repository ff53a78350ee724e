"""The agent's step logic, written once, as a generator of actions that does no I/O.

:func:`steps` runs the loop (build prompt -> generate -> parse -> decide calls -> approve ->
run -> observe) over a conversation it extends in place. It yields two kinds of items:

- events (:mod:`glm_agent.events`), which the driver passes on as they are;
- actions, which the driver performs and whose outcome it sends back with ``send``:
  :class:`Generate` (stream the model, feed each delta to ``action.feed`` and pass its events
  on; send back None, or the exception the model raised), :class:`Approve` (the approver's raw
  verdict), :class:`RunTool` (a ``ToolResult``), :class:`RunCode` (an ``ExecutionResult``, or
  None when it was not started because the run is being cancelled).

A call that must be asked about (a tool marked ``needs_approval``, or every call when the
approver asks for all) is checked first (``policy.check``: an unknown tool or bad arguments go
straight back to the model, nobody is asked), then asked about, and refused when there is nobody
to ask. Other calls are checked once, when they run.

``Agent.stream`` and ``Agent.astream`` are the sync and async drivers: the way httpx writes an
auth flow once for ``Client`` and ``AsyncClient``. Closing the generator mid-run (a closed
stream, Ctrl-C, a cancelled task) leaves the conversation well formed: streamed text is kept
and every pending call is answered. A cooperative cancel (``cancelled()`` turning true) ends
the run at the next safe point with ``RunError(kind="cancelled")``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from glm_agent import events as ev
from glm_agent.chatglm3.parser import CallFinished, CallNamed, ReplyStreamParser, ReplyText, StreamEvent
from glm_agent.messages import AssistantMessage, Call, CodeCall, Message, ObservationMessage, ToolCall

if TYPE_CHECKING:
    from glm_agent.interpreter import ExecutionResult
    from glm_agent.tools import ToolResult

__all__ = [
    "Generate",
    "Approve",
    "RunTool",
    "RunCode",
    "Action",
    "CallPolicy",
    "NotAnswered",
    "steps",
    "CANCELLED",
    "NO_INTERPRETER",
]

logger = logging.getLogger(__name__)

NO_INTERPRETER = (
    "Error: code execution is not enabled in this conversation, so the code did not run. "
    "Answer without running code, or use one of the tools."
)
CANCELLED = "Cancelled by the user before it finished."


@dataclass(frozen=True)
class NotAnswered:
    """An approval check that gave no yes/no answer (it raised, or could not be awaited)."""

    reason: str


class Generate:
    """Stream one model turn: the driver calls ``model.stream(messages, **params)`` (or ``astream``)."""

    __slots__ = ("_turn", "messages", "params")

    def __init__(self, messages: list[Message], params: dict[str, Any], turn: _Turn) -> None:
        self.messages = messages
        self.params = params
        self._turn = turn

    def feed(self, delta: str) -> list[ev.Event]:
        """The events one delta of the reply makes (answer text, a call's name)."""
        return self._turn.feed(delta)


@dataclass(frozen=True)
class Approve:
    """Ask the approver about ``call``; send back what it returned (awaited in async drivers)."""

    call: Call


@dataclass(frozen=True)
class CallPolicy:
    """What the step core needs to know about calls before running them (no I/O).

    ``check(call)``: the failed ``ToolResult`` of a tool call that cannot run (unknown tool,
    bad arguments), or None. ``must_ask(call)``: whether the call needs a yes first.
    ``has_approver``: whether anyone can say it.
    """

    check: Callable[[ToolCall], ToolResult | None]
    must_ask: Callable[[Call], bool]
    has_approver: bool


NO_APPROVER = "it needs approval and this agent has no approver (Agent(approve=...))"


@dataclass(frozen=True)
class RunTool:
    call: ToolCall


@dataclass(frozen=True)
class RunCode:
    call: CodeCall


Action = Union[Generate, Approve, RunTool, RunCode]
Step = Generator[Union[Action, ev.Event], Any, None]


def steps(
    messages: list[Message],
    *,
    max_steps: int,
    params: dict[str, Any],
    code_enabled: bool,
    policy: CallPolicy,
    cancelled: Callable[[], bool],
) -> Step:
    """The loop over ``messages`` (ending in the user's turn), until an answer, an error or ``max_steps``."""
    turn = _Turn(messages, code_enabled, max_steps)
    try:
        for step in range(1, max_steps + 1):
            turn.begin(step)
            failure = yield Generate(messages, params, turn)
            if failure is not None:
                yield turn.model_failed(failure)
                return
            if cancelled():
                yield turn.cancelled()
                return
            yield from turn.close()
            if turn.final is not None:
                yield turn.final
                return
            for outcome in turn.calls:
                yield from _call(turn, outcome, policy, cancelled)
                if cancelled():
                    yield turn.cancelled()
                    return
        yield turn.out_of_steps()
    except GeneratorExit:
        turn.cancel()
        raise


def _call(turn: _Turn, outcome: CallFinished, policy: CallPolicy, cancelled: Callable[[], bool]) -> Step:
    early = turn.screen(outcome)
    if early is not None:
        yield early
        return
    call = outcome.call
    assert call is not None  # screen() handled parse errors
    if policy.must_ask(call):
        if isinstance(call, ToolCall):
            failed = policy.check(call)
            if failed is not None:  # nobody is asked about a call that cannot run
                yield ev.ToolCalled(turn.step, call)
                yield turn.tool_done(call, failed)
                return
        if not policy.has_approver:
            yield turn.refused(call, _Refusal(NO_APPROVER))
            return
        refusal = refusal_of((yield Approve(call)))
        if cancelled():
            return  # not run; the cancel answers it
        if refusal is not None:
            yield turn.refused(call, refusal)
            return
    if isinstance(call, ToolCall):
        yield ev.ToolCalled(turn.step, call)
        yield turn.tool_done(call, (yield RunTool(call)))
    else:
        yield ev.CodeStarted(turn.step, call)
        result = yield RunCode(call)
        if result is not None:
            yield turn.code_done(call, result)


@dataclass(frozen=True)
class _Refusal:
    """Why a call does not run: ``reason`` is None when the approver said no."""

    reason: str | None = None


def refusal_of(verdict: object) -> _Refusal | None:
    """None when the call may run. Only ``True`` approves: a gate that gets another answer says no."""
    if verdict is True:
        return None
    if verdict is False:
        return _Refusal()
    if isinstance(verdict, NotAnswered):
        return _Refusal(verdict.reason)
    reason = f"approve returned {type(verdict).__name__}, not a bool; only True approves a call"
    logger.warning("%s; the call is refused", reason)
    return _Refusal(reason)


class _Turn:
    """The state of one model turn: parsing the stream, turning outcomes into events and messages."""

    def __init__(self, messages: list[Message], code_enabled: bool, max_steps: int) -> None:
        self.messages = messages
        self.start = len(messages) - 1  # this run's user message
        self.code_enabled = code_enabled
        self.max_steps = max_steps
        self.step = 0
        self.parser = ReplyStreamParser()
        self.calls: list[CallFinished] = []
        self.final: ev.FinalAnswer | None = None
        self._pending: list[CallFinished] = []
        self._streamed = ""

    def begin(self, step: int) -> None:
        self.step, self.parser, self.calls, self.final, self._streamed = step, ReplyStreamParser(), [], None, ""
        self._pending = []

    def _translate(self, parsed: list[StreamEvent]) -> list[ev.Event]:
        out: list[ev.Event] = []
        for p in parsed:
            if isinstance(p, ReplyText):
                self._streamed += p.text
                out.append(ev.TextDelta(self.step, p.text))
            elif isinstance(p, CallNamed):
                out.append(ev.CallStarted(self.step, p.name))
            else:
                self.calls.append(p)
        return out

    def feed(self, delta: str) -> list[ev.Event]:
        return self._translate(self.parser.feed(delta))

    def close(self) -> list[ev.Event]:
        out = self._translate(self.parser.close())
        reply = self.parser.reply
        assert reply is not None
        self.messages.extend(reply.messages())
        self._pending = list(self.calls)
        if not self.calls:
            self.final = ev.FinalAnswer(self.step, reply.text or "")
        return out

    def _observe(self, text: str) -> None:
        self.messages.append(ObservationMessage(content=text))
        if self._pending:
            self._pending.pop(0)

    def screen(self, outcome: CallFinished) -> ev.Event | None:
        """Outcomes that need no execution: parse errors, code with no interpreter."""
        if outcome.error is not None:
            text = str(outcome.error)
            self._observe(text)
            return ev.ParseFailed(self.step, outcome.name, text)
        if isinstance(outcome.call, CodeCall) and not self.code_enabled:
            self._observe(NO_INTERPRETER)
            return ev.CodeFinished(self.step, outcome.call, False, NO_INTERPRETER)
        return None

    def refused(self, call: Call, refusal: _Refusal) -> ev.CallRefused:
        what = "run this code" if isinstance(call, CodeCall) else f"call {call.name}"
        if refusal.reason is None:
            text = f"The user did not allow you to {what}. Do not try it again; continue without it."
        else:
            text = f"The request to {what} was not approved, so it did not run. Continue without it."
        self._observe(text)
        return ev.CallRefused(self.step, call, text, refusal.reason)

    def tool_done(self, call: ToolCall, result: ToolResult) -> ev.ToolReturned:
        self._observe(result.observation)
        return ev.ToolReturned(self.step, call, result.ok, result.observation, result.error, list(result.files), result)

    def code_done(self, call: CodeCall, result: ExecutionResult) -> ev.CodeFinished:
        self._observe(result.observation)
        return ev.CodeFinished(self.step, call, result.ok, result.observation, list(result.images), result)

    def model_failed(self, exc: BaseException) -> ev.RunError:
        """The model raised. A turn it had not answered at all is rolled back (the user's message taken
        out again), so that the next run does not fail the same way; any text it streamed is kept."""
        logger.warning("the model failed: %s", exc)
        self._keep_streamed_text()
        message = f"{type(exc).__name__}: {exc}"
        if self.step == 1 and len(self.messages) == self.start + 1:
            del self.messages[self.start :]
            message += " (the question was taken out of the conversation again: the next run starts where this one did)"
        return ev.RunError(self.step, "model_error", message, exc)

    def out_of_steps(self) -> ev.RunError:
        n = self.max_steps
        return ev.RunError(self.step, "max_steps", f"stopped after {n} step{'s' * (n != 1)} without a final answer")

    def cancelled(self) -> ev.RunError:
        self.cancel()
        return ev.RunError(self.step, "cancelled", "the run was cancelled (Agent.cancel) before it finished")

    def cancel(self) -> None:
        """Leave the conversation well-formed: keep streamed text, answer every pending call."""
        if self.parser.reply is None:
            self._keep_streamed_text()
        for _ in list(self._pending):
            self._observe(CANCELLED)

    def _keep_streamed_text(self) -> None:
        if self.parser.reply is None and self._streamed.strip():
            self.messages.append(AssistantMessage(content=self._streamed.strip()))
