"""The transport interface between a session and one kernel.

Everything a session does (output capture, timeouts, interrupts, restart on death,
observations, images, notebook export) is written against this protocol, so that a
kernel on this machine (:class:`~glm_agent.interpreter._local.LocalKernel`) and a kernel
behind a Jupyter Kernel Gateway (WebSocket channels, REST interrupt/restart) share one
code path above it. A backend only moves Jupyter messages and manages the process.

A remote backend (:class:`~glm_agent.interpreter._gateway.KernelGateway`) has no ``workspace``
on this machine (None: the session then uploads through the kernel and keeps images locally);
its ``drain_notices()`` says what the transport had to do during a run (a reconnect, a lost
reply), which the session adds to the run's observation (a local kernel has none to say).

Messages are Jupyter messaging-protocol dicts (``header``, ``parent_header``,
``msg_type``, ``content``, ...) as ``jupyter_client.Session.deserialize`` returns them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from glm_agent.interpreter._stream_log import StreamLog

__all__ = ["KernelBackend", "Channel", "KernelMessage"]

Channel = Literal["iopub", "shell"]
KernelMessage = dict[str, Any]


@runtime_checkable
class KernelBackend(Protocol):
    """One kernel as the host sees it."""

    @property
    def workspace(self) -> Path | None:
        """The kernel's working directory on this machine, or None when it is remote."""

    @property
    def kernel_workspace(self) -> str:
        """The same directory as code in the kernel sees it (``/mnt/data`` when isolated)."""

    def start(self, timeout: float) -> None:
        """Start the kernel and return once it answers and its iopub channel delivers.

        Raises ``InterpreterError`` (with the kernel's own error output) if it cannot start.
        """

    def execute(self, code: str, *, silent: bool = False, user_expressions: dict[str, str] | None = None) -> str:
        """Send an ``execute_request`` (never allowing stdin, never stopping on error); return its msg_id.

        ``user_expressions`` are evaluated after the code; their values come back in the ``execute_reply``.
        Transport failures raise ``InterpreterError`` (a backend translates its own errors).
        """

    def recv(self, timeout: float) -> tuple[Channel, KernelMessage] | None:
        """The next message from the iopub or shell channel, or None after ``timeout`` seconds.

        Transport failures raise ``InterpreterError``.

        The backend delivers every message; filtering by ``parent_header.msg_id`` is the
        caller's job.
        """

    def interrupt(self) -> None:
        """Ask the kernel to stop the running cell (SIGINT for a local kernel)."""

    def restart(self, timeout: float) -> None:
        """Kill the kernel and every process it started, and start a fresh one (state is lost)."""

    def is_alive(self) -> bool:
        """Whether the kernel process still runs."""

    def death_reason(self) -> str:
        """Why a dead kernel ended, in words ("killed by signal SIGSEGV (segmentation fault)")."""

    def stream_log(self) -> StreamLog:
        """What the kernel's stdout/stderr received in its current or last cell (``_stream_log.py``), read after
        it died or before it is killed, to keep output it never sent; empty where the transport cannot tell."""

    def shutdown(self) -> None:
        """Stop the kernel and every process it started; idempotent and safe to call at exit."""

    def drain_notices(self) -> list[str]:
        """What the transport had to do since the last call (reconnects, lost replies), in words; then forgets them."""
