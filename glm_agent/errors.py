"""Exceptions of glm-agent. Each message says what went wrong and what to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "GlmAgentError",
    "ToolCallParseError",
    "CheckpointError",
    "ContextLengthError",
    "ModelError",
    "ToolDefinitionError",
    "ToolArgumentsError",
    "ArgumentProblem",
    "InterpreterError",
    "GatewayRefused",
    "MCPConfigError",
    "MCPConnectionError",
    "FormatError",
    "UsageError",
    "SessionLimitError",
    "SessionForbidden",
    "UploadRefused",
    "StoppedWhileWaiting",
]


class GlmAgentError(Exception):
    """Base class of every error glm-agent raises on purpose.

    ``result``: when ``Agent.run``/``arun`` raises it (the model failed), the run's partial
    ``RunResult`` (its events, calls and messages so far); otherwise None.
    """

    result: Any = None


class ToolCallParseError(GlmAgentError, ValueError):
    """A reply's call segment could not be parsed; the message is written for the model to act on.

    ``name`` is the call's metadata (tool name) and ``content`` the raw segment text.
    """

    def __init__(self, message: str, *, name: str = "", content: str = "") -> None:
        super().__init__(message)
        self.name = name
        self.content = content
        #: the whole parsed reply (segments, text, the calls that did parse), when known
        self.reply: object | None = None


class CheckpointError(GlmAgentError, OSError):
    """A checkpoint or tokenizer file is missing, unreadable or of the wrong kind."""


class ContextLengthError(GlmAgentError, ValueError):
    """The prompt plus the requested new tokens do not fit the model's context."""

    def __init__(
        self, message: str, *, prompt_tokens: int = 0, max_new_tokens: int = 0, context_length: int = 0
    ) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context_length = context_length


class ModelError(GlmAgentError, RuntimeError):
    """A model backend failed (server error, malformed response, generation failure)."""


class ToolDefinitionError(GlmAgentError, TypeError):
    """A function cannot become a tool (e.g. a parameter without a type hint)."""


@dataclass(frozen=True)
class ArgumentProblem:
    """One thing wrong with a call's arguments: which argument, and what to do about it."""

    argument: str
    message: str

    def __str__(self) -> str:
        return f"- {self.argument}: {self.message}"


class ToolArgumentsError(GlmAgentError, ValueError):
    """A call's arguments do not fit the tool's parameters; ``problems`` names each argument."""

    def __init__(self, tool_name: str, problems: list[ArgumentProblem]) -> None:
        self.tool_name = tool_name
        self.problems = problems
        lines = "\n".join(str(p) for p in problems)
        super().__init__(f"invalid arguments for tool {tool_name!r}:\n{lines}")


class InterpreterError(GlmAgentError, RuntimeError):
    """The code interpreter could not start or reach its kernel."""


class GatewayRefused(InterpreterError):
    """The Kernel Gateway answered with an HTTP error (so it is reachable)."""


class MCPConfigError(GlmAgentError, ValueError):
    """An MCP configuration (``{"mcpServers": ...}``) is malformed or names an unset variable."""


class MCPConnectionError(GlmAgentError, ConnectionError):
    """An MCP server could not be started, reached or initialised in time."""


class FormatError(GlmAgentError, ValueError):
    """A message, tool or argument cannot be mapped between ChatGLM3's and OpenAI's shapes; ``param`` names where."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UsageError(GlmAgentError):
    """Command-line arguments that cannot work together (reported in one line, exit code 2)."""


class SessionLimitError(GlmAgentError):
    """The web UI has every session slot taken; the message says to try again later."""


class SessionForbidden(GlmAgentError):
    """A request of the web UI for a session that another client (browser, or login) opened."""


class UploadRefused(GlmAgentError):
    """An upload that may not reach a web session: not this client's, too big, or not a regular file."""


class StoppedWhileWaiting(ModelError):
    """The user stopped a generation that was still waiting for its turn on a shared model."""
