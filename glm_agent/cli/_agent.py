"""What ``glm-agent chat`` and ``glm-agent run`` share: options, model loading, building the agent, errors."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

from glm_agent.cli._ui import parse_size
from glm_agent.errors import GlmAgentError, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from glm_agent.agent import Agent
    from glm_agent.models.base import ChatModel

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_ENV",
    "add_agent_options",
    "add_trace_argument",
    "add_local_model_arguments",
    "local_model_options",
    "model_spec",
    "load_model",
    "open_agent",
    "is_scripted",
    "cli_errors",
    "UsageError",
    "Subparsers",
]

logger = logging.getLogger(__name__)

MODEL_ENV = "GLM_AGENT_MODEL"
PROMPT_CACHE_ENV = "GLM_AGENT_PROMPT_CACHE"  # read by LocalModel itself
DEFAULT_MODEL = "THUDM/chatglm3-6b"

Handler = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # what ``add_command`` receives


def add_quantize_arguments(parser: argparse._ActionsContainer) -> None:
    """``--quantize int8|int4`` and ``--group-size N`` (shared by every command that loads weights)."""
    parser.add_argument(
        "--quantize",
        choices=("int8", "int4"),
        help="int8/int4 linear weights (the output layer int8), quantized tensor by tensor; runs on CPU kernels",
    )
    parser.add_argument(
        "--group-size",
        type=int,
        default=128,
        choices=(32, 64, 128, 256),
        help="int4: inputs per scale and zero (default 128)",
    )


def add_local_model_arguments(parser: argparse._ActionsContainer) -> None:
    """Quantization and the KV cache's memory and disk options (every command that runs local weights)."""
    add_quantize_arguments(parser)
    parser.add_argument(
        "--kv-cache-size",
        type=_size_or_zero,
        metavar="SIZE",
        help="memory for the keys and values of every conversation, working buffer included; least recently "
        "used prefixes go first (default 1GiB; 0: the last conversation only)",
    )
    parser.add_argument(
        "--prompt-cache",
        metavar="DIR",
        help=f"keep finished prompt prefixes (the system prompt with its tools, finished turns) on disk, so a new "
        f"process starts from them (default: ${PROMPT_CACHE_ENV}, else off)",
    )
    parser.add_argument(
        "--prompt-cache-size",
        type=parse_size,
        metavar="SIZE",
        help="the prompt cache's size cap on disk; least recently used files go first (default 4GiB)",
    )
    parser.add_argument(
        "--max-batch",
        type=_positive,
        metavar="N",
        help="conversations the local engine decodes together, one token each per step (default 8)",
    )
    parser.add_argument(
        "--share-prefill",
        action="store_true",
        default=None,
        help="prompts that arrive at once are prefilled together and then decode together: a burst is through "
        "sooner, its first prompt answers later (default: in the order they came)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _size_or_zero(text: str) -> int:
    return 0 if text.strip() == "0" else parse_size(text)


def local_model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``LocalModel.from_pretrained`` options given on the command line (none for unset flags)."""
    options: dict[str, Any] = {}
    if getattr(args, "quantize", None):
        options["quantize"] = args.quantize
        options["group_size"] = args.group_size
    for flag, option in (
        ("kv_cache_size", "kv_cache_bytes"),
        ("prompt_cache", "prompt_cache_dir"),
        ("prompt_cache_size", "prompt_cache_bytes"),
        ("max_batch", "max_batch"),
        ("share_prefill", "share_prefill"),
    ):
        if getattr(args, flag, None) is not None:
            options[option] = getattr(args, flag)
    return options


def add_trace_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--trace FILE``: the run's spans as OTLP JSON lines (needs the otel extra)."""
    parser.add_argument(
        "--trace",
        metavar="FILE",
        help="write OpenTelemetry spans (GenAI conventions) to FILE as OTLP JSON lines; nothing is sent anywhere "
        "(needs glm-agent[otel]; OTEL_EXPORTER_OTLP_ENDPOINT sends them to a collector instead or as well)",
    )


def add_agent_options(parser: argparse.ArgumentParser) -> None:
    """Model, tools, code interpreter, prompt, sampling and approval options."""
    parser.add_argument(
        "--model",
        metavar="PATH|HUB_ID",
        help=f"a checkpoint folder, a Hugging Face id in the local cache, an OpenAI-compatible server URL "
        f"(http://...), or scripted:FILE.json "
        f"(default: ${MODEL_ENV}, else {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--tools",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE_OR_DIR",
        help="tools from .py files, folders of them or module paths (repeatable)",
    )
    parser.add_argument(
        "--mcp",
        metavar="CONFIG.json",
        help='MCP servers whose tools the agent may call, as server__tool ({"mcpServers": ...}, ${VAR} expanded)',
    )
    parser.add_argument("--code-interpreter", action="store_true", help="let the model run Python in a Jupyter kernel")
    parser.add_argument(
        "--workspace",
        metavar="DIR",
        help="the kernel's folder (the code sees /mnt/data); kept, with the images (default: temporary)",
    )
    parser.add_argument(
        "--system", metavar="TEXT", help="system prompt (default: ChatGLM3's official one for the mode)"
    )
    parser.add_argument(
        "--language", choices=("zh", "en"), default="zh", help="language of the code-interpreter prompt"
    )
    parser.add_argument("--max-steps", type=int, default=10, metavar="N", help="model turns per question (default: 10)")
    parser.add_argument("-y", "--yes", action="store_true", help="run every tool call and code without asking")
    parser.add_argument(
        "--yes-for",
        action="append",
        default=[],
        metavar="TOOL",
        help="run this tool's calls without asking (repeatable); others are asked, or refused without a terminal",
    )
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--temperature", type=float, metavar="T", help="0 means greedy (default: 0.8)")
    sampling.add_argument("--top-p", type=float, metavar="P")
    sampling.add_argument("--top-k", type=int, metavar="K")
    sampling.add_argument("--max-new-tokens", type=int, metavar="N")
    sampling.add_argument("--repetition-penalty", type=float, metavar="R")
    sampling.add_argument("--seed", type=int)
    local = parser.add_argument_group("local weights")
    local.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: the backend's choice)")
    local.add_argument("--dtype", help="e.g. bfloat16, float16, float32 (default: the backend's choice)")
    local.add_argument("--allow-download", action="store_true", help="let a hub id download missing weights")
    add_local_model_arguments(local)
    add_trace_argument(parser)


def _mcp_config(path: str | None) -> str | None:
    """``--mcp``: the config file; a missing mcp extra is an actionable error."""
    if path is None:
        return None
    try:
        import glm_agent.mcp  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"--mcp needs the mcp extra: pip install 'glm-agent[mcp]' ({exc})") from None
    return path


def model_spec(args: argparse.Namespace) -> str:
    """``--model``, else ``$GLM_AGENT_MODEL``, else the ChatGLM3-6B hub id (resolved in the local cache)."""
    return args.model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def _generation(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from glm_agent.models.base import GenerationParams

    chosen = {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "max_new_tokens": args.max_new_tokens,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
    }
    try:
        return GenerationParams.of(None, **chosen)
    except ValidationError as exc:
        problems = "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"bad sampling option ({problems})") from None


def load_model(spec: str, args: argparse.Namespace, console: Console) -> ChatModel:
    """Load the model with a spinner on the console; a missing extra becomes an actionable error."""
    from glm_agent.models import load_chat_model

    options: dict[str, Any] = {k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v is not None}
    if args.allow_download:
        options["allow_download"] = True
    options.update(local_model_options(args))
    with console.status(f"Loading model [bold]{spec}[/] ...", spinner="dots"):
        try:
            model: ChatModel = load_chat_model(spec, **options)
            return model
        except ModuleNotFoundError as exc:
            raise UsageError(
                f"cannot load {spec}: {exc}; local weights need the 'local' extra: pip install 'glm-agent[local]'"
            ) from None


def is_scripted(model: Any) -> bool:
    """True for a model that replays prepared replies instead of generating them."""
    from glm_agent.models.scripted import ScriptedModel

    return isinstance(model, ScriptedModel)


@contextlib.contextmanager
def open_agent(
    args: argparse.Namespace,
    model: ChatModel,
    approve: Callable[[Any], bool] | None,
    console: Console,
    interpreter: Any = None,
) -> Iterator[Agent]:
    """An Agent from the command line's tools, interpreter, prompt and sampling options; closed on exit.

    With ``--workspace DIR`` the kernel starts now, in DIR, and what the code writes (images
    included) stays there; otherwise a kernel starts on the first code call, in a temporary
    folder removed on exit. ``interpreter``: a code interpreter of the caller's (not closed here).
    """
    from glm_agent.agent import Agent
    from glm_agent.tools import load_tools

    if args.max_steps < 1:
        raise UsageError("--max-steps must be at least 1")
    if args.workspace and not args.code_interpreter:
        raise UsageError("--workspace is the code interpreter's folder; add --code-interpreter")
    generation = _generation(args)
    tools = load_tools(args.tools) if args.tools else None
    owned = interpreter is None and bool(args.workspace)
    if interpreter is None:
        interpreter = True if args.code_interpreter else None
    if owned:
        from glm_agent.interpreter import CodeInterpreter

        with console.status("Starting the code interpreter ...", spinner="dots"):
            interpreter = CodeInterpreter(workspace=args.workspace)
    starting: Any = console.status("Starting MCP servers ...", spinner="dots") if args.mcp else contextlib.nullcontext()
    try:
        with starting:
            agent = Agent(
                model,
                tools=tools,
                code_interpreter=interpreter,
                system=args.system,
                max_steps=args.max_steps,
                approve=approve,
                language=args.language,
                generation=generation,
                mcp=_mcp_config(args.mcp),
            )
    except BaseException:
        if owned:
            interpreter.close()
        raise
    try:
        if is_scripted(model):  # say so before anything is shown as the model's words
            from glm_agent.cli._render import scripted_banner

            console.print(scripted_banner(model), style="bold yellow", markup=False, highlight=False, soft_wrap=True)
        yield agent
    finally:
        agent.close()  # shuts down a kernel the agent started
        if owned:
            interpreter.close()


def cli_errors(command: str) -> Callable[[Handler], Handler]:
    """Turn our own errors (and a few plain ones users cause) into one line on stderr and exit code 2.

    Ctrl-C outside a run (while a model loads) ends with exit code 130 and no traceback.
    """

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def run(args: argparse.Namespace) -> int:
            try:
                return handler(args)
            except (GlmAgentError, FileNotFoundError, IsADirectoryError, PermissionError, ValueError) as exc:
                logger.debug("glm-agent %s failed", command, exc_info=True)
                print(f"glm-agent {command}: error: {_one_line(exc)}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:  # e.g. while a model loads
                print(f"glm-agent {command}: interrupted", file=sys.stderr)
                return 130

        return run

    return wrap


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split()) if len(text) < 2000 else " ".join(text[:2000].split()) + " ..."
