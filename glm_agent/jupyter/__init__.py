"""glm-agent in Jupyter: ``%load_ext glm_agent``, the ``%%agent`` magic, live display of runs.

>>> %load_ext glm_agent                                            # doctest: +SKIP
>>> %%agent --tools convert_length --code-interpreter               # doctest: +SKIP
... How many km is a marathon?

Without magics: ``show(agent.stream("question"), interpreter=agent.interpreter)`` shows a run live;
``agent.run(question, on_event=LiveDisplay().add)`` does too and returns the ``RunResult``.
:func:`session` is the agent the magics use. The model's code runs in a sandboxed kernel, never
in the notebook's: values go in with ``--with`` (``CodeInterpreter.put``) and come back with
``--get`` (``CodeInterpreter.get``), in formats that cannot run code.
"""

from __future__ import annotations

from typing import Any

from glm_agent.jupyter._display import LiveDisplay, ashow, in_notebook, show
from glm_agent.jupyter._session import AgentOptions, NotebookSession

__all__ = [
    "show",
    "ashow",
    "LiveDisplay",
    "in_notebook",
    "session",
    "NotebookSession",
    "AgentOptions",
    "load_ipython_extension",
    "unload_ipython_extension",
]

_sessions: dict[int, NotebookSession] = {}


def session(shell: Any = None) -> NotebookSession:
    """The notebook's agent session (one per IPython shell; created on first use)."""
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    key = id(shell)
    if key not in _sessions:
        _sessions[key] = NotebookSession(shell.user_ns if shell is not None else None)
    return _sessions[key]


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext glm_agent``: registers ``%agent`` / ``%%agent``."""
    from glm_agent.jupyter._magic import AgentMagics

    shell.register_magics(AgentMagics(shell, session(shell)))


def unload_ipython_extension(shell: Any) -> None:
    """``%unload_ext glm_agent``: ends the session's agent and sandbox."""
    found = _sessions.pop(id(shell), None)
    if found is not None:
        found.close()
