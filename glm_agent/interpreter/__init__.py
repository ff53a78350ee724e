"""The code interpreter: a sandboxed Jupyter kernel per session, with ChatGLM3 observations.

>>> with CodeInterpreter(timeout=10) as interpreter:
...     result = interpreter.run("print(sum(range(101)))")
...     result.observation
'```result\\n5050\\n```'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from glm_agent._host_files import WorkspaceFile
from glm_agent.interpreter._backend import KernelBackend
from glm_agent.interpreter._isolation import Isolation, detect_isolation
from glm_agent.interpreter._limits import Limits
from glm_agent.interpreter._local import LocalKernel
from glm_agent.interpreter._pool import KernelPool
from glm_agent.interpreter._results import (
    DisplayOutput,
    ErrorOutput,
    ExecutionResult,
    OmittedOutput,
    Output,
    StreamOutput,
)
from glm_agent.interpreter._session import CodeInterpreter

if TYPE_CHECKING:
    from glm_agent.interpreter._gateway import KernelGateway
    from glm_agent.interpreter._notebook import conversation_to_notebook

__all__ = [
    "CodeInterpreter",
    "ExecutionResult",
    "WorkspaceFile",
    "KernelPool",
    "conversation_to_notebook",
    "Limits",
    "Isolation",
    "detect_isolation",
    "KernelBackend",
    "LocalKernel",
    "KernelGateway",
    "Output",
    "StreamOutput",
    "DisplayOutput",
    "ErrorOutput",
    "OmittedOutput",
]


def __getattr__(name: str) -> object:
    """Imported on first use: ``KernelGateway`` needs the ``gateway`` extra (websockets), and
    ``conversation_to_notebook`` nbformat, which takes long to import (the gateway's kernel
    command imports this package for every kernel)."""
    if name == "KernelGateway":
        from glm_agent.interpreter._gateway import KernelGateway

        return KernelGateway
    if name == "conversation_to_notebook":
        from glm_agent.interpreter._notebook import conversation_to_notebook

        return conversation_to_notebook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
