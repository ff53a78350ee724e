"""``glm-agent run "question" ...``: answer one question (or a few, in one conversation) and exit.

Exit status: 0 when every question got an answer, 1 when a run stopped without one
(``max_steps``, a model failure), 2 for errors before running (bad options, no weights,
a broken tool file), 3 when every question was answered but calls were refused for want of a
terminal to ask (pass ``--yes`` or ``--yes-for TOOL``), 130 when interrupted. ``--json`` prints each event's ``to_dict()``
as one JSON line on stdout (labels and questions go to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from glm_agent.cli._agent import Subparsers, add_agent_options, cli_errors

__all__ = ["add_command"]


def add_command(subparsers: Subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "run",
        help="answer a question with the agent and exit (--json: events as JSON Lines)",
        description="Answer one question, or several in one conversation, and exit. Tool calls and code "
        "run only with --yes (or --yes-for TOOL) or after a yes at the terminal (Enter is no); without a "
        "terminal they are refused and the command exits with 3. Exit codes: 0 answered, 1 no answer "
        "(the model failed, max steps), 2 bad usage, 3 calls refused for want of a terminal, 130 interrupted.",
    )
    parser.add_argument("questions", nargs="+", metavar="QUESTION", help="asked in order, in one conversation")
    add_agent_options(parser)
    parser.add_argument("--json", action="store_true", help="print the event stream as JSON Lines on stdout")
    parser.add_argument(
        "--file",
        dest="files",
        action="append",
        default=[],
        metavar="FILE",
        help="upload a file with the first question",
    )
    parser.add_argument("--save", metavar="SESSION.jsonl", help="save the conversation as JSON Lines")
    parser.add_argument("--notebook", metavar="OUT.ipynb", help="save the session as a Jupyter notebook")
    parser.set_defaults(handler=run_command)
    return parser


@cli_errors("run")
def run_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from glm_agent.cli._agent import load_model, model_spec, open_agent
    from glm_agent.cli._approve import choose_approver
    from glm_agent.cli._render import TEMPORARY_IMAGES
    from glm_agent.render import EventRenderer

    for file in args.files:
        if not Path(file).is_file():
            raise FileNotFoundError(f"--file {file}: no such file")
    err = Console(stderr=True)
    out = err if args.json else Console()
    renderer = EventRenderer(out)
    approve, hint = choose_approver(args.yes, renderer, err if args.json else out, yes_for=args.yes_for)
    renderer.refusal_hint = hint
    model = load_model(model_spec(args), args, err)
    if args.code_interpreter and not args.workspace:
        renderer.image_note = TEMPORARY_IMAGES
    with open_agent(args, model, approve, err) as agent:
        try:
            status = _ask_all(args, agent, renderer)
            if args.save:
                agent.save(args.save)
                err.print(f"conversation saved to {args.save}", markup=False, highlight=False)
            if args.notebook:
                path = agent.save_notebook(args.notebook)
                err.print(f"notebook saved to {path}", markup=False, highlight=False)
        except KeyboardInterrupt:
            err.print("[interrupted]", style="yellow", markup=False)
            return 130
    if approve.unasked and status == 0:
        err.print(
            f"{approve.unasked} call(s) were refused: {hint}; the answer above was made without them",
            style="yellow",
            markup=False,
        )
        return 3
    return status


def _ask_all(args: argparse.Namespace, agent: Any, renderer: Any) -> int:
    """Ask the questions in order; 1 as soon as one ends without an answer."""
    for i, question in enumerate(args.questions):
        if not args.json and len(args.questions) > 1:
            renderer.note(f"> {question}", style="bold")
        if not _ask(agent, question, args.files if i == 0 else (), renderer, args.json):
            return 1
    return 0


def _ask(agent: Any, question: str, files: Any, renderer: Any, as_json: bool) -> bool:
    """Run one question, showing or printing its events; True when it ended with an answer."""
    answered = False
    stream = agent.stream(question, files=files)
    try:
        for event in stream:
            if as_json:
                sys.stdout.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
                sys.stdout.flush()
            else:
                renderer.render(event)
            answered = answered or event.type == "final_answer"
    finally:
        renderer.stop_waiting()
        stream.close()  # on Ctrl-C: stops generation or code, answers pending calls
    return answered
