"""``glm-agent notebook``: conversations and notebooks.

- ``glm-agent notebook SESSION.jsonl -o OUT.ipynb``: a saved conversation as a notebook (code the
  model ran as code cells with its observations as outputs; the text as markdown cells).
- ``glm-agent notebook continue IN.ipynb "question" -o OUT.ipynb``: IN's cells run in a sandboxed
  kernel (or, with ``--no-execute``, their saved outputs are used) and become the conversation's
  history as interpreter calls and observations; the agent answers the question in that kernel and
  OUT is IN plus the question and the agent's turn (markdown, code cells with their outputs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from glm_agent.cli._agent import Subparsers, UsageError, add_agent_options, cli_errors

__all__ = ["add_command", "route"]


def add_command(subparsers: Subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "notebook",
        help="a saved conversation as a notebook, or a notebook continued by the agent",
        description="glm-agent notebook SESSION.jsonl -o OUT.ipynb | glm-agent notebook continue IN.ipynb QUESTION -o OUT.ipynb",
    )
    forms = parser.add_subparsers(dest="notebook_form", metavar="{export,continue}")
    export = forms.add_parser(
        "export",
        help="a conversation saved as JSON Lines as a notebook (the default form)",
        description="Turn a conversation saved with Agent.save / glm-agent run --save / chat's /save into a notebook.",
    )
    export.add_argument("session", metavar="SESSION.jsonl", help="a conversation saved as JSON Lines")
    export.add_argument("-o", "--output", metavar="OUT.ipynb", help="the notebook to write (default: SESSION.ipynb)")
    export.set_defaults(handler=notebook_command)
    more = forms.add_parser(
        "continue",
        help="run a notebook in a sandboxed kernel, let the agent continue it, write the result",
        description="IN's cells run in a sandboxed kernel and become the agent's history; the agent answers "
        "QUESTION in that kernel; OUT is IN plus the question and the agent's turn.",
    )
    more.add_argument("input", metavar="IN.ipynb", help="the notebook to continue")
    more.add_argument("question", help="what the agent should do next")
    more.add_argument("-o", "--output", metavar="OUT.ipynb", required=True, help="the notebook to write")
    more.add_argument(
        "--no-execute",
        action="store_true",
        help="use IN's saved outputs instead of running it (the kernel starts empty)",
    )
    more.add_argument(
        "--last-cells",
        type=int,
        metavar="N",
        help="show the model only IN's last N cells (a marker says how many went before); a notebook too long "
        "for the model's context is otherwise refused",
    )
    add_agent_options(more)
    more.set_defaults(handler=continue_command, code_interpreter=True)
    return parser


def route(argv: list[str]) -> list[str]:
    """``notebook SESSION.jsonl`` (the first form, without its name) is ``notebook export SESSION.jsonl``."""
    if len(argv) >= 2 and argv[0] == "notebook" and argv[1] not in ("export", "continue", "-h", "--help"):
        return [argv[0], "export", *argv[1:]]
    return argv


@cli_errors("notebook")
def notebook_command(args: argparse.Namespace) -> int:
    # the interpreter package exports it lazily (nbformat imports slowly); the same function, typed
    from glm_agent.interpreter import conversation_to_notebook
    from glm_agent.messages import load_jsonl

    session = Path(args.session)
    output = Path(args.output) if args.output else session.with_suffix(".ipynb")
    messages = load_jsonl(session)
    if not messages:
        raise ValueError(f"{session} holds no messages")
    path = conversation_to_notebook(messages, output)
    print(f"notebook saved to {path}", file=sys.stderr)
    return 0


@cli_errors("notebook continue")
def continue_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from glm_agent.cli._agent import load_model, model_spec, open_agent
    from glm_agent.cli._approve import choose_approver
    from glm_agent.interpreter import (
        CodeInterpreter,
        append_run,
        check_fits,
        notebook_history,
        read_notebook,
        save_notebook,
    )
    from glm_agent.render import EventRenderer

    source = Path(args.input)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such notebook")
    if args.last_cells is not None and args.last_cells < 0:
        raise UsageError("--last-cells must be 0 or more")
    notebook = read_notebook(source)
    err = Console(stderr=True)
    renderer = EventRenderer(Console())
    approve, hint = choose_approver(args.yes, renderer, err, yes_for=args.yes_for)
    renderer.refusal_hint = hint
    model = load_model(model_spec(args), args, err)
    interpreter = CodeInterpreter(workspace=args.workspace)
    try:
        with err.status(f"Running {source.name} in the sandbox ...", spinner="dots"):
            history = notebook_history(
                notebook,
                None if args.no_execute else interpreter,
                name=f"the notebook {source.name}",
                last_cells=args.last_cells,
            )
        with open_agent(args, model, approve, err, interpreter=interpreter) as agent:
            agent.load_messages(history.messages, kernel_state_kept=not args.no_execute)
            check_fits(agent.messages, args.question, model)
            ran_before = len(interpreter.history)
            start = len(agent.messages)
            result = agent.run(args.question, on_event=renderer.render)
            append_run(notebook, args.question, agent.messages[start + 1 :], interpreter.history[ran_before:])
        output = save_notebook(notebook, args.output)
    finally:
        interpreter.close()
    err.print(f"notebook saved to {output}", markup=False, highlight=False)
    return 0 if result.stopped == "answer" else 1
