"""The ``glm-agent`` command. Each subcommand registers itself in ``_build_parser``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm-agent", description="Agents, tools and a code interpreter for ChatGLM3.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from glm_agent.tools._command import add_tools_command

    add_tools_command(sub)
    from glm_agent.chatglm3._convert import add_convert_command

    add_convert_command(sub)
    from glm_agent._serve_command import add_serve_command

    add_serve_command(sub)
    from glm_agent._cli_chat import add_chat_command
    from glm_agent._cli_notebook import add_notebook_command
    from glm_agent._cli_run import add_run_command

    add_chat_command(sub)
    add_run_command(sub)
    add_notebook_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        code = int(handler(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
        return code
    except BrokenPipeError:  # `glm-agent tools ... | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
