"""The ``glm-agent`` command: one module per subcommand, each with ``add_command(subparsers)``.

Adding a subcommand is one module here plus its name in ``COMMANDS``. The shared parts are
private: ``_agent`` (model/agent options, error handling), ``_render`` (events on the terminal),
``_approve`` (the approval prompt).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

__all__ = ["main", "COMMANDS"]

#: The subcommands in the order ``--help`` lists them; each names a module ``glm_agent.cli.<name>``.
COMMANDS = ("chat", "run", "tools", "notebook", "convert", "serve", "web", "mcp")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm-agent", description="Agents, tools and a code interpreter for ChatGLM3.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"glm_agent.cli.{name}").add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``glm-agent`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = _build_parser()
    from glm_agent.cli.notebook import route

    args = parser.parse_args(route(list(sys.argv[1:] if argv is None else argv)))
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        shutdown = _tracing(args)
    except Exception as exc:  # a missing otel extra, an unwritable --trace file
        print(f"glm-agent {args.command}: {exc}", file=sys.stderr)
        return 2
    try:
        code = int(handler(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
        return code
    except BrokenPipeError:  # `glm-agent tools ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        shutdown()  # the last spans reach the file or the collector


def _tracing(args: argparse.Namespace) -> Callable[[], None]:
    """``--trace FILE`` and the standard ``OTEL_EXPORTER_OTLP_*`` variables, for the commands that run
    agents or models (those with ``--trace``); a no-op when neither is given."""
    if not hasattr(args, "trace"):
        return lambda: None
    from glm_agent.telemetry import configure_tracing

    return configure_tracing(args.trace)
