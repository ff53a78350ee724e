"""``glm-agent chat``: talk with the agent at the terminal.

Each line is a question; the answer streams, with tool calls, results, code and outputs set
apart. Without ``--yes`` every call is shown and waits for a y/n. Ctrl-C while the agent works
stops it (generation or code) and returns to the prompt; Ctrl-C or Ctrl-D at the prompt exits.
The kernel, if one was started, is shut down on exit.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from glm_agent.cli._agent import Subparsers, add_agent_options, cli_errors

__all__ = ["add_command", "SLASH_HELP"]

SLASH_HELP = {
    "/reset": "start a new conversation (and a fresh kernel)",
    "/save FILE": "save the conversation as JSON Lines",
    "/notebook FILE.ipynb": "save the session as a Jupyter notebook",
    "/help": "show these commands",
    "/exit": "leave (also Ctrl-D, or Ctrl-C at the prompt)",
}
PROMPT = "[bold green]you>[/] "


def add_command(subparsers: Subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "chat",
        help="talk with the agent at the terminal",
        description="Talk with the agent. Slash commands: "
        + "; ".join(f"{k}: {v}" for k, v in SLASH_HELP.items())
        + ". Every call waits for your y/n unless you pass --yes.",
    )
    add_agent_options(parser)
    parser.add_argument(
        "--resume",
        metavar="FILE.jsonl",
        help="continue a saved conversation (/save, Agent.save, or the web UI's transcript download)",
    )
    parser.set_defaults(handler=chat_command)
    return parser


@cli_errors("chat")
def chat_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from glm_agent.cli._agent import load_model, model_spec, open_agent
    from glm_agent.cli._approve import choose_approver
    from glm_agent.cli._render import TEMPORARY_IMAGES
    from glm_agent.messages import load_jsonl
    from glm_agent.render import EventRenderer

    console = Console()
    renderer = EventRenderer(console)
    approve, _ = choose_approver(args.yes, renderer, console, yes_for=args.yes_for, interactive=True)
    history = load_jsonl(args.resume) if args.resume else None  # a bad file fails before the model loads
    model = load_model(model_spec(args), args, console)
    if args.code_interpreter and not args.workspace:
        renderer.image_note = TEMPORARY_IMAGES
    with open_agent(args, model, approve, console) as agent:
        if history is not None:
            agent.load_messages(history)
        _welcome(console, agent, model)
        if history is not None:
            turns = sum(m.role == "user" for m in agent.messages)
            console.print(
                f"resumed {args.resume}: {turns} question{'s' * (turns != 1)} so far", style="dim", markup=False
            )
        _loop(console, renderer, agent, fresh_kernel_on_reset=bool(args.workspace))
    return 0


def _welcome(console: Any, agent: Any, model: Any) -> None:
    tools = ", ".join(agent.tools.names) if len(agent.tools) else "none"
    code = "on" if agent.code_enabled else "off"
    console.print(f"model: {getattr(model, 'name', model)}   tools: {tools}   code interpreter: {code}", markup=False)
    console.print("Type a question, or /help. Ctrl-C stops the agent; Ctrl-D leaves.", style="dim", highlight=False)


def _loop(console: Any, renderer: Any, agent: Any, *, fresh_kernel_on_reset: bool = False) -> None:
    while True:
        try:
            line = console.input(PROMPT)
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not _slash(console, agent, line, fresh_kernel_on_reset):
                return
            continue
        _answer(renderer, agent, line)


def _answer(renderer: Any, agent: Any, question: str) -> None:
    stream = agent.stream(question)
    try:
        for event in stream:
            renderer.render(event)
    except KeyboardInterrupt:
        stream.close()  # stops generation or code and leaves the conversation well formed
        renderer.interrupted()
    finally:
        renderer.stop_waiting()
        stream.close()


def _slash(console: Any, agent: Any, line: str, fresh_kernel_on_reset: bool = False) -> bool:
    """Run one slash command; False means leave."""
    from glm_agent.errors import GlmAgentError

    command, _, rest = line.partition(" ")
    rest = rest.strip()
    actions: dict[str, Callable[[], str | None]] = {
        "/reset": lambda: _reset(agent, fresh_kernel_on_reset),
        "/save": lambda: f"conversation saved to {agent.save(_needs(rest, '/save FILE'))}",
        "/notebook": lambda: f"notebook saved to {agent.save_notebook(_needs(rest, '/notebook FILE.ipynb'))}",
        "/help": lambda: "\n".join(f"  {k:<22} {v}" for k, v in SLASH_HELP.items()),
    }
    if command in ("/exit", "/quit"):
        return False
    action = actions.get(command)
    if action is None:
        console.print(f"unknown command {command}; /help lists them", style="yellow", markup=False)
        return True
    try:
        message = action()
    except (GlmAgentError, OSError, ValueError) as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        return True
    if message:
        console.print(message, style="dim", markup=False, highlight=False)
    return True


def _reset(agent: Any, fresh_kernel: bool) -> str:
    agent.reset()  # restarts a kernel the agent started itself
    if fresh_kernel and agent.interpreter is not None:
        agent.interpreter.restart()  # the --workspace kernel: same folder, fresh state
    return "new conversation"


def _needs(argument: str, usage: str) -> str:
    if not argument:
        raise ValueError(f"usage: {usage}")
    return argument
