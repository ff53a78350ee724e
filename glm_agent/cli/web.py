"""``glm-agent web``: the browser UI (Chat / Tools / Code Interpreter) on Gradio; logic in glm_agent.web."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from glm_agent.cli._agent import cli_errors, model_spec
from glm_agent.errors import UsageError

__all__ = ["add_command", "add_ui_options", "web_config"]


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
    parser.add_argument("--auth", metavar="USER:PASS", help="require this login (needed for a non-loopback --host)")
    add_ui_options(parser)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(handler=web_command)
    return parser


def add_ui_options(parser: argparse.ArgumentParser, *, tokenizer: bool = True, mcp: bool = True) -> None:
    """The UI's own options (shared with ``glm-agent serve --ui``, which has its own ``--tokenizer``)."""
    ui = parser.add_argument_group("web UI")
    if mcp:
        ui.add_argument("--mcp", metavar="FILE", help='MCP servers ({"mcpServers": ...}) whose tools join --tools')
    ui.add_argument("--gateway", metavar="URL", help="run kernels on a Jupyter Kernel Gateway (with --token)")
    ui.add_argument("--token", metavar="T", help="the gateway's token")
    if tokenizer:
        ui.add_argument("--tokenizer", metavar="PATH", help="tokenizer.model for the prompt view's token counts")
    ui.add_argument("--language", choices=("zh", "en"), default="zh", help="language of the interpreter prompt")
    ui.add_argument("--max-sessions", type=int, default=16, metavar="N", help="browser sessions at once (default 16)")
    ui.add_argument(
        "--idle-timeout", type=float, default=15.0, metavar="MIN", help="close idle sessions after MIN minutes (15)"
    )
    ui.add_argument("--max-steps", type=int, default=10, metavar="N", help="model turns per question (default 10)")
    ui.add_argument("--code-timeout", type=float, default=120.0, metavar="S", help="seconds per code run (120)")
    ui.add_argument("--pool-size", type=int, default=2, metavar="N", help="kernels kept started (default 2)")


def web_config(args: argparse.Namespace, models: Any, *, tools: Any = None) -> Any:
    """The :class:`~glm_agent.web.WebConfig` for parsed options (tools and MCP servers loaded here,
    unless ``tools``, a registry already loaded, is given)."""
    from glm_agent.web import WebConfig

    if args.gateway and not args.code_interpreter:
        raise UsageError("--gateway runs the code interpreter's kernels; add --code-interpreter")
    if args.max_sessions < 1 or args.idle_timeout <= 0 or args.max_steps < 1 or args.pool_size < 1:
        raise UsageError("--max-sessions, --max-steps and --pool-size must be at least 1, --idle-timeout above 0")
    from glm_agent.tools import ToolRegistry, load_tools

    if tools is None:
        tools = load_tools(args.tools) if args.tools else ToolRegistry()
        if args.mcp:
            from glm_agent.mcp import connect_mcp

            connect_mcp(args.mcp, registry=tools)
    tokenizer = None
    if args.tokenizer:
        from glm_agent.chatglm3 import ChatGLM3Tokenizer

        tokenizer = ChatGLM3Tokenizer.from_pretrained(args.tokenizer)
    return WebConfig(
        models,
        tools=tools,
        code_interpreter=args.code_interpreter,
        gateway=args.gateway,
        token=args.token,
        tokenizer=tokenizer,
        max_sessions=args.max_sessions,
        idle_timeout=args.idle_timeout * 60,
        pool_size=args.pool_size,
        code_timeout=args.code_timeout,
        max_steps=args.max_steps,
        language=args.language,
    )


@cli_errors("web")
def web_command(args: argparse.Namespace) -> int:
    try:
        from glm_agent.web import ModelSource, check_bind, parse_auth, serve_web
    except ImportError as exc:
        raise UsageError(f"the web UI needs the 'web' extra ({exc}); pip install 'glm-agent[web]'") from None

    auth = parse_auth(args.auth)
    check_bind(args.host, auth)  # before loading anything
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    config = web_config(args, ModelSource.from_spec(model_spec(args)))
    try:
        serve_web(config, host=args.host, port=args.port, auth=auth, log_level=args.log_level)
    finally:
        config.tools.close()
    return 0
