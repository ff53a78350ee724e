"""The agent loop: generate, parse, dispatch, observe, until the model answers.

One model turn is one step. A reply may hold several segments (typically a short thought,
then a call). Policy for calls: every call segment of a reply runs, in order, and each gets
its own observation message, appended after the reply in the same order. A malformed call,
an unknown tool, bad arguments, a tool failure, a refused call, or code without an interpreter
becomes an observation the model can act on, and the loop goes on. At ``max_steps`` the run
ends with a ``RunError(kind="max_steps")`` event and ``RunResult.stopped == "max_steps"``;
after :meth:`Agent.cancel` with ``kind="cancelled"`` and ``stopped == "cancelled"``.

The step logic lives once in :mod:`glm_agent._steps` as a generator of actions; ``stream`` and
``astream`` below are its sync and async drivers (they perform the actions: model, approver,
tools, kernel).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from glm_agent import _steps
from glm_agent import events as ev
from glm_agent._transcript import Transcript, conversation_html, conversation_markdown
from glm_agent.chatglm3.prompts import (
    CHAT_SYSTEM,
    MNT_DATA,
    TOOLS_SYSTEM,
    build_system_message,
    code_system_prompt,
)
from glm_agent.errors import GlmAgentError, ModelError
from glm_agent.messages import (
    INTERPRETER,
    AssistantMessage,
    Call,
    CodeCall,
    Message,
    MessageLike,
    SystemMessage,
    ToolCall,
    UserMessage,
    load_jsonl,
    save_jsonl,
    to_messages,
)
from glm_agent.models.base import ChatModel, GenerationParams
from glm_agent.telemetry import RunTrace, in_context, in_context_async, new_conversation_id
from glm_agent.tools import Tool, ToolRegistry, ToolResult

if TYPE_CHECKING:
    from glm_agent.interpreter import CodeInterpreter, ExecutionResult

__all__ = ["Agent", "RunResult", "CallRecord"]

logger = logging.getLogger(__name__)

#: ``approve(call)`` returns ``True`` to run the call; in ``arun``/``astream`` it may be async.
#: Anything but ``True`` (``False``, a non-bool, an exception, a coroutine in a sync run) refuses.
Approve = Callable[[Call], Any]


#: told to the model with the first question after a conversation with code runs was resumed
RESUMED_KERNEL = (
    "[This conversation was resumed with a fresh code interpreter: the variables, imports and files of "
    f"the earlier runs are gone ({MNT_DATA} starts empty). Run again what you need.]\n"
)


def _official_prompts() -> set[str]:
    code = {code_system_prompt("zh"), code_system_prompt("en")}
    return {CHAT_SYSTEM, TOOLS_SYSTEM, *code, *(c + "\n" + TOOLS_SYSTEM for c in code)}


#: why a run ended: an answer, or :data:`~glm_agent.events.RunErrorKind`'s names
Stopped = Literal["answer", "max_steps", "model_error", "cancelled"]


@dataclass
class CallRecord:
    """One call the model made in a run, and what came of it."""

    step: int
    name: str
    call: Call | None
    ok: bool
    observation: str
    result: Any = field(default=None, repr=False)


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg"}


@dataclass
class RunResult:
    """What one ``run`` produced. ``answer`` is None unless ``stopped == "answer"``.

    ``files``: every file the run produced, as a path on this machine: what tools returned
    (saved bytes, images, charts) and what the code wrote in its workspace (``/mnt/data/x.csv`` is
    ``interpreter.workspace / "x.csv"``; a gateway's files stay on the gateway and are not listed).
    ``images``: the images among them, and the images the code displayed, in order. Temporary
    files live as long as the agent (``Agent.close`` removes them).
    """

    answer: str | None
    stopped: Stopped
    steps: int
    messages: list[Message]
    calls: list[CallRecord]
    events: list[ev.AgentEvent]
    error: str | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def images(self) -> list[Path]:
        found: list[Path] = []
        for e in self.events:
            if isinstance(e, ev.CodeFinished):
                found += e.images
            elif isinstance(e, ev.ToolReturned):
                found += [p for p in e.files if p.suffix.lower() in _IMAGE_SUFFIXES]
        return found

    def _summary(self) -> str:
        calls = f", {len(self.calls)} call{'s' * (len(self.calls) != 1)}" if self.calls else ""
        return f"stopped: {self.stopped}, {self.steps} step{'s' * (self.steps != 1)}{calls}"

    def _repr_html_(self) -> str:
        """The run as a notebook shows it: answer text, a card per call, images inline; every text escaped."""
        return Transcript.of(self.events).html() + f"<p><small>{self._summary()}</small></p>"

    def _repr_markdown_(self) -> str:
        return Transcript.of(self.events).markdown() + f"\n\n*{self._summary()}*"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(
            f"RunResult({self._summary()})" if cycle else Transcript.of(self.events).text() + f"\n({self._summary()})"
        )


class Agent:
    """A ChatGLM3 agent: a model, optional tools, an optional code interpreter, a conversation.

    ``code_interpreter=True`` starts a local :class:`~glm_agent.CodeInterpreter` on the first
    code call (and closes it with the agent); pass an instance to share or configure one.
    ``approve(call) -> bool`` confirms calls before they run (human in the loop): every call
    (``ask="all"``, the default), or only calls of tools marked ``@tool(needs_approval=True)``
    (``ask="marked"``). A marked tool's calls are refused when there is no approver. Calls are
    checked first: an unknown tool or bad arguments go back to the model without asking anyone.
    ``fit_history=True``: before each run, drop the oldest whole turns while the prompt would not
    fit the model's context (:meth:`drop_oldest_turns`; never the system prompt or the question).
    ``mcp`` (a ``{"mcpServers": ...}`` file or mapping) connects MCP servers whose tools join
    ``tools`` as ``server__tool``; the agent ends those servers when it is closed. At the start
    of a run, a toolset whose tools changed (MCP ``tools/list_changed``) updates the system prompt.
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
        ask: Literal["all", "marked"] = "all",
        language: Literal["zh", "en"] = "zh",
        generation: GenerationParams | dict[str, Any] | None = None,
        history: Sequence[MessageLike] | None = None,
        mcp: str | Path | Mapping[str, Any] | None = None,
        fit_history: bool = False,
        name: str = "glm-agent",
    ) -> None:
        if max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        self.model = model
        self.name = name
        #: names this conversation in traces (``gen_ai.conversation.id``); :meth:`reset` starts a new one
        self.conversation_id = new_conversation_id()
        self.tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools or ())
        self._owns_tools = not isinstance(tools, ToolRegistry)  # then its temporary files go with the agent
        self._own_toolsets: list[Any] = []
        if mcp is not None:
            from glm_agent.mcp import connect_mcp

            before = set(map(id, self.tools.toolsets))
            connect_mcp(mcp, registry=self.tools)
            self._own_toolsets = [t for t in self.tools.toolsets if id(t) not in before]
        self.code_enabled = code_interpreter is not None and code_interpreter is not False
        self._interpreter: CodeInterpreter | None = None
        if not isinstance(code_interpreter, (bool, type(None))):
            from glm_agent.interpreter import CodeInterpreter

            if not isinstance(code_interpreter, CodeInterpreter):
                raise TypeError(
                    "code_interpreter must be a CodeInterpreter, True (start one on first use), or False/None, "
                    f"not {type(code_interpreter).__name__}"
                )
            self._interpreter = code_interpreter
        self._owns_interpreter = code_interpreter is True
        self.system = system
        self.language = language
        self.max_steps = max_steps
        self.approve = approve
        if ask not in ("all", "marked"):
            raise ValueError(f"ask must be 'all' (every call goes to approve) or 'marked', not {ask!r}")
        self.ask = ask
        self.fit_history = fit_history
        self.generation = GenerationParams.of(generation)
        self.messages: list[Message] = []
        self._cancel = threading.Event()
        self._model_stream: Any = None  # the model's stream being read (cancel() reaches it from any thread)
        self._code_running = False
        self._resumed_code = False
        self.reset() if history is None else self.load_messages(history)

    # -- conversation --------------------------------------------------------------------------
    def __repr__(self) -> str:
        model = getattr(self.model, "name", type(self.model).__name__)
        code = ", code interpreter" if self.code_enabled else ""
        return f"Agent({model!r}, {len(self.tools)} tools{code}, {len(self.messages)} messages)"

    def _repr_html_(self) -> str:
        """The conversation so far (questions, answers, calls, observations), every text escaped."""
        return conversation_html(self.messages)

    def _repr_markdown_(self) -> str:
        return conversation_markdown(self.messages)

    def system_message(self) -> SystemMessage:
        return build_system_message(self.system, self._tool_schemas(), self.code_enabled, self.language)

    def _tool_schemas(self) -> list[dict[str, Any]] | None:
        return self.tools.chatglm3_schemas() if len(self.tools) else None

    def reset(self) -> None:
        """Start a new conversation (the system prompt stays; a kernel this agent owns restarts fresh)."""
        self.messages = [self.system_message()]
        self.conversation_id = new_conversation_id()
        if self._owns_interpreter and self._interpreter is not None:
            self._interpreter.close()
            self._interpreter = None

    def drop_oldest_turns(self, max_tokens: int) -> int:
        """Drop whole turns, oldest first, until the next prompt takes at most ``max_tokens``; how many went.

        A turn is a user message with everything after it up to the next one. The system prompt
        and the last turn (the question being answered, its pending calls) are never dropped; if
        they alone do not fit, as much as can go is gone and the model will say it does not fit.
        Counting needs the model's tokenizer (``model.tokenizer``: local weights, or an
        ``OpenAIModel`` given one).
        """
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
            raise GlmAgentError(
                f"{getattr(self.model, 'name', 'this model')} has no tokenizer to count the prompt with; "
                "give the backend one (OpenAIModel(..., tokenizer=ChatGLM3Tokenizer.from_pretrained(path)))"
            )
        dropped = 0
        while len(tokenizer.apply_chat_template(self.messages, add_generation_prompt=True)) > max_tokens:
            users = [i for i, m in enumerate(self.messages) if isinstance(m, UserMessage)]
            if len(users) < 2:
                break  # only the current turn is left
            del self.messages[users[0] : users[1]]
            dropped += 1
        if dropped:
            logger.info("dropped the %d oldest turn(s) to fit the prompt into %d tokens", dropped, max_tokens)
        return dropped

    def _fit(self) -> None:
        """``fit_history=True``: before a run, keep the prompt within the model's context (minus the reply)."""
        context = getattr(self.model, "context_length", None)
        if not isinstance(context, int):
            return
        defaults = getattr(self.model, "defaults", None)
        reply = self.generation.max_new_tokens if "max_new_tokens" in self.generation.model_fields_set else None
        reply = reply or getattr(defaults, "max_new_tokens", None) or self.generation.max_new_tokens
        self.drop_oldest_turns(context - reply)

    def load_messages(self, messages: Sequence[MessageLike], *, kernel_state_kept: bool = False) -> None:
        """Continue a conversation: ``messages`` (the official shape, or what :meth:`save` wrote) become this one.

        The system message lists *this* agent's tools (``tools=`` given now replace those saved);
        its text is ``system=`` when given, else the saved text (an official ChatGLM3 prompt is
        swapped for the one of this agent's mode). A conversation whose code ran in a kernel goes
        on in a fresh one: the next question tells the model that earlier variables and files are gone
        (``kernel_state_kept=True``: the agent's interpreter ran that code, its variables are there).
        """
        self.messages = to_messages(messages)
        current = self.system_message()
        saved = self.messages[0] if self.messages and isinstance(self.messages[0], SystemMessage) else None
        if saved is None:
            self.messages.insert(0, current)
        else:
            keep = self.system is None and saved.content not in _official_prompts()
            self.messages[0] = current.model_copy(update={"content": saved.content}) if keep else current
        self._resumed_code = (
            self.code_enabled
            and not kernel_state_kept
            and any(isinstance(m, AssistantMessage) and m.metadata.strip() == INTERPRETER for m in self.messages)
        )

    def save(self, path: str | Path) -> Path:
        """Save the conversation as JSON Lines (the official message shape; ``glm_agent.messages.load_jsonl`` reads it)."""
        return save_jsonl(self.messages, path)

    def load(self, path: str | Path) -> None:
        """Continue the conversation :meth:`save` wrote to ``path`` (see :meth:`load_messages`)."""
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
        from glm_agent.interpreter import conversation_to_notebook

        return conversation_to_notebook(
            self.messages, path, interpreter=self._interpreter, tool_outputs=self.tools.output_dir
        )

    def close(self) -> None:
        """Close what the agent started: its code interpreter, the MCP servers of ``mcp=``, and the
        registry it made for ``tools=[...]`` (with the temporary folder of what tools returned)."""
        if self._owns_interpreter and self._interpreter is not None:
            self._interpreter.close()
            self._interpreter = None
        toolsets, self._own_toolsets = self._own_toolsets, []
        for toolset in toolsets:
            self.tools.remove_toolset(toolset)
        if self._owns_tools:
            self.tools.close()

    def _refresh_tools(self) -> None:
        """A toolset whose tools changed since the last run: re-list it and update the system prompt."""
        if not self.tools.toolsets or not self.tools.refresh():
            return
        first = self.messages[0] if self.messages else None
        if isinstance(first, SystemMessage):
            self.messages[0] = first.model_copy(update={"tools": self._tool_schemas()})

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def aclose(self) -> None:
        """``close`` for async code (the kernel and MCP servers are ended off the event loop)."""
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> Agent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- running -------------------------------------------------------------------------------
    def _user_message(self, query: str, files: Sequence[str | Path] = ()) -> UserMessage:
        headers = "".join(self._upload(f) for f in files)
        if self._resumed_code:  # said once, before the model writes code that counts on the old kernel
            self._resumed_code = False
            headers = RESUMED_KERNEL + headers
        return UserMessage(content=headers + query)

    def _upload(self, file: str | Path) -> str:
        if not self.code_enabled:
            raise GlmAgentError(
                f"files= put files into the code interpreter's {MNT_DATA}, and this agent has none: "
                "pass code_interpreter=True (or paste the file's text into the question)"
            )
        return self._kernel().upload(file)

    def run(
        self, query: str, *, files: Sequence[str | Path] = (), on_event: Callable[[ev.Event], None] | None = None
    ) -> RunResult:
        """Run until the model answers (or ``max_steps``, or a cancel); the conversation is kept for the next run.

        ``on_event(event)`` sees each event as it happens (e.g. a live display), as ``stream`` yields them.

        Raises when the model fails: a ``GlmAgentError`` of the backend as it is (e.g.
        ``ContextLengthError``), anything else as ``ModelError``; ``error.result`` is the partial
        :class:`RunResult`. A question the model did not answer at all is taken out of the
        conversation again, so the next run works. (``stream`` yields a ``RunError`` event instead.)
        """
        start = len(self.messages)
        events = []
        stream = self.stream(query, files=files)
        try:
            for event in stream:
                events.append(event)
                if on_event is not None:
                    on_event(event)
        finally:
            _close(stream)  # an on_event that raises ends the run cleanly
        return self._finish(start, events)

    async def arun(
        self, query: str, *, files: Sequence[str | Path] = (), on_event: Callable[[ev.Event], None] | None = None
    ) -> RunResult:
        """Async ``run``: the same result, the same errors."""
        start = len(self.messages)
        events = []
        stream = self.astream(query, files=files)
        try:
            async for event in stream:
                events.append(event)
                if on_event is not None:
                    on_event(event)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator
        return self._finish(start, events)

    def _finish(self, start: int, events: list[ev.Event]) -> RunResult:
        result = self._result(start, events)
        failure = next((e for e in events if isinstance(e, ev.RunError) and e.kind == "model_error"), None)
        if failure is None:
            return result
        exc = failure.exception
        error = exc if isinstance(exc, GlmAgentError) else ModelError(f"the model failed: {failure.message}")
        error.result = result
        if error is exc:
            raise error
        raise error from exc

    def cancel(self) -> None:
        """Stop the run in progress at its next safe point; safe from another thread or task.

        Generation stops at the next token, running code is interrupted, a running tool is let
        finish; calls not yet run are answered "cancelled" and the run ends with
        ``RunError(kind="cancelled")`` (``RunResult.stopped == "cancelled"``).
        """
        self._cancel.set()
        cancel_generation = getattr(self._model_stream, "cancel", None)
        if callable(cancel_generation):  # a local model lets it go at its next step, mid-prefill too
            cancel_generation()
        if self._code_running and self._interpreter is not None:
            _interrupt(self._interpreter)
            # An interrupt that reaches the kernel just before the cell starts is lost: repeat it
            # while the code still runs (and this cancel still stands), a few times at most.
            threading.Thread(target=self._interrupt_until_stopped, name="glm-agent-cancel", daemon=True).start()

    def _interrupt_until_stopped(self, tries: int = 20, every: float = 0.25) -> None:
        for _ in range(tries):
            time.sleep(every)
            if not (self._cancel.is_set() and self._code_running and self._interpreter is not None):
                return
            _interrupt(self._interpreter)

    def _start(self, query: str, files: Sequence[str | Path]) -> tuple[_steps.Step, RunTrace]:
        self._cancel.clear()
        self._refresh_tools()
        self.messages.append(self._user_message(query, files))
        if self.fit_history:
            self._fit()
        core = _steps.steps(
            self.messages,
            max_steps=self.max_steps,
            params=self.generation.model_dump(exclude_unset=True),  # a backend's own defaults stay in force
            code_enabled=self.code_enabled,
            policy=self._call_policy(),
            cancelled=self._cancel.is_set,
        )
        run = RunTrace(
            agent=self.name,
            conversation_id=self.conversation_id,
            model=str(getattr(self.model, "name", type(self.model).__name__)),
            provider=str(getattr(self.model, "provider", "glm_agent")),
        )
        run.model_object = self.model
        return (_traced(core, run) if run.recording else _untraced(core, run)), run

    def _call_policy(self) -> _steps.CallPolicy:
        """Which calls are checked, asked about, refused: see the class docstring."""
        has_approver = self.approve is not None
        ask_all = has_approver and self.ask == "all"

        def must_ask(call: Call) -> bool:
            if ask_all:
                return True
            tool = self.tools.get(call.name) if isinstance(call, ToolCall) else None
            return tool is not None and tool.needs_approval

        def check(call: ToolCall) -> ToolResult | None:
            return self.tools.check(call.name, call.arguments)

        return _steps.CallPolicy(check=check, must_ask=must_ask, has_approver=has_approver)

    def stream(self, query: str, *, files: Sequence[str | Path] = ()) -> Iterator[ev.Event]:
        """Run, yielding events as they happen. Closing the iterator cancels the run cleanly."""
        if _is_async_callable(self.approve):
            raise TypeError("approve is an async function: use arun()/astream(), or pass a plain function")
        core, run = self._start(query, files)
        try:
            item = next(core)
            while True:
                outcome: Any = None
                if isinstance(item, ev.AgentEvent):
                    yield item
                elif isinstance(item, _steps.Generate):
                    outcome = yield from self._generate(item, run)
                elif isinstance(item, _steps.Approve):
                    outcome = self._verdict(item.call)
                elif isinstance(item, _steps.RunTool):
                    with run.active(run.current):
                        outcome = self.tools.call(item.call.name, item.call.arguments)
                else:
                    with run.active(run.current):
                        outcome = self._run_code(item.call)
                item = core.send(outcome)
        except StopIteration:
            return
        finally:
            core.close()  # on cancellation: keeps streamed text, answers pending calls

    async def astream(self, query: str, *, files: Sequence[str | Path] = ()) -> AsyncIterator[ev.Event]:
        """Async ``stream``: the model streams asynchronously, tools run off the event loop."""
        core, run = self._start(query, files)
        try:
            item = next(core)
            while True:
                outcome: Any = None
                if isinstance(item, ev.AgentEvent):
                    yield item
                elif isinstance(item, _steps.Generate):
                    stream = None
                    parts: list[str] = []
                    try:
                        with run.active(run.current):
                            raw = self.model.astream(item.messages, **item.params)
                        run.stream = raw
                        stream = (
                            in_context_async(raw, run.current) if run.recording and run.current is not None else raw
                        )
                        async for delta in stream:
                            parts.append(delta)
                            if self._cancel.is_set():
                                break
                            for event in item.feed(delta):
                                yield event
                    except Exception as exc:
                        outcome = exc
                    finally:
                        run.text = "".join(parts)
                        if stream is not None and hasattr(stream, "aclose"):
                            await stream.aclose()
                elif isinstance(item, _steps.Approve):
                    outcome = await self._averdict(item.call)
                elif isinstance(item, _steps.RunTool):
                    with run.active(run.current):
                        outcome = await self.tools.acall(item.call.name, item.call.arguments)
                else:
                    with run.active(run.current):
                        outcome = await self._arun_code(item.call)
                item = core.send(outcome)
        except StopIteration:
            return
        finally:
            core.close()

    # -- performing actions --------------------------------------------------------------------
    def _generate(self, action: _steps.Generate, run: RunTrace) -> Generator[ev.Event, None, Exception | None]:
        stream = None
        parts: list[str] = []
        try:
            with run.active(run.current):
                raw = self.model.stream(action.messages, **action.params)
            run.stream = self._model_stream = raw
            stream = in_context(iter(raw), run.current) if run.recording and run.current is not None else raw
            for delta in stream:
                parts.append(delta)
                if self._cancel.is_set():
                    break
                yield from action.feed(delta)
        except Exception as exc:
            return exc
        finally:
            self._model_stream = None
            run.text = "".join(parts)
            _close(stream)  # stops a local model's generation at the next token
        return None

    def _verdict(self, call: Call) -> object:
        verdict = _ask(self.approve, call)
        if inspect.isawaitable(verdict):
            _discard(verdict)
            return _steps.NotAnswered(
                "approve returned an awaitable in a sync run; use arun()/astream() for an async approve"
            )
        return verdict

    async def _averdict(self, call: Call) -> object:
        verdict = _ask(self.approve, call)
        if inspect.isawaitable(verdict):
            try:
                return await verdict
            except Exception as exc:
                return _failed(exc)
        return verdict

    def _run_code(self, call: CodeCall) -> ExecutionResult | None:
        kernel = self._kernel()
        self._code_running = True
        try:
            if self._cancel.is_set():
                return None  # cancel() came before the run started: nothing to interrupt
            return kernel.run(call.code)
        except KeyboardInterrupt:
            _interrupt(kernel)
            raise
        finally:
            self._code_running = False

    async def _arun_code(self, call: CodeCall) -> ExecutionResult | None:
        kernel = self._kernel()
        self._code_running = True
        try:
            if self._cancel.is_set():
                return None
            return await kernel.arun(call.code)
        except asyncio.CancelledError:
            _interrupt(kernel)
            raise
        finally:
            self._code_running = False

    def _result(self, start: int, events: Sequence[ev.AgentEvent]) -> RunResult:
        records: list[CallRecord] = []
        answer: str | None = None
        error: str | None = None
        stopped: Stopped = "answer"
        for e in events:
            if isinstance(e, ev.ToolReturned):
                records.append(CallRecord(e.step, e.call.name, e.call, e.ok, e.observation, e.result))
            elif isinstance(e, ev.CodeFinished):
                records.append(CallRecord(e.step, INTERPRETER, e.call, e.ok, e.observation, e.result))
            elif isinstance(e, ev.CallRefused):
                records.append(CallRecord(e.step, e.call.name, e.call, False, e.observation))
            elif isinstance(e, ev.ParseFailed):
                records.append(CallRecord(e.step, e.name, None, False, e.observation))
            elif isinstance(e, ev.FinalAnswer):
                answer = e.text
            elif isinstance(e, ev.RunError):
                stopped = e.kind
                error = e.message
        steps = max((e.step for e in events), default=0)
        files = self._files_of(events)
        return RunResult(answer, stopped, steps, self.messages[start:], records, list(events), error, files)

    def _files_of(self, events: Sequence[ev.AgentEvent]) -> list[Path]:
        """The host paths of what tools returned and what the code wrote (see ``RunResult.files``)."""
        files: list[Path] = []
        workspace = self._interpreter.backend.workspace if self._interpreter is not None else None
        for e in events:
            if isinstance(e, ev.ToolReturned):
                files += e.files
            elif isinstance(e, ev.CodeFinished) and workspace is not None and e.result is not None:
                for path in e.result.files:
                    relative = path.removeprefix(MNT_DATA + "/")
                    if relative != path:
                        files.append(Path(workspace) / relative)
        return list(dict.fromkeys(files))


def _traced(core: _steps.Step, run: RunTrace) -> _steps.Step:
    """The step core's items and outcomes, with the run's spans opened and closed around them.

    Drivers read ``run.current`` (the span of the action in flight) to make it current while
    they perform it, and leave ``run.text`` / ``run.stream`` after a model turn.
    """
    error: tuple[str, str] | None = ("cancelled", "the run was closed before it ended")
    try:
        item = next(core)
        while True:
            if isinstance(item, ev.RunError):
                error = (item.kind, item.message)
            elif isinstance(item, ev.FinalAnswer):
                error = None
            elif isinstance(item, ev.ParseFailed):
                run.event("parse_failed", **{"gen_ai.tool.name": item.name, "glm_agent.step": item.step})
            elif isinstance(item, ev.CallRefused):
                run.event("call_refused", **{"gen_ai.tool.name": item.call.name, "glm_agent.reason": item.reason})
            span = run.current = _open_span(run, item)
            outcome: Any = None  # stays None when the driver is closed while it performs the action
            try:
                outcome = yield item
            finally:
                run.current = None
                if span is not None:
                    _close_span(run, item, span, outcome)
            item = core.send(outcome)
    except StopIteration:
        return
    except Exception as exc:  # the run raised (a model failure under the raise rule, a bad tool set)
        error = (type(exc).__name__, str(exc))
        run.span.record_exception(exc)
        raise
    finally:
        core.close()
        run.end(error_kind=error[0] if error else None, message=error[1] if error else None)


def _untraced(core: _steps.Step, run: RunTrace) -> _steps.Step:
    """No SDK configured: the core itself, and the run's (no-op) span ended with it."""
    try:
        yield from core
    finally:
        run.end()


def _open_span(run: RunTrace, item: object) -> Any:
    if isinstance(item, _steps.Generate):
        run.text, run.stream = "", None
        return run.start_chat(item.messages, item.params)
    if isinstance(item, _steps.RunTool):
        return run.start_tool(item.call.name, item.call.arguments)
    if isinstance(item, _steps.RunCode):
        return run.start_tool(INTERPRETER, code=item.call.code)
    return None


def _close_span(run: RunTrace, item: object, span: Any, outcome: Any) -> None:
    if isinstance(item, _steps.Generate):
        stats = getattr(run.stream, "stats", None)
        usage = getattr(run.model_object, "last_usage", None) if stats is None else None
        run.end_chat(
            span, text=run.text, stats=stats, usage=usage, error=outcome if isinstance(outcome, Exception) else None
        )
    elif isinstance(item, _steps.RunTool):
        if isinstance(outcome, ToolResult):
            run.end_tool(span, ok=outcome.ok, observation=outcome.observation, error=outcome.error)
        else:
            run.end_tool(span, ok=False, observation=None, error="not_run")
    elif isinstance(item, _steps.RunCode):
        if outcome is None:
            run.end_tool(span, ok=False, observation=None, error="cancelled", interrupted=True)
        else:
            run.end_tool(
                span,
                ok=outcome.ok,
                observation=outcome.observation,
                error=None if outcome.ok else outcome.status,
                **{
                    "code.status": outcome.status,
                    "code.timed_out": outcome.timed_out,
                    "code.restarted": outcome.restarted,
                    "code.state_lost": outcome.state_lost,
                    "code.interrupted": "KeyboardInterrupt" in outcome.text,
                    "code.duration_s": outcome.duration_s,
                },
            )


def _ask(approve: Approve | None, call: Call) -> Any:
    assert approve is not None
    try:
        return approve(call)
    except Exception as exc:  # a gate that fails says no
        return _failed(exc)


def _failed(exc: Exception) -> _steps.NotAnswered:
    logger.warning("the approval check raised; the call is refused", exc_info=exc)
    return _steps.NotAnswered(f"approve raised {type(exc).__name__}: {exc}")


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
