"""``glm-agent serve``: the OpenAI-compatible server from the command line (logic in glm_agent.server)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from glm_agent._net import is_loopback
from glm_agent.cli._agent import Subparsers, add_local_model_arguments, add_trace_argument, local_model_options
from glm_agent.cli._ui import add_ui_options, ui_login, web_config
from glm_agent.errors import GlmAgentError

__all__ = ["add_command"]

logger = logging.getLogger(__name__)


def add_command(subparsers: Subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve a ChatGLM3 model (or any backend) as an OpenAI-compatible API on /v1.",
    )
    parser.add_argument(
        "--model", required=True, help="checkpoint dir, hub id, scripted:FILE.json or an http(s):// server"
    )
    parser.add_argument(
        "--tokenizer",
        help="tokenizer.model or checkpoint dir (default: the model's own; required with scripted: and "
        "http(s):// models, which bring none)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health")
    parser.add_argument(
        "--tools",
        nargs="+",
        default=[],
        metavar="FILE",
        help="tool modules for --mcp-path and --ui (never offered on /v1: a client gets calls only for its own tools)",
    )
    parser.add_argument(
        "--mcp",
        metavar="CONFIG.json",
        help='MCP servers whose tools (server__tool) join --tools ({"mcpServers": ...})',
    )
    parser.add_argument(
        "--mcp-path",
        metavar="PATH",
        help="also serve the --tools and --mcp tools as an MCP server (streamable HTTP) at PATH, e.g. /mcp",
    )
    parser.add_argument("--served-model-name", help="the model id clients send (default: the backend's name)")
    parser.add_argument(
        "--max-concurrency",
        type=int,
        help="generations at once (default: a local model's --max-batch, else 1); more wait in the queue",
    )
    parser.add_argument("--max-queue", type=int, default=32, help="requests waiting before 429 (default 32)")
    parser.add_argument("--context-length", type=int, help="refuse prompts longer than this many tokens")
    # defaults live in glm_agent.server (not imported here: the CLI works without the server extra)
    parser.add_argument("--max-request-bytes", type=int, help="larger request bodies get 413 (default 4 MiB: 4194304)")
    parser.add_argument(
        "--header-timeout", type=float, help="seconds a client may take to send a request's head, else 408 (default 10)"
    )
    parser.add_argument(
        "--body-timeout", type=float, help="seconds a client may take to send a request's body, else 408 (default 30)"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_local_model_arguments(parser)
    parser.add_argument("--ui", action="store_true", help="also serve the browser UI at /ui (needs the 'web' extra)")
    parser.add_argument("--code-interpreter", action="store_true", help="offer the UI's Code Interpreter mode")
    add_ui_options(parser, tokenizer=False, mcp=False)
    add_trace_argument(parser)
    parser.set_defaults(handler=run_serve)
    return parser


def _check_limits(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} is not a TCP port; give 0..65535 (0: any free port)")
    for flag, value in [
        ("--max-request-bytes", args.max_request_bytes),
        ("--header-timeout", args.header_timeout),
        ("--body-timeout", args.body_timeout),
        ("--max-concurrency", args.max_concurrency),
    ]:
        if value is not None and not value > 0:
            raise ValueError(f"{flag} must be positive, not {value}")
    if args.max_queue < 0:
        raise ValueError(f"--max-queue must be 0 or more, not {args.max_queue}")


def _given(**options: Any) -> dict[str, Any]:
    return {name: value for name, value in options.items() if value is not None}


def run_serve(args: argparse.Namespace) -> int:
    tools: Any = None
    try:
        _check_limits(args)
        if (args.tools or args.mcp) and not (args.mcp_path or args.ui):
            raise GlmAgentError(
                "--tools and --mcp serve tools through --mcp-path or --ui; /v1 offers a request only the tools "
                "it declares (its client runs them)"
            )
        if args.mcp_path and not args.mcp_path.startswith("/"):
            raise GlmAgentError(f"--mcp-path must start with '/', e.g. /mcp (got {args.mcp_path!r})")
        if args.mcp_path and not args.api_key and not is_loopback(args.host):
            raise GlmAgentError(
                f"refusing to serve --mcp-path on {args.host} without --api-key: anyone who reaches it could call "
                "every tool. Pass --api-key KEY, or bind to 127.0.0.1"
            )
        login = _ui_login(args)  # before the model loads: a refused bind or login fails at once
        from glm_agent.chatglm3.tokenizer import ChatGLM3Tokenizer
        from glm_agent.models import load_chat_model

        model = load_chat_model(args.model, **local_model_options(args))
        tokenizer = getattr(model, "tokenizer", None)
        if args.tokenizer:
            tokenizer = ChatGLM3Tokenizer.from_pretrained(args.tokenizer)
        if not isinstance(tokenizer, ChatGLM3Tokenizer):
            raise GlmAgentError(
                f"{args.model} brings no ChatGLM3 tokenizer; pass --tokenizer PATH (a tokenizer.model or checkpoint dir)"
            )
        if args.tools or args.mcp or args.mcp_path:
            from glm_agent.tools import load_tools

            tools = load_tools(args.tools)

        if args.mcp:
            from glm_agent.mcp import connect_mcp

            connect_mcp(args.mcp, registry=tools)
        from glm_agent.server import serve

        ui = _ui(args, model, tokenizer, tools)
    except (GlmAgentError, ValueError, OSError, ImportError) as exc:
        if tools is not None:
            tools.close()
        print(f"glm-agent serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        serve(
            model,
            tokenizer,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            tools=tools,
            api_key=args.api_key,
            model_name=args.served_model_name,
            max_concurrency=args.max_concurrency,
            max_queue=args.max_queue,
            context_length=args.context_length,
            mcp_path=args.mcp_path,
            allowed_hosts=tuple(args.allowed_host),
            **_given(
                max_request_bytes=args.max_request_bytes,
                head_timeout=args.header_timeout,
                body_timeout=args.body_timeout,
            ),
            ui=ui,
            ui_login=login,
        )
    except (GlmAgentError, ValueError, OSError) as exc:
        print(f"glm-agent serve: {exc}", file=sys.stderr)
        return 2
    finally:
        if tools is not None:
            tools.close()  # ends the MCP servers of --mcp
    return 0


def _ui_login(args: argparse.Namespace) -> Any:
    """The UI's login for ``--ui`` (``--auth``/``--auth-file``, else the ``--api-key`` as its password),
    checked against ``--host``; the UI's options without ``--ui`` are refused."""
    if not args.ui:
        if args.code_interpreter or args.auth or args.auth_file:
            raise GlmAgentError("--code-interpreter, --auth and --auth-file are options of the web UI; add --ui")
        return None
    try:
        from glm_agent.web import check_bind
    except ImportError as exc:
        raise GlmAgentError(f"--ui needs the 'web' extra ({exc}); pip install 'glm-agent[web]'") from None
    login = ui_login(args, api_key=args.api_key)
    check_bind(args.host, login)
    return login


def _ui(args: argparse.Namespace, model: Any, tokenizer: Any, tools: Any) -> Any:
    """The web UI's configuration for ``--ui`` (same model, same tools; scripted files replay per session)."""
    if not args.ui:
        return None
    from glm_agent.web import ModelSource

    models = ModelSource.from_spec(args.model) if args.model.startswith("scripted:") else ModelSource(model)
    config = web_config(args, models, tools=tools)
    config.tokenizer = config.tokenizer or tokenizer
    return config
