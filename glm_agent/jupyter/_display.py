"""A run shown live in a notebook: one display, updated in place as events arrive (throttled).

In a Jupyter kernel the run is one ``display(..., display_id=True)`` whose HTML (with a Markdown
and a plain-text form beside it) is replaced by ``update_display`` at most every ``interval``
seconds, and once more at the end; a headless run (nbclient, nbconvert) saves that last render.
Anywhere else (terminal IPython, a script) the events are printed as plain text as they come.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import time
from collections.abc import AsyncIterable, Iterable, Iterator
from typing import Any

from glm_agent import events as ev
from glm_agent._transcript import Transcript
from glm_agent.render import PlainPrinter

__all__ = ["LiveDisplay", "show", "ashow", "in_notebook", "listening"]


def in_notebook() -> bool:
    """True inside a Jupyter kernel (a frontend renders HTML), False in terminal IPython or a script."""
    shell = sys.modules.get("IPython") and _shell()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


class LiveDisplay:
    """Renders events (and a running cell's output) into one display, updated in place.

    ``interval``: the shortest time between two updates, so a long run does not flood the
    frontend; a change held back is sent when the interval is over (from a timer in the same
    output context), and the run's end (its answer or error) and :meth:`close` are sent at once,
    so ``on_event=LiveDisplay().add`` needs no close. ``rich=None`` detects a notebook; ``False``
    prints plain text as it comes. ``updates`` counts the display messages sent.
    """

    def __init__(self, *, interval: float = 0.2, rich: bool | None = None) -> None:
        self.transcript = Transcript()
        self.interval = interval
        self.rich = in_notebook() if rich is None else rich
        self.updates = 0
        self._handle: Any = None
        self._shown = -1
        self._last = 0.0
        self._lock = (
            threading.RLock()
        )  # the transcript changes in the run's thread, a held-back update sends from a timer
        self._timer: threading.Timer | None = None
        self._printer = PlainPrinter()
        self._printed_live = False

    # -- input ------------------------------------------------------------------------------------
    def add(self, event: ev.Event) -> None:
        with self._lock:
            self.transcript.add(event)
        if self.rich:
            self._update(force=isinstance(event, (ev.FinalAnswer, ev.RunError)))
        elif isinstance(event, ev.CodeFinished) and self._printed_live:  # its output is on screen already
            self._printed_live = False
            sys.stdout.write("" if event.ok else "<- (error)\n")
            sys.stdout.flush()
        else:
            self._printer(event)

    def output(self, output: Any) -> None:
        """A running cell's output (a ``CodeInterpreter.on_output`` listener)."""
        with self._lock:
            self.transcript.output(output)
        if self.rich:
            self._update()
            return
        text = getattr(output, "text", None)
        if isinstance(text, str):
            sys.stdout.write(("" if self._printed_live else "<- output:\n") + text)
            sys.stdout.flush()
            self._printed_live = True

    def close(self) -> None:
        """Show the final state now (whatever the throttle)."""
        if self.rich:
            self._update(force=True)

    # -- output -----------------------------------------------------------------------------------
    def _bundle(self) -> dict[str, str]:
        return {
            "text/html": self.transcript.html(),
            "text/markdown": self.transcript.markdown(),
            "text/plain": self.transcript.text() or "…",
        }

    def _update(self, force: bool = False) -> None:
        with self._lock:
            if self.transcript.version == self._shown:
                return
            wait = self.interval - (time.monotonic() - self._last)
            if not force and self._handle is not None and wait > 0:
                if self._timer is None:  # send what is held back when the interval is over
                    context = contextvars.copy_context()  # the cell's output context (ipykernel's parent header)
                    self._timer = threading.Timer(wait, context.run, (self._flush,))
                    self._timer.daemon = True
                    self._timer.start()
                return
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            from IPython.display import display

            self._shown, self._last = self.transcript.version, time.monotonic()
            self.updates += 1
            if self._handle is None:
                self._handle = display(self._bundle(), raw=True, display_id=True)  # type: ignore[no-untyped-call]
            else:
                self._handle.update(self._bundle(), raw=True)

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
        self._update(force=True)


@contextlib.contextmanager
def listening(interpreter: Any, view: LiveDisplay) -> Iterator[None]:
    """Route a code interpreter's live output to ``view`` (and to its own listener) for a run."""
    if interpreter is None:
        yield
        return
    previous = interpreter.on_output

    def both(output: Any) -> None:
        view.output(output)
        if previous is not None:
            previous(output)

    interpreter.on_output = both
    try:
        yield
    finally:
        interpreter.on_output = previous


def show(events: Iterable[ev.Event], *, interpreter: Any = None, interval: float = 0.2) -> list[ev.Event]:
    """Show a run live as its events arrive: ``show(agent.stream("question"), interpreter=agent.interpreter)``.

    ``interpreter`` (optional) adds a running cell's output as it is printed. Returns the events
    (``agent.run(question, on_event=LiveDisplay().add)`` gives a ``RunResult`` instead).
    """
    view = LiveDisplay(interval=interval)
    seen: list[ev.Event] = []
    try:
        with listening(interpreter, view):
            for event in events:
                seen.append(event)
                view.add(event)
    finally:
        view.close()
    return seen


async def ashow(events: AsyncIterable[ev.Event], *, interval: float = 0.2) -> None:
    """:func:`show` for an async stream (``await ashow(agent.astream(...))``); a cell's output shows at its end."""
    view = LiveDisplay(interval=interval)
    try:
        async for event in events:
            view.add(event)
    finally:
        view.close()
