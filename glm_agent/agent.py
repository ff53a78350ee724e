"""The agent loop: generate, parse, dispatch, observe, until the model answers.

One model turn is one step. A reply may hold several segments (typically a short thought,
then a call). Policy for calls: every call segment of a reply runs, in order, and each gets
its own observation message, appended after the reply in the same order. A malformed call,
an unknown tool, bad arguments, a tool failure, a refused call, or code without an interpreter
becomes an observation the model can act on, and the loop goes on. At ``max_steps`` the run
ends with a ``RunError(kind="max_steps")`` event and ``RunResult.stopped == "max_steps"``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from glm_agent import events as ev
from glm_agent.chatglm3.parser import CallFinished, CallStarted, ReplyStreamParser
from glm_agent.chatglm3.parser import TextDelta as ParsedText
from glm_agent.chatglm3.prompts import CHAT_SYSTEM, TOOLS_SYSTEM, code_system_prompt, upload_header
from glm_agent.messages import (
    AssistantMessage,
    Call,
    CodeCall,
    Message,
    MessageLike,
    ObservationMessage,
    SystemMessage,
    ToolCall,
    UserMessage,
    load_jsonl,
    save_jsonl,
    to_messages,
)
from glm_agent.models.base import ChatModel, GenerationParams
from glm_agent.tools import Tool, ToolRegistry

if TYPE_CHECKING:
    from glm_agent.interpreter import CodeInterpreter

__all__ = ["Agent", "RunResult", "CallRecord", "build_system_message"]

logger = logging.getLogger(__name__)

#: ``approve(call)`` returns ``True`` to run the call; in ``arun``/``astream`` it may be async.
#: Anything but ``True`` (``False``, a non-bool, an exception, a coroutine in a sync run) refuses.
Approve = Callable[[Call], Any]

NO_INTERPRETER = (
    "Error: code execution is not enabled in this conversation, so the code did not run. "
    "Answer without running code, or use one of the tools."
)
CANCELLED = "Cancelled by the user before it finished."


def build_system_message(
    system: str | None, tools: list[dict[str, Any]] | None, code: bool, language: str = "zh"
) -> SystemMessage:
    """ChatGLM3's official system prompt for the mode, or the user's own text (never dropped).

    Tools mode: the tuned tools sentence with the schemas attached. Code mode: the PROMPT.md
    interpreter prompt (``zh`` or ``en``). Both: the interpreter prompt, then the tools sentence.
    Chat mode: the official chat prompt.
    """
    if system is None:
        if code and tools:
            system = code_system_prompt(language) + "\n" + TOOLS_SYSTEM
        elif code:
            system = code_system_prompt(language)
        elif tools:
            system = TOOLS_SYSTEM
        else:
            system = CHAT_SYSTEM
    return SystemMessage(content=system, tools=tools or None)


@dataclass
class CallRecord:
    """One call the model made in a run, and what came of it."""

    step: int
    name: str
    call: Call | None
    ok: bool
    observation: str
    result: Any = field(default=None, repr=False)


@dataclass
class RunResult:
    """What one ``run`` produced. ``answer`` is None unless ``stopped == "answer"``."""

    answer: str | None
    stopped: Literal["answer", "max_steps", "model_error", "cancelled"]
    steps: int
    messages: list[Message]
    calls: list[CallRecord]
    events: list[ev.AgentEvent]
    error: str | None = None

    @property
    def images(self) -> list[Path]:
        return [p for e in self.events if isinstance(e, ev.CodeFinished) for p in e.images]


class Agent:
    """A ChatGLM3 agent: a model, optional tools, an optional code interpreter, a conversation.

    ``code_interpreter=True`` starts a local :class:`~glm_agent.CodeInterpreter` on the first
    code call (and closes it with the agent); pass an instance to share or configure one.
    ``approve(call) -> bool`` confirms each call before it runs (human in the loop).
    """

    def __init__(
        self,
        model: ChatModel,
        tools: ToolRegistry | Iterable[Tool | Callable[..., Any]] | None = None,
        code_interpreter: CodeInterpreter | bool | None = None,
        system: str | None = None,
        *,
        max_steps: int = 10,
        approve: Approve | None = None,
        language: Literal["zh", "en"] = "zh",
        generation: GenerationParams | dict[str, Any] | None = None,
        history: Sequence[MessageLike] | None = None,
    ) -> None:
        if max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        self.model = model
        self.tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools or ())
        self.code_enabled = code_interpreter is not None and code_interpreter is not False
        self._interpreter: CodeInterpreter | None = (
            None if isinstance(code_interpreter, (bool, type(None))) else code_interpreter
        )
        self._owns_interpreter = code_interpreter is True
        self.system = system
        self.language = language
        self.max_steps = max_steps
        self.approve = approve
        self.generation = GenerationParams.of(generation)
        self.messages: list[Message] = []
        self.reset() if history is None else self.load_messages(history)

    # -- conversation --------------------------------------------------------------------------
    def system_message(self) -> SystemMessage:
        schemas = self.tools.chatglm3_schemas() if len(self.tools) else None
        return build_system_message(self.system, schemas, self.code_enabled, self.language)

    def reset(self) -> None:
        """Start a new conversation (the system prompt stays; a kernel this agent owns restarts fresh)."""
        self.messages = [self.system_message()]
        if self._owns_interpreter and self._interpreter is not None:
            self._interpreter.close()
            self._interpreter = None

    def load_messages(self, messages: Sequence[MessageLike]) -> None:
        self.messages = to_messages(messages)
        if not self.messages or not isinstance(self.messages[0], SystemMessage):
            self.messages.insert(0, self.system_message())

    def save(self, path: str | Path) -> Path:
        """Save the conversation as JSON Lines (the official message shape)."""
        return save_jsonl(self.messages, path)

    def load(self, path: str | Path) -> None:
        self.load_messages(load_jsonl(path))

    @property
    def interpreter(self) -> CodeInterpreter | None:
        """The code interpreter (started on first use when ``code_interpreter=True``)."""
        return self._kernel() if self.code_enabled else None

    def _kernel(self) -> CodeInterpreter:
        if self._interpreter is None:
            from glm_agent.interpreter import CodeInterpreter

            self._interpreter = CodeInterpreter()
        return self._interpreter

    def save_notebook(self, path: str | Path) -> Path:
        """Export the session (conversation + executed code with outputs) as a Jupyter notebook."""
        from glm_agent.interpreter._notebook import conversation_to_notebook

        return conversation_to_notebook(self.messages, path, interpreter=self._interpreter)

    def close(self) -> None:
        if self._owns_interpreter and self._interpreter is not None:
            self._interpreter.close()
            self._interpreter = None

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running -------------------------------------------------------------------------------
    def _user_message(self, query: str, files: Sequence[str | Path] = ()) -> UserMessage:
        headers = "".join(self._upload(f) for f in files)
        return UserMessage(content=headers + query)

    def _upload(self, file: str | Path) -> str:
        if not self.code_enabled:
            path = Path(file)
            return upload_header(path.name, path.stat().st_size)
        return self._kernel().upload(file)

    def run(self, query: str, *, files: Sequence[str | Path] = ()) -> RunResult:
        """Run until the model answers (or ``max_steps``); the conversation is kept for the next run."""
        start = len(self.messages)
        events = list(self.stream(query, files=files))
        return self._result(start, events)

    async def arun(self, query: str, *, files: Sequence[str | Path] = ()) -> RunResult:
        start = len(self.messages)
        events = [e async for e in self.astream(query, files=files)]
        return self._result(start, events)

    def stream(self, query: str, *, files: Sequence[str | Path] = ()) -> Iterator[ev.Event]:
        """Run, yielding events as they happen. Closing the iterator cancels the run cleanly."""
        if _is_async_callable(self.approve):
            raise TypeError("approve is an async function: use arun()/astream(), or pass a plain function")
        self.messages.append(self._user_message(query, files))
        turn = _Turn(self)
        for step in range(1, self.max_steps + 1):
            turn.begin(step)
            stream: Any = None
            try:
                stream = self.model.stream(self.messages, **self._params())
                for delta in stream:
                    yield from turn.feed(delta)
                yield from turn.close()
            except (GeneratorExit, KeyboardInterrupt):
                turn.cancel()
                raise
            except Exception as exc:
                yield turn.model_failed(exc)
                return
            finally:
                _close(stream)
            if turn.final is not None:
                yield turn.final
                return
            for outcome in turn.calls:
                try:
                    yield from self._dispatch(outcome, step, turn)
                except (GeneratorExit, KeyboardInterrupt):
                    turn.cancel()
                    raise
        yield turn.out_of_steps()

    async def astream(self, query: str, *, files: Sequence[str | Path] = ()) -> AsyncIterator[ev.Event]:
        """Async ``stream``: the model streams asynchronously, tools run off the event loop."""
        import asyncio

        self.messages.append(self._user_message(query, files))
        turn = _Turn(self)
        for step in range(1, self.max_steps + 1):
            turn.begin(step)
            stream = None
            try:
                stream = self.model.astream(self.messages, **self._params())
                async for delta in stream:
                    for event in turn.feed(delta):
                        yield event
                for event in turn.close():
                    yield event
            except (GeneratorExit, asyncio.CancelledError, KeyboardInterrupt):
                turn.cancel()
                raise
            except Exception as exc:
                yield turn.model_failed(exc)
                return
            finally:
                if stream is not None and hasattr(stream, "aclose"):
                    await stream.aclose()
            if turn.final is not None:
                yield turn.final
                return
            for outcome in turn.calls:
                try:
                    async for event in self._adispatch(outcome, step, turn):
                        yield event
                except (GeneratorExit, asyncio.CancelledError, KeyboardInterrupt):
                    turn.cancel()
                    raise
        yield turn.out_of_steps()

    def _params(self) -> dict[str, Any]:
        # only what the user set: a backend's own defaults (e.g. LocalModel(temperature=0)) stay in force
        return self.generation.model_dump(exclude_unset=True)

    # -- dispatch ------------------------------------------------------------------------------
    def _dispatch(self, outcome: CallFinished, step: int, turn: _Turn) -> Iterator[ev.Event]:
        early = turn.screen(outcome)
        if early is not None:
            yield early
            return
        call = outcome.call
        assert call is not None
        if self.approve is not None:
            verdict = _ask(self.approve, call)
            if inspect.isawaitable(verdict):
                _discard(verdict)
                verdict = _NotAnswered(
                    "approve returned an awaitable in a sync run; use arun()/astream() for an async approve"
                )
            refusal = _refusal(verdict)
            if refusal is not None:
                yield turn.refused(call, refusal)
                return
        if isinstance(call, ToolCall):
            yield ev.ToolCalled(step, call)
            yield turn.tool_done(call, self.tools.call(call.name, call.arguments))
        else:
            yield ev.CodeStarted(step, call)
            try:
                result = self._kernel().run(call.code)
            except KeyboardInterrupt:
                _interrupt(self._interpreter)
                raise
            yield turn.code_done(call, result)

    async def _adispatch(self, outcome: CallFinished, step: int, turn: _Turn) -> AsyncIterator[ev.Event]:
        import asyncio

        early = turn.screen(outcome)
        if early is not None:
            yield early
            return
        call = outcome.call
        assert call is not None
        if self.approve is not None:
            verdict = _ask(self.approve, call)
            if inspect.isawaitable(verdict):
                try:
                    verdict = await verdict
                except Exception as exc:
                    verdict = _failed(exc)
            refusal = _refusal(verdict)
            if refusal is not None:
                yield turn.refused(call, refusal)
                return
        if isinstance(call, ToolCall):
            yield ev.ToolCalled(step, call)
            yield turn.tool_done(call, await self.tools.acall(call.name, call.arguments))
        else:
            yield ev.CodeStarted(step, call)
            try:
                result = await self._kernel().arun(call.code)
            except asyncio.CancelledError:
                _interrupt(self._interpreter)
                raise
            yield turn.code_done(call, result)

    def _result(self, start: int, events: Sequence[ev.AgentEvent]) -> RunResult:
        records: list[CallRecord] = []
        answer, stopped, error = None, "answer", None
        for e in events:
            if isinstance(e, ev.ToolReturned):
                records.append(CallRecord(e.step, e.call.name, e.call, e.ok, e.observation, e.result))
            elif isinstance(e, ev.CodeFinished):
                records.append(CallRecord(e.step, "interpreter", e.call, e.ok, e.observation, e.result))
            elif isinstance(e, ev.CallRefused):
                records.append(CallRecord(e.step, e.call.name, e.call, False, e.observation))
            elif isinstance(e, ev.ParseFailed):
                records.append(CallRecord(e.step, e.name, None, False, e.observation))
            elif isinstance(e, ev.FinalAnswer):
                answer = e.text
            elif isinstance(e, ev.RunError):
                stopped = "max_steps" if e.kind == "max_steps" else "model_error"
                error = e.message
        steps = max((e.step for e in events), default=0)
        return RunResult(answer, stopped, steps, self.messages[start:], records, list(events), error)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _NotAnswered:
    """An approval check that gave no yes/no answer (it raised, or returned something else)."""

    reason: str


@dataclass(frozen=True)
class _Refusal:
    """Why a call does not run: ``reason`` is None when the approver said no."""

    reason: str | None = None


def _ask(approve: Approve, call: Call) -> Any:
    try:
        return approve(call)
    except Exception as exc:  # a gate that fails says no
        return _failed(exc)


def _failed(exc: Exception) -> _NotAnswered:
    logger.warning("the approval check raised; the call is refused", exc_info=exc)
    return _NotAnswered(f"approve raised {type(exc).__name__}: {exc}")


def _refusal(verdict: object) -> _Refusal | None:
    """None when the call may run: only ``True`` approves."""
    if verdict is True:
        return None
    if verdict is False:
        return _Refusal()
    if isinstance(verdict, _NotAnswered):
        return _Refusal(verdict.reason)
    reason = f"approve returned {type(verdict).__name__}, not a bool; only True approves a call"
    logger.warning("%s; the call is refused", reason)
    return _Refusal(reason)


def _is_async_callable(fn: object) -> bool:
    call = type(fn).__call__ if callable(fn) and not inspect.isfunction(fn) else None
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _discard(awaitable: Any) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()  # a coroutine that will never run: no "never awaited" warning


def _close(stream: Any) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()  # stops a local model's generation at the next token


def _interrupt(interpreter: Any) -> None:
    if interpreter is not None and hasattr(interpreter, "interrupt"):
        try:
            interpreter.interrupt()
        except Exception:  # best effort while cancelling
            logger.warning("could not interrupt the kernel while cancelling", exc_info=True)


class _Turn:
    """The state of one model turn: parsing the stream, turning outcomes into events and messages."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.step = 0
        self.parser = ReplyStreamParser()
        self.calls: list[CallFinished] = []
        self.final: ev.FinalAnswer | None = None
        self._pending: list[CallFinished] = []
        self._streamed = ""

    def begin(self, step: int) -> None:
        self.step, self.parser, self.calls, self.final, self._streamed = step, ReplyStreamParser(), [], None, ""
        self._pending = []

    def _translate(self, parsed: list[Any]) -> Iterator[ev.Event]:
        for p in parsed:
            if isinstance(p, ParsedText):
                self._streamed += p.text
                yield ev.TextDelta(self.step, p.text)
            elif isinstance(p, CallStarted):
                yield ev.CallStarted(self.step, p.name)
            elif isinstance(p, CallFinished):
                self.calls.append(p)

    def feed(self, delta: str) -> Iterator[ev.Event]:
        return self._translate(self.parser.feed(delta))

    def close(self) -> Iterator[ev.Event]:
        yield from self._translate(self.parser.close())
        reply = self.parser.reply
        assert reply is not None
        self.agent.messages.extend(reply.messages())
        self._pending = list(self.calls)
        if not self.calls:
            self.final = ev.FinalAnswer(self.step, reply.text or "")

    def _observe(self, outcome_name: str, text: str) -> None:
        self.agent.messages.append(ObservationMessage(content=text))
        if self._pending:
            self._pending.pop(0)

    def screen(self, outcome: CallFinished) -> ev.Event | None:
        """Outcomes that need no execution: parse errors, code with no interpreter."""
        if outcome.error is not None:
            text = str(outcome.error)
            self._observe(outcome.name, text)
            return ev.ParseFailed(self.step, outcome.name, text)
        if isinstance(outcome.call, CodeCall) and not self.agent.code_enabled:
            self._observe(outcome.name, NO_INTERPRETER)
            return ev.CodeFinished(self.step, outcome.call, False, NO_INTERPRETER)
        return None

    def refused(self, call: Call, refusal: _Refusal) -> ev.CallRefused:
        what = "run this code" if isinstance(call, CodeCall) else f"call {call.name}"
        if refusal.reason is None:
            text = f"The user did not allow you to {what}. Do not try it again; continue without it."
        else:
            text = f"The request to {what} was not approved, so it did not run. Continue without it."
        self._observe(call.name, text)
        return ev.CallRefused(self.step, call, text, refusal.reason)

    def tool_done(self, call: ToolCall, result: Any) -> ev.ToolReturned:
        self._observe(call.name, result.observation)
        return ev.ToolReturned(self.step, call, result.ok, result.observation, result.error, list(result.files), result)

    def code_done(self, call: CodeCall, result: Any) -> ev.CodeFinished:
        self._observe("interpreter", result.observation)
        ok = getattr(result, "ok", getattr(result, "error", None) is None)
        return ev.CodeFinished(
            self.step, call, bool(ok), result.observation, list(getattr(result, "images", [])), result
        )

    def model_failed(self, exc: Exception) -> ev.RunError:
        logger.warning("the model failed: %s", exc)
        self._keep_streamed_text()
        return ev.RunError(self.step, "model", f"{type(exc).__name__}: {exc}", exc)

    def out_of_steps(self) -> ev.RunError:
        n = self.agent.max_steps
        return ev.RunError(self.step, "max_steps", f"stopped after {n} step{'s' * (n != 1)} without a final answer")

    def cancel(self) -> None:
        """Leave the conversation well-formed: keep streamed text, answer every pending call."""
        if self.parser.reply is None:
            self._keep_streamed_text()
        for outcome in list(self._pending):
            self._observe(outcome.name, CANCELLED)

    def _keep_streamed_text(self) -> None:
        if self.parser.reply is None and self._streamed.strip():
            self.agent.messages.append(AssistantMessage(content=self._streamed.strip()))
