"""``glm-agent web``: the browser UI (Chat / Tools / Code Interpreter) on Gradio; logic in glm_agent.web."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from glm_agent.cli._agent import (
    add_local_model_arguments,
    add_trace_argument,
    cli_errors,
    local_model_options,
    model_spec,
)
from glm_agent.cli._ui import add_ui_options, ui_login, web_config
from glm_agent.errors import UsageError

__all__ = ["add_command"]


def add_command(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "web",
        help="the browser UI: chat, tools and code interpreter, one kernel per tab",
        description="Serve ChatGLM3's composite demo (Chat, Tools, Code Interpreter) in the browser. Every tab "
        "gets its own agent and kernel; the model is shared and generations queue. Binds to 127.0.0.1; "
        "another --host needs --auth.",
    )
    parser.add_argument(
        "--model",
        metavar="SPEC",
        help="checkpoint folder, hub id in the local cache, http(s):// server, or scripted:FILE.json "
        "(replayed from its first reply in every session) (default: $GLM_AGENT_MODEL, else THUDM/chatglm3-6b)",
    )
    parser.add_argument(
        "--tools", nargs="+", action="extend", default=[], metavar="FILE_OR_DIR", help="tool modules (repeatable)"
    )
    parser.add_argument("--code-interpreter", action="store_true", help="offer the Code Interpreter mode")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    add_ui_options(parser)
    add_local_model_arguments(parser.add_argument_group("local weights"))
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_trace_argument(parser)
    parser.set_defaults(handler=web_command)
    return parser


@cli_errors("web")
def web_command(args: argparse.Namespace) -> int:
    try:
        from glm_agent.web import ModelSource, check_bind, serve_web
    except ImportError as exc:
        raise UsageError(f"the web UI needs the 'web' extra ({exc}); pip install 'glm-agent[web]'") from None

    login = ui_login(args)
    check_bind(args.host, login)  # before loading anything
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    config = web_config(args, ModelSource.from_spec(model_spec(args), **local_model_options(args)))
    try:
        serve_web(config, host=args.host, port=args.port, login=login, log_level=args.log_level)
    finally:
        config.tools.close()
    return 0
