"""Show an agent's events: as plain text (:func:`format_event`, :func:`print_event`) or on a rich console
(:class:`EventRenderer`, what ``glm-agent chat`` and ``run`` use).

>>> from glm_agent.render import print_event
>>> for event in agent.stream("What is 6 x 7?"):  # doctest: +SKIP
...     print_event(event)

Long observations are cut, bytes and images are named by their files, never printed.
"""

from __future__ import annotations

import json
import sys
import weakref
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.syntax import Syntax
from rich.text import Text
from typing_extensions import assert_never

from glm_agent import events as ev
from glm_agent._transcript import unfenced
from glm_agent.messages import INTERPRETER, CodeCall, ToolCall

__all__ = ["EventRenderer", "PlainPrinter", "format_event", "print_event", "MAX_SHOWN_CHARS"]

MAX_SHOWN_CHARS = 3000


def _clip(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n... ({len(text) - limit} more characters)"


def _arguments(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, ensure_ascii=False, default=repr)


def format_event(event: ev.Event, limit: int = MAX_SHOWN_CHARS) -> str:
    """One event as plain text: a text delta as it is, anything else on lines of its own (no trailing newline).

    Observations are cut to ``limit`` characters; files and images are named by their paths.
    """
    match event:
        case ev.TextDelta():
            return event.text
        case ev.CallStarted():
            return f"[calling {event.name}]"
        case ev.ToolCalled():
            return f"-> {event.call.name}({_arguments(event.call.arguments)})"
        case ev.ToolReturned():
            head = f"<- {event.call.name} ({'ok' if event.ok else 'error'}):"
            body = _clip(event.observation, limit)
            lines = [f"{head} {body}" if "\n" not in body and len(body) < 100 else f"{head}\n{body}"]
            return "\n".join(lines + [f"   saved {path}" for path in event.files])
        case ev.CodeStarted():
            return f"-> running code:\n{event.call.code}"
        case ev.CodeFinished():
            lines = ["<- output:" if event.ok else "<- output (error):", _clip(unfenced(event.observation), limit)]
            return "\n".join(lines + [f"   image {path}" for path in event.images])
        case ev.CallRefused():
            return f"!! refused: {event.call.name}" + (f" ({event.reason})" if event.reason else "")
        case ev.ParseFailed():
            return f"!! unreadable call {event.name}: {_clip(event.observation, 500)}"
        case ev.FinalAnswer():
            return ""
        case ev.RunError():
            return f"!! stopped ({event.kind}): {event.message}"
        case _:
            assert_never(event)


class PlainPrinter:
    """Print events as plain text to ``file`` (default: stdout): text streams inline, the rest on lines of their own."""

    def __init__(self, file: Any = None) -> None:
        self.file = file
        self._mid_line = False

    def __call__(self, event: ev.Event) -> None:
        out = self.file if self.file is not None else sys.stdout
        if isinstance(event, ev.TextDelta):
            out.write(event.text)
            self._mid_line = bool(event.text) and not event.text.endswith("\n")
        else:
            if self._mid_line:
                out.write("\n")
            text = format_event(event)
            out.write(text + "\n" if text else "")
            self._mid_line = False
        out.flush()


_printers: weakref.WeakKeyDictionary[Any, PlainPrinter] = weakref.WeakKeyDictionary()
_stdout_printer = PlainPrinter()


def print_event(event: ev.Event, file: Any = None) -> None:
    """Print one event as plain text (:class:`PlainPrinter`): the answer streams inline, the rest get lines.

    One printer per ``file`` (default: stdout) remembers whether a line of answer text is open.
    """
    if file is None:
        _stdout_printer(event)
        return
    printer = _printers.get(file)
    if printer is None:
        printer = _printers[file] = PlainPrinter(file)
    printer(event)


class EventRenderer:
    """Show events on a rich console as they arrive. Text streams inline; calls and results are set apart.

    ``refusal_hint``: said after a refused call (how to allow it); ``image_note``: said once after
    the first image.
    """

    def __init__(self, console: Console, *, refusal_hint: str | None = None) -> None:
        self.console = console
        self.refusal_hint = refusal_hint
        self._mid_line = False
        self._shown: object | None = None  # a call already shown (to ask for approval)
        self._status: Any = None  # the spinner while a tool or code runs
        self.image_note: str | None = None  # said once, after the first image

    # -- helpers ---------------------------------------------------------------------------------
    def _end_line(self) -> None:
        if self._mid_line:
            self.console.print()
            self._mid_line = False

    def _line(self, text: str | Text) -> None:
        self._end_line()
        self.console.print(text, highlight=False, soft_wrap=True)

    def note(self, text: str, style: str = "dim") -> None:
        """A line of the program's own (not the model's) in a quiet style."""
        self._line(Text(text, style=style))

    # -- events ------------------------------------------------------------------------------------
    def render(self, event: ev.Event) -> None:
        """Show one event. Every member of ``events.Event`` has a case: mypy fails on a missing one."""
        self.stop_waiting()
        match event:
            case ev.TextDelta():
                self._text(event)
            case ev.CallStarted():
                self._call_started(event)
            case ev.ToolCalled():
                self._show_once(event.call)
                self._wait(f"running {event.call.name} ...")
            case ev.ToolReturned():
                self._tool_returned(event)
            case ev.CodeStarted():
                self._show_once(event.call)
                self._wait("running code ...")
            case ev.CodeFinished():
                self._code_finished(event)
            case ev.CallRefused():
                self._refused(event)
            case ev.ParseFailed():
                self._parse_failed(event)
            case ev.FinalAnswer():
                self._end_line()
            case ev.RunError():
                self._line(Text.from_markup(f"[bold red]stopped:[/] {escape(event.message)}"))
            case _:
                assert_never(event)

    def _text(self, e: ev.TextDelta) -> None:
        if not e.text:
            return
        self.console.print(e.text, end="", markup=False, highlight=False, soft_wrap=True)
        self._mid_line = not e.text.endswith("\n")

    def _call_started(self, e: ev.CallStarted) -> None:
        what = "writing code ..." if e.name == INTERPRETER else f"calling {e.name} ..."
        self.note(f"  {what}")

    def show_call(self, call: ToolCall | CodeCall) -> None:
        """Show a call before it runs (its arguments, or its code)."""
        self._shown = call
        if isinstance(call, CodeCall):
            self._end_line()
            code = Syntax(call.code, "python", theme="ansi_dark", word_wrap=True)
            self.console.print(Panel(code, title="code", title_align="left", border_style="blue"))
        else:
            args = _arguments(call.arguments)
            self._line(Text.assemble(("tool ", "bold cyan"), (call.name, "bold"), " ", (args, "cyan")))

    def _show_once(self, call: ToolCall | CodeCall) -> None:
        if self._shown is not call:
            self.show_call(call)
        self._shown = None

    def _tool_returned(self, e: ev.ToolReturned) -> None:
        mark, style = ("ok", "green") if e.ok else ("error", "red")
        self.console.print(
            Panel(Text(_clip(e.observation)), title=f"{e.call.name}: {mark}", title_align="left", border_style=style),
            highlight=False,
        )
        for path in e.files:
            self._line(Text.assemble(("saved ", "bold magenta"), str(path)))

    def _code_finished(self, e: ev.CodeFinished) -> None:
        self._end_line()
        style = "green" if e.ok else "red"
        title = "output" if e.ok else "output: error"
        shown = unfenced(e.observation)
        body = Text(_clip(shown)) if shown.strip() else Text("(no output)", style="dim")
        self.console.print(Panel(body, title=title, title_align="left", border_style=style), highlight=False)
        for path in e.images:
            self._line(Text.assemble(("image ", "bold magenta"), str(path)))
        if e.images and self.image_note:
            self.note(f"  ({self.image_note})")
            self.image_note = None

    def _refused(self, e: ev.CallRefused) -> None:
        self._show_once(e.call)
        what = "code" if e.call.name == INTERPRETER else e.call.name
        why = e.reason or self.refusal_hint  # a failed approval check says why; else how to allow calls
        hint = f" ({why})" if why else ""
        self._line(Text(f"refused: {what}{hint}", style="yellow"))

    def _parse_failed(self, e: ev.ParseFailed) -> None:
        self._line(Text.assemble(("unreadable call ", "bold red"), (e.name, "bold"), ": ", _clip(e.observation, 500)))

    def _wait(self, what: str) -> None:
        self._status = self.console.status(what, spinner="dots")
        self._status.start()

    def stop_waiting(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def interrupted(self) -> None:
        self.stop_waiting()
        self._line(Text("[interrupted]", style="yellow"))
