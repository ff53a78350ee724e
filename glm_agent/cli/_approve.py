"""Who approves a tool call or code before it runs: ``--yes``, ``--yes-for NAME``, the person at the terminal, or nobody.

The default is safe: a call runs only when ``--yes`` (or ``--yes-for`` its tool) was given or a
person said yes at the terminal, where a bare Enter means **no**. Without a terminal to ask (a
pipe, a script), every other call is refused, the model is told so, and :attr:`CliApprover.unasked`
counts them (``glm-agent run`` then exits non-zero).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from rich.console import Console
from rich.prompt import Confirm

from glm_agent.messages import Call, ToolCall
from glm_agent.render import EventRenderer

__all__ = ["CliApprover", "choose_approver", "REFUSED_HINT"]

REFUSED_HINT = "no terminal to ask; pass --yes (or --yes-for TOOL) to allow calls"


class CliApprover:
    """``approve(call)`` for the agent: yes for ``--yes`` and ``--yes-for`` tools, else ask, else no."""

    def __init__(self, *, yes: bool, yes_for: Iterable[str], ask: Callable[[Call], bool] | None) -> None:
        self.yes = yes
        self.yes_for = frozenset(yes_for)
        self.ask = ask
        self.unasked = 0  # calls refused because there was nobody to ask

    def __call__(self, call: Call) -> bool:
        if self.yes or (isinstance(call, ToolCall) and call.name in self.yes_for):
            return True
        if self.ask is not None:
            return self.ask(call)
        self.unasked += 1
        return False


def _ask(renderer: EventRenderer, prompt_console: Console) -> Callable[[Call], bool]:
    def approve(call: Call) -> bool:
        renderer.show_call(call)
        try:
            return bool(Confirm.ask("  run it?", console=prompt_console, default=False))
        except EOFError:
            return False

    return approve


def choose_approver(
    yes: bool,
    renderer: EventRenderer,
    prompt_console: Console,
    *,
    yes_for: Iterable[str] = (),
    interactive: bool | None = None,
) -> tuple[CliApprover, str | None]:
    """The approval hook and the hint shown when a call is refused.

    ``--yes``: every call runs. ``--yes-for NAME``: that tool's calls run. Others: a terminal on
    stdin (or ``interactive=True``) asks y/N per call; without one they are refused, with a hint
    that names ``--yes``.
    """
    if interactive is None:
        interactive = sys.stdin.isatty()
    ask = _ask(renderer, prompt_console) if interactive and not yes else None
    hint = None if yes or interactive else REFUSED_HINT
    return CliApprover(yes=yes, yes_for=yes_for, ask=ask), hint
