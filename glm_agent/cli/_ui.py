"""The web UI's command-line options, shared by ``glm-agent web`` and ``glm-agent serve --ui``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from glm_agent._sizes import parse_size as _parse_size
from glm_agent.errors import GlmAgentError, UsageError

__all__ = [
    "add_ui_options",
    "add_allowed_host_option",
    "web_config",
    "parse_auth",
    "read_auth_file",
    "ui_login",
    "parse_size",
]


def parse_size(text: str) -> int:
    """``100MiB``, ``2GiB``, ``500MB``, ``1048576`` -> bytes (KiB/MiB/GiB are powers of 1024, KB/MB/GB of 1000)."""
    try:
        return _parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_auth(text: str) -> tuple[str, str]:
    """``USER:PASS`` -> (user, password); a clear error for anything else."""
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        raise GlmAgentError("--auth takes USER:PASS, both non-empty (e.g. --auth alice:s3cret)")
    return user.strip(), password


def read_auth_file(path: str) -> dict[str, str]:
    """Users from a file of ``USER:PASS`` lines (blank lines and ``#`` comments skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise GlmAgentError(f"--auth-file {path}: {exc.strerror or exc}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            user, password = parse_auth(line.rstrip("\r"))
        except GlmAgentError:
            raise GlmAgentError(f"--auth-file {path}, line {number}: write USER:PASS") from None
        users[user] = password
    if not users:
        raise GlmAgentError(f"--auth-file {path} names no users; write one USER:PASS per line")
    return users


def ui_login(args: argparse.Namespace, *, api_key: str | None = None) -> Any:
    """The UI's :class:`~glm_agent.web.Login` from ``--auth`` (repeatable) and ``--auth-file``; else the
    API key as the password (``serve --ui --api-key``); None for no login."""
    users: dict[str, str] = {}
    for text in args.auth or []:
        user, password = parse_auth(text)
        users[user] = password
    if getattr(args, "auth_file", None):
        users.update(read_auth_file(args.auth_file))
    if not users and not api_key:
        return None
    from glm_agent.web import Login

    return Login(users, api_key=api_key) if users else Login(api_key=api_key)


def add_allowed_host_option(parser: argparse._ActionsContainer) -> None:
    """``--allowed-host NAME`` (repeatable): a name besides the bound address that a request's ``Host`` may carry."""
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another name the server answers to (a reverse proxy's or DNS name; repeatable)",
    )


def add_ui_options(parser: argparse.ArgumentParser, *, tokenizer: bool = True, mcp: bool = True) -> None:
    """The UI's own options (shared with ``glm-agent serve --ui``, which has its own ``--tokenizer``)."""
    ui = parser.add_argument_group("web UI")
    if mcp:
        ui.add_argument("--mcp", metavar="FILE", help='MCP servers ({"mcpServers": ...}) whose tools join --tools')
    ui.add_argument(
        "--auth",
        action="append",
        metavar="USER:PASS",
        help="a user of the UI's login (repeatable; needed off loopback)",
    )
    ui.add_argument("--auth-file", metavar="FILE", help="users of the UI's login, one USER:PASS per line")
    add_allowed_host_option(ui)
    ui.add_argument("--gateway", metavar="URL", help="run kernels on a Jupyter Kernel Gateway (with --token)")
    ui.add_argument("--token", metavar="T", help="the gateway's token")
    if tokenizer:
        ui.add_argument("--tokenizer", metavar="PATH", help="tokenizer.model for the prompt view's token counts")
    ui.add_argument("--language", choices=("zh", "en"), default="zh", help="language of the interpreter prompt")
    ui.add_argument("--max-sessions", type=int, default=16, metavar="N", help="browser sessions at once (default 16)")
    ui.add_argument(
        "--max-sessions-per-client", type=int, metavar="N", help="sessions of one browser or login (default: half)"
    )
    ui.add_argument(
        "--idle-timeout", type=float, default=15.0, metavar="MIN", help="close idle sessions after MIN minutes (15)"
    )
    ui.add_argument(
        "--max-upload-size", type=parse_size, default=100 * 2**20, metavar="SIZE", help="per uploaded file (100MiB)"
    )
    ui.add_argument(
        "--max-session-files",
        type=parse_size,
        default=512 * 2**20,
        metavar="SIZE",
        help="a session's uploads waiting plus its images and exports (512MiB)",
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
    if args.max_sessions_per_client is not None and args.max_sessions_per_client < 1:
        raise UsageError("--max-sessions-per-client must be at least 1")
    if args.max_session_files < args.max_upload_size:
        raise UsageError("--max-session-files must be at least --max-upload-size")
    from glm_agent.tools import ToolRegistry, load_tools

    if tools is None:
        tools = load_tools(args.tools) if args.tools else ToolRegistry()
        if args.mcp:
            from glm_agent.mcp import connect_mcp

            connect_mcp(args.mcp, registry=tools)
    tokenizer = None
    if getattr(args, "tokenizer", None):
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
        max_sessions_per_client=args.max_sessions_per_client,
        idle_timeout=args.idle_timeout * 60,
        pool_size=args.pool_size,
        code_timeout=args.code_timeout,
        max_steps=args.max_steps,
        language=args.language,
        max_upload_bytes=args.max_upload_size,
        max_session_bytes=args.max_session_files,
        allowed_hosts=tuple(args.allowed_host),
    )
