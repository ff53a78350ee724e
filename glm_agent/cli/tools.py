"""``glm-agent tools FILE_OR_DIR... [--format chatglm3|openai]``: print the tools' schemas as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from glm_agent.cli._agent import Subparsers
from glm_agent.errors import GlmAgentError

__all__ = ["add_command"]


def add_command(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register the ``tools`` subcommand on an ``add_subparsers()`` object."""
    parser = subparsers.add_parser(
        "tools",
        help="print the JSON schemas of the tools in .py files, folders or modules",
        description="Load tools from .py files, folders of them or dotted module paths and print their schemas.",
    )
    parser.add_argument("sources", nargs="+", metavar="FILE_OR_DIR", help="a .py file, a folder or a module path")
    parser.add_argument(
        "--format", choices=("chatglm3", "openai"), default="chatglm3", help="schema shape (default: chatglm3)"
    )
    parser.set_defaults(handler=run_tools_command)
    return parser


def run_tools_command(args: argparse.Namespace) -> int:
    """Print the schemas; a loading error is one line on stderr and exit code 2."""
    from glm_agent.tools import load_tools

    try:
        registry = load_tools(args.sources)
    except GlmAgentError as exc:
        print(f"glm-agent tools: error: {exc}", file=sys.stderr)
        return 2
    schemas = registry.openai_schemas() if args.format == "openai" else registry.chatglm3_schemas()
    print(json.dumps(schemas, indent=2, ensure_ascii=False))
    return 0
