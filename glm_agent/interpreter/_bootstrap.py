"""Kernel-side set-up code, and running such code silently (any backend)."""

from __future__ import annotations

import base64
import time

from glm_agent.errors import InterpreterError
from glm_agent.interpreter._backend import KernelBackend

__all__ = ["BOOTSTRAP", "run_silent", "write_file"]

# Threads started by a cell keep that cell as their output's parent, so that what they print
# after the cell ended is not attributed to whichever cell runs then (ipykernel's default).
BOOTSTRAP = """
def __glm_agent_bootstrap():
    import threading
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or getattr(threading.Thread.start, "_glm_agent", False):
        return
    original_start = threading.Thread.start

    def start(self, *args, **kwargs):
        try:
            parent = shell.get_parent()
        except Exception:
            parent = None
        if parent:
            run = self.run

            def run_with_parent(*a, **k):
                tokens = shell.set_thread_parent(parent)
                try:
                    return run(*a, **k)
                finally:
                    shell.reset_thread_parent(tokens)

            self.run = run_with_parent
        return original_start(self, *args, **kwargs)

    start._glm_agent = True
    threading.Thread.start = start


__glm_agent_bootstrap()
del __glm_agent_bootstrap
"""


def run_silent(backend: KernelBackend, code: str, timeout: float) -> None:
    """Execute set-up code without output or history; raise InterpreterError if it fails."""
    msg_id = backend.execute(code, silent=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = backend.recv(0.2)
        if item is None:
            if not backend.is_alive():
                raise InterpreterError(f"the kernel ended during set-up ({backend.death_reason()})")
            continue
        channel, msg = item
        if channel == "shell" and msg["parent_header"].get("msg_id") == msg_id:
            content = msg["content"]
            if content.get("status") != "ok":
                raise InterpreterError(f"kernel set-up code failed: {content.get('ename')}: {content.get('evalue')}")
            return
    raise InterpreterError(f"the kernel did not finish its set-up within {timeout:g} s")


def write_file(backend: KernelBackend, path: str, data: bytes, timeout: float, chunk_size: int = 1024 * 1024) -> None:
    """Write ``data`` to ``path`` as the kernel sees it, through the kernel (a remote workspace).

    Sent in base64 chunks (each one message under the gateway's WebSocket message limit),
    written to ``path.part`` and renamed at the end, so a failed upload leaves no half file.
    """
    part = f"{path}.part"
    try:
        for offset in range(0, max(len(data), 1), chunk_size):
            encoded = base64.b64encode(data[offset : offset + chunk_size]).decode("ascii")
            mode = "wb" if offset == 0 else "ab"
            run_silent(
                backend,
                f"with open({part!r}, {mode!r}) as _f:\n    _f.write(__import__('base64').b64decode({encoded!r}))",
                timeout,
            )
        run_silent(backend, f"__import__('os').replace({part!r}, {path!r})", timeout)
    except InterpreterError as exc:
        try:
            run_silent(
                backend, f"__import__('os').path.exists({part!r}) and __import__('os').unlink({part!r})", timeout
            )
        except InterpreterError:
            pass
        raise InterpreterError(f"could not write {path} in the kernel: {exc}") from exc
