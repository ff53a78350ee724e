"""``glm-agent mcp FILE_OR_DIR... [--transport stdio|http]``: serve tool modules as an MCP server.

The logic lives in :mod:`glm_agent.mcp`; this module reads the options. Over stdio nothing
but the protocol is written to stdout; errors before serving are one line on stderr (exit 2).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from glm_agent.cli._ui import add_allowed_host_option
from glm_agent.errors import GlmAgentError

__all__ = ["add_command"]


def add_command(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "mcp",
        help="serve tools from .py files or folders as an MCP server (stdio or streamable HTTP)",
        description="Serve the tools in .py files, folders of them or module paths as a Model Context Protocol "
        "server, with their JSON Schemas. Errors come back as is_error results with the message; "
        "images and bytes as MCP image or resource content.",
    )
    parser.add_argument("sources", nargs="+", metavar="FILE_OR_DIR", help="a .py file, a folder or a module path")
    parser.add_argument("--transport", choices=("stdio", "http"), default="stdio", help="default: stdio")
    parser.add_argument(
        "--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1: this machine only; others need --api-key)"
    )
    parser.add_argument("--api-key", metavar="KEY", help="HTTP: require 'Authorization: Bearer KEY' on every request")
    add_allowed_host_option(parser)
    parser.add_argument("--port", type=int, default=8001, help="HTTP port (default 8001)")
    parser.add_argument("--path", default="/mcp", help="HTTP endpoint path (default /mcp)")
    parser.add_argument("--name", default="glm-agent", help="the server name shown to clients")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="time limit per tool call (default: none)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(handler=run_mcp_command)
    return parser


def run_mcp_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from glm_agent._net import is_loopback
    from glm_agent._shutdown import sigterm_exits

    if args.transport == "http" and not is_loopback(args.host) and not args.api_key:
        print(
            f"glm-agent mcp: error: refusing to serve MCP on {args.host} without --api-key: anyone who reaches it "
            "could call every tool. Pass --api-key KEY (clients send 'Authorization: Bearer KEY'), or bind to "
            "127.0.0.1 and use an SSH tunnel",
            file=sys.stderr,
        )
        return 2
    try:
        from glm_agent.mcp import mcp_http_app, serve_mcp_stdio
        from glm_agent.tools import load_tools

        registry = load_tools(args.sources, default_timeout=args.timeout, max_observation_chars=None)
    except ImportError as exc:
        print(f"glm-agent mcp: error: {exc}; install the extra: pip install 'glm-agent[mcp]'", file=sys.stderr)
        return 2
    except (GlmAgentError, ValueError) as exc:
        print(f"glm-agent mcp: error: {exc}", file=sys.stderr)
        return 2
    try:
        with sigterm_exits():  # SIGTERM (systemd, docker stop) cleans up as Ctrl-C does
            if args.transport == "stdio":
                import anyio

                anyio.run(lambda: serve_mcp_stdio(registry, name=args.name))
            else:
                import uvicorn

                app = mcp_http_app(
                    registry,
                    path=args.path,
                    host=args.host,
                    name=args.name,
                    api_key=args.api_key,
                    allowed_hosts=args.allowed_host,
                )
                print(f"serving {len(registry)} tools on http://{args.host}:{args.port}{args.path}", file=sys.stderr)
                uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    except KeyboardInterrupt:
        return 130
    finally:
        registry.close()
    return 0
