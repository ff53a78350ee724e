"""glm-agent: agents, typed tools and a Jupyter code interpreter for ChatGLM3."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from glm_agent._version import __version__
from glm_agent.errors import (
    CheckpointError,
    ContextLengthError,
    GlmAgentError,
    InterpreterError,
    ModelError,
    ToolArgumentsError,
    ToolCallParseError,
    ToolDefinitionError,
)
from glm_agent.messages import (
    AssistantMessage,
    CodeCall,
    ObservationMessage,
    SystemMessage,
    ToolCall,
    UserMessage,
)

if TYPE_CHECKING:
    from glm_agent.agent import Agent, RunResult
    from glm_agent.interpreter import CodeInterpreter, ExecutionResult
    from glm_agent.tools import Tool, ToolRegistry, ToolResult, tool


# Public names that live in heavier modules are imported on first use.
_LAZY = {
    "tool": "glm_agent.tools",
    "Tool": "glm_agent.tools",
    "ToolRegistry": "glm_agent.tools",
    "ToolResult": "glm_agent.tools",
    "Agent": "glm_agent.agent",
    "RunResult": "glm_agent.agent",
    "CodeInterpreter": "glm_agent.interpreter",
    "ExecutionResult": "glm_agent.interpreter",
}

__all__ = [
    "tool",
    "Tool",
    "ToolRegistry",
    "ToolResult",
    "Agent",
    "RunResult",
    "CodeInterpreter",
    "ExecutionResult",
    "AssistantMessage",
    "CodeCall",
    "ObservationMessage",
    "SystemMessage",
    "ToolCall",
    "UserMessage",
    "GlmAgentError",
    "ToolCallParseError",
    "CheckpointError",
    "ContextLengthError",
    "ModelError",
    "ToolDefinitionError",
    "ToolArgumentsError",
    "InterpreterError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'glm_agent' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext glm_agent``: the ``%%agent`` magic (see :mod:`glm_agent.jupyter`)."""
    from glm_agent.jupyter import load_ipython_extension as load

    load(shell)


def unload_ipython_extension(shell: Any) -> None:
    from glm_agent.jupyter import unload_ipython_extension as unload

    unload(shell)
