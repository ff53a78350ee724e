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
from glm_agent.interpreter._transfer import PNGImage

if TYPE_CHECKING:
    from glm_agent.interpreter._gateway import KernelGateway
    from glm_agent.interpreter._notebook import conversation_to_notebook
    from glm_agent.interpreter._notebook_in import (
        NotebookHistory,
        append_run,
        check_fits,
        notebook_history,
        read_notebook,
        save_notebook,
    )

__all__ = [
    "CodeInterpreter",
    "ExecutionResult",
    "PNGImage",
    "WorkspaceFile",
    "KernelPool",
    "conversation_to_notebook",
    "read_notebook",
    "notebook_history",
    "append_run",
    "check_fits",
    "save_notebook",
    "NotebookHistory",
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


_NOTEBOOK_IN = {"read_notebook", "notebook_history", "append_run", "check_fits", "save_notebook", "NotebookHistory"}


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
    if name in _NOTEBOOK_IN:
        from glm_agent.interpreter import _notebook_in

        return getattr(_notebook_in, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
