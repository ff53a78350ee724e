"""``%%agent`` and ``%agent``: ask the notebook's agent, shown live; options as on the command line.

::

    %%agent [--model SPEC] [--tools NAME_OR_FILE ...] [--code-interpreter] [--with NAME ...] [--cells]
    What is the mean of df's second column?

    %agent What is 6 x 7?                     # one line: the line is the question
    %agent --with df sales -- Compare them.   # options first, then -- and the question
    %agent --reset                            # start the conversation over
    %agent --get result                       # bring a sandbox variable into the notebook
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from glm_agent.errors import GlmAgentError
from glm_agent.jupyter._session import AgentOptions, NotebookSession

__all__ = ["AgentMagics", "parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # a UsageError shows in the cell, not a SystemExit
        raise UsageError(f"%agent: {message}\n{self.format_usage()}")

    def exit(self, status: int = 0, message: str | None = None) -> Any:
        raise UsageError(message or self.format_help())


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="%%agent", description="Ask the notebook's agent (one conversation per kernel).", add_help=True)
    p.add_argument(
        "--model",
        metavar="SPEC",
        help="a checkpoint folder, an http(s):// server, scripted:FILE.json (default: GLM_AGENT_MODEL)",
    )
    p.add_argument(
        "--tools",
        nargs="+",
        default=[],
        metavar="NAME_OR_FILE",
        help="@tool functions of this notebook by name, or tool files/modules",
    )
    p.add_argument("--code-interpreter", action="store_true", help="let the model run code in a sandboxed kernel")
    p.add_argument(
        "--with",
        dest="with_",
        nargs="+",
        default=[],
        metavar="NAME",
        help="copy these notebook variables into the sandbox first",
    )
    p.add_argument("--cells", action="store_true", help="put the code the agent ran into a new cell below (not run)")
    p.add_argument("--reset", action="store_true", help="start the conversation over")
    p.add_argument(
        "--get", nargs="+", default=[], metavar="NAME", help="bring these sandbox variables into the notebook"
    )
    p.add_argument("--max-steps", type=int, metavar="N", help="model turns per question (default 10)")
    p.add_argument("--system", metavar="TEXT", help="a system prompt of your own")
    return p


def _split_line(line: str) -> tuple[list[str], str]:
    """``%agent``'s line: options (when it starts with ``-``), then ``--`` and the question; else all question."""
    stripped = line.strip()
    if not stripped.startswith("-"):
        return [], stripped
    options, sep, question = stripped.partition(" -- ")
    if not sep and stripped.endswith(" --"):
        options = stripped[:-3]
    try:
        return shlex.split(options), question.strip()
    except ValueError as exc:
        raise UsageError(f"%agent: {exc} in the options") from exc


@magics_class
class AgentMagics(Magics):
    """The magics; ``session`` is the notebook's :class:`NotebookSession`."""

    def __init__(self, shell: Any, session: NotebookSession) -> None:
        super().__init__(shell)
        self.session = session
        self.ipython: Any = shell

    @line_cell_magic
    def agent(self, line: str, cell: str | None = None) -> None:
        if cell is None:
            tokens, question = _split_line(line)
        else:
            try:
                tokens = shlex.split(line)
            except ValueError as exc:
                raise UsageError(f"%%agent: {exc} in the options") from exc
            question = cell.strip()
        args = parser().parse_args(tokens)
        try:
            self._act(args, question)
        except (ValueError, TypeError, GlmAgentError) as exc:
            raise UsageError(str(exc)) from None

    def _act(self, args: argparse.Namespace, question: str) -> None:
        session = self.session
        if args.reset:
            session.reset()
            print("The conversation starts over.")
        for name in args.get:
            self.ipython.user_ns[name] = session.get(name)
            print(f"{name} is here now ({type(self.ipython.user_ns[name]).__name__}).")
        options = AgentOptions(
            model=args.model,
            tools=args.tools,
            code_interpreter=args.code_interpreter,
            with_=args.with_,
            max_steps=args.max_steps,
            system=args.system,
        )
        if not question:
            if not (args.reset or args.get):
                session.configure(options)  # settings only: checked now, used by the next question
            return
        session.ask(question, options)
        if session.created:
            listed = ", ".join(f"{name} ({kind.rsplit('.', 1)[-1]})" for name, kind in session.created.items())
            print(f"In the sandbox now: {listed}. Bring one here with %agent --get NAME.")
        if args.cells and not session.insert_code_cells(self.ipython.set_next_input):
            print("The agent ran no code in this run: no cell to add.")
