"""``glm-agent notebook SESSION.jsonl -o OUT.ipynb``: a saved conversation as a Jupyter notebook.

Code the model ran becomes code cells with its observations as outputs; the user's and the
assistant's text become markdown cells (the interpreter package's export does the work).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from glm_agent.cli._agent import Subparsers, cli_errors

__all__ = ["add_command"]


def add_command(subparsers: Subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "notebook",
        help="turn a saved conversation (JSON Lines) into a Jupyter notebook",
        description="Turn a conversation saved with Agent.save / glm-agent run --save / chat's /save into a notebook.",
    )
    parser.add_argument("session", metavar="SESSION.jsonl", help="a conversation saved as JSON Lines")
    parser.add_argument("-o", "--output", metavar="OUT.ipynb", help="the notebook to write (default: SESSION.ipynb)")
    parser.set_defaults(handler=notebook_command)
    return parser


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
