"""Who approves a tool call or code before it runs: ``--yes``, the person at the terminal, or nobody.

The default is safe: a call runs only when ``--yes`` was given or a person said yes at the
terminal. Without a terminal to ask (a pipe, a script) and without ``--yes``, every call is
refused and the model is told so.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.prompt import Confirm

from glm_agent.cli._render import EventRenderer
from glm_agent.messages import Call

__all__ = ["choose_approver", "REFUSED_HINT"]

REFUSED_HINT = "no terminal to ask; pass --yes to allow calls"


def _ask(renderer: EventRenderer, prompt_console: Console) -> Callable[[Call], bool]:
    def approve(call: Call) -> bool:
        renderer.show_call(call)
        try:
            return Confirm.ask("  run it?", console=prompt_console, default=True)
        except EOFError:
            return False

    return approve


def _refuse(call: Call) -> bool:
    return False


def choose_approver(
    yes: bool, renderer: EventRenderer, prompt_console: Console, *, interactive: bool | None = None
) -> tuple[Callable[[Call], Any] | None, str | None]:
    """The approval hook and the hint shown when a call is refused.

    ``--yes``: no hook (every call runs). A terminal on stdin (or ``interactive=True``): ask y/n
    per call. Otherwise: refuse every call, with a hint that names ``--yes``.
    """
    if yes:
        return None, None
    if interactive is None:
        interactive = sys.stdin.isatty()
    if interactive:
        return _ask(renderer, prompt_console), None
    return _refuse, REFUSED_HINT
