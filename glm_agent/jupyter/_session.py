"""One agent per notebook kernel: the conversation the ``%%agent`` cells continue, and its sandbox.

The agent's code runs in a sandboxed kernel of its own (a :class:`~glm_agent.CodeInterpreter`),
never in the notebook's kernel: notebook values reach it only through ``put`` (copies in safe
formats) and come back only through ``get``.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from glm_agent import events as ev
from glm_agent.agent import Agent, RunResult
from glm_agent.errors import GlmAgentError
from glm_agent.interpreter import CodeInterpreter
from glm_agent.jupyter._display import LiveDisplay, listening
from glm_agent.messages import SystemMessage
from glm_agent.models import load_chat_model
from glm_agent.tools import Tool, ToolRegistry, load_module_tools

__all__ = ["NotebookSession", "AgentOptions", "NO_MODEL"]

NO_MODEL = (
    "no model: pass --model SPEC or set GLM_AGENT_MODEL (a checkpoint folder, an http(s):// OpenAI-compatible "
    "server, or scripted:FILE.json for prepared replies)"
)


@dataclass
class AgentOptions:
    """What an ``%%agent`` cell asks for; None / empty leaves the session's setting as it is."""

    model: str | None = None
    tools: Sequence[str] = ()
    code_interpreter: bool = False
    with_: Sequence[str] = ()
    max_steps: int | None = None
    system: str | None = None


@dataclass
class _Setup:
    model: str
    tools: tuple[str, ...] = ()
    code: bool = False
    max_steps: int = 10
    system: str | None = None
    tool_objects: list[Any] = field(default_factory=list, compare=False)


class NotebookSession:
    """The agent a notebook's cells talk to. ``namespace`` is where ``--with``/``--get`` names live
    (the notebook's variables); ``interval`` throttles the live display."""

    def __init__(self, namespace: Mapping[str, Any] | None = None, *, interval: float = 0.2) -> None:
        self.namespace: Any = namespace if namespace is not None else {}
        self.interval = interval
        self.agent: Agent | None = None
        self.interpreter: CodeInterpreter | None = None
        self.last_result: RunResult | None = None
        self.created: dict[str, str] = {}
        self._setup: _Setup | None = None
        self._models: dict[str, Any] = {}
        atexit.register(self.close)

    # -- set-up -----------------------------------------------------------------------------------
    def _resolve_tools(self, sources: Iterable[str]) -> list[Any]:
        found: list[Any] = []
        for source in sources:
            value = self.namespace.get(source) if source.isidentifier() else None
            if isinstance(value, ToolRegistry):
                found += list(value)
            elif isinstance(value, Tool) or (value is not None and callable(value)):
                found.append(value)
            elif value is not None:
                raise ValueError(f"{source} in this notebook is a {type(value).__name__}, not a tool or a function")
            else:
                found += load_module_tools(source)  # a file, a folder or a module name
        return found

    def configure(self, options: AgentOptions) -> Agent:
        """The agent for these options: the current one, or a new one that keeps the conversation."""
        current = self._setup
        model = options.model or (current.model if current else None) or os.environ.get("GLM_AGENT_MODEL", "")
        if not model.strip():
            raise ValueError(NO_MODEL)
        setup = _Setup(
            model=model,
            tools=tuple(options.tools) if options.tools else (current.tools if current else ()),
            code=options.code_interpreter or bool(options.with_) or (current.code if current else False),
            max_steps=options.max_steps or (current.max_steps if current else 10),
            system=options.system if options.system is not None else (current.system if current else None),
        )
        if self.agent is not None and setup == current:
            return self.agent
        if model not in self._models:
            self._models[model] = load_chat_model(model)
        tools = self._resolve_tools(setup.tools)
        history = [m for m in self.agent.messages if not isinstance(m, SystemMessage)] if self.agent else None
        if setup.code and self.interpreter is None:
            self.interpreter = CodeInterpreter()
        self.agent = Agent(
            self._models[model],
            tools=tools,
            code_interpreter=self.interpreter if setup.code else None,
            system=setup.system,
            max_steps=setup.max_steps,
            history=history,
        )
        self._setup = setup
        return self.agent

    def reset(self) -> None:
        """Start the conversation over (the sandbox's kernel restarts: its variables go, its files stay)."""
        if self.agent is not None:
            self.agent.reset()
        if self.interpreter is not None and not self.interpreter.closed:
            self.interpreter.restart()
        self.last_result = None
        self.created = {}

    # -- a question -------------------------------------------------------------------------------
    def ask(
        self, question: str, options: AgentOptions | None = None, *, display: LiveDisplay | None = None
    ) -> RunResult | None:
        """Run one question with a live display; return the run (on a model error, what it had; the display says why).

        ``options.with_`` names notebook variables put into the sandbox first and named to the model.
        """
        options = options or AgentOptions()
        agent = self.configure(options)
        headers = "".join(self._put(name) for name in options.with_)
        view = display or LiveDisplay(interval=self.interval)
        before = self._variables()
        result: RunResult | None = None
        try:
            with listening(self.interpreter, view):
                result = agent.run(headers + question, on_event=view.add)
        except GlmAgentError as exc:  # the display shows the RunError event already
            result = getattr(exc, "result", None)
        except KeyboardInterrupt:  # the stream closed cleanly; the notebook's stop still stops "Run all"
            view.transcript.notice("Interrupted: the run stopped; the conversation keeps what it had.")
            raise
        finally:
            view.close()
            self.last_result = result
        after = self._variables()
        self.created = {name: kind for name, kind in after.items() if before.get(name) != kind}
        return result

    def _put(self, name: str) -> str:
        if name not in self.namespace:
            raise ValueError(f"--with {name}: there is no variable {name} in this notebook")
        assert self.interpreter is not None  # --with turns the code interpreter on
        return self.interpreter.put(name, self.namespace[name])

    def _variables(self) -> dict[str, str]:
        if self.interpreter is None or self.interpreter.closed:
            return {}
        try:
            return self.interpreter.variables()
        except GlmAgentError:
            return {}

    def get(self, name: str) -> Any:
        """A copy of a sandbox variable (never unpickled: see ``CodeInterpreter.get``)."""
        if self.interpreter is None:
            raise ValueError("this notebook's agent has no sandbox yet: use --code-interpreter or --with first")
        return self.interpreter.get(name)

    def code_cells(self, result: RunResult | None = None) -> list[str]:
        """The code the agent ran in a run (default: the last), one string per call."""
        result = result or self.last_result
        if result is None:
            return []
        return [e.call.code for e in result.events if isinstance(e, ev.CodeFinished)]

    def insert_code_cells(self, set_next_input: Callable[..., None], result: RunResult | None = None) -> int:
        """Put the code the agent ran into a new cell below, for review (not run); return how many calls."""
        codes = self.code_cells(result)
        if codes:
            cells = [
                f"# agent code {i} of {len(codes)} (review before running)\n{code}" for i, code in enumerate(codes, 1)
            ]
            set_next_input("\n\n".join(cells), replace=False)
        return len(codes)

    def close(self) -> None:
        """End the agent and its sandbox (also done when the notebook's kernel exits)."""
        if self.agent is not None:
            self.agent.close()
        if self.interpreter is not None:
            self.interpreter.close()
        self.agent = self.interpreter = None
        self._setup = None
