"""CodeInterpreter: one kernel per session, runs code, returns ChatGLM3 observations."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING

import zmq

from glm_agent.errors import InterpreterError
from glm_agent.interpreter._backend import KernelBackend
from glm_agent.interpreter._bootstrap import BOOTSTRAP, run_silent, write_file
from glm_agent.interpreter._capture import OutputCollector
from glm_agent.interpreter._isolation import Isolation, resolve_isolation, runtime_root
from glm_agent.interpreter._limits import GiB, Limits
from glm_agent.interpreter._local import LocalKernel
from glm_agent.interpreter._results import ErrorOutput, ExecutionResult, format_observation, output_text

if TYPE_CHECKING:
    from glm_agent.interpreter._gateway import KernelGateway
    from glm_agent.interpreter._pool import KernelPool
    from glm_agent.messages import MessageLike

__all__ = ["CodeInterpreter", "MNT_DATA"]

log = logging.getLogger(__name__)

MNT_DATA = "/mnt/data"
_MNT_DATA_IN_CODE = re.compile(r"(?<![\w/.])/mnt/data(?![\w.-])")
_UPLOAD_NAME = re.compile(r"^[^/\\\x00]+$")


class CodeInterpreter:
    """A Jupyter kernel of its own for one conversation: ``run(code)`` -> :class:`ExecutionResult`.

    The kernel starts in the session's workspace (``workspace=`` or a fresh temporary
    directory, removed at close unless ``keep_workspace``), which code sees as ``/mnt/data``
    (a bind mount when isolated; otherwise ``/mnt/data`` in submitted code is rewritten to
    the workspace path and the workspace path in output back to ``/mnt/data``).

    ``timeout`` (seconds, per run; None for none) interrupts a run; if the interrupt does not
    stop it within ``interrupt_grace`` seconds the kernel is restarted. A kernel that dies
    is restarted. Observations say when either happened. ``isolate``: None = where
    available, True = required, False = off (see ``isolation``). ``pool`` hands out
    pre-started kernels. ``max_observation_chars`` bounds the observation (head + tail),
    ``max_output_chars`` what is kept of a run's output at all.

    ``gateway="http://host:port"`` (with ``token=``, or a ``KernelGateway`` object) runs the
    kernel on a Jupyter Kernel/Enterprise Gateway instead (see ``sandbox/README.md``): the same
    runs, observations and restarts; limits and isolation are the gateway's kernel spec's
    (reported in ``limits`` and ``isolation``), the kernel's files stay on the gateway, and
    ``workspace`` is a local directory holding the images (``outputs/``).
    """

    def __init__(
        self,
        workspace: str | Path | None = None,
        *,
        timeout: float | None = 30.0,
        limits: Limits | None = None,
        isolate: bool | None = None,
        pool: KernelPool | None = None,
        max_observation_chars: int = 2000,
        max_output_chars: int = 200_000,
        interrupt_grace: float = 3.0,
        start_timeout: float = 60.0,
        keep_workspace: bool | None = None,
        gateway: str | KernelGateway | None = None,
        token: str | None = None,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
        if max_observation_chars < 100 or max_output_chars < 100:
            raise ValueError("max_observation_chars and max_output_chars must be at least 100")
        self.timeout = timeout
        self.interrupt_grace = interrupt_grace
        self.start_timeout = start_timeout
        self.max_observation_chars = max_observation_chars
        self.max_output_chars = max_output_chars
        self.history: list[ExecutionResult] = []
        self._lock = threading.RLock()
        self._closed = False
        if gateway is not None:
            self._init_remote(gateway, token, workspace, limits, isolate, pool, keep_workspace)
            return
        if pool is not None:
            if limits is not None and limits != pool.limits:
                raise ValueError(
                    "a session from a pool uses the pool's limits; create the KernelPool with the limits you want"
                )
            if isolate is not None and isolate != pool.isolation.enabled:
                raise ValueError(
                    "a session from a pool uses the pool's isolation; create the KernelPool with isolate=..."
                )
            self.limits = pool.limits
            self.isolation: Isolation = pool.isolation
        else:
            self.limits = limits or Limits()
            self.isolation = resolve_isolation(isolate)
        # a pooled kernel comes with its own workspace (bind-mounted at start when isolated)
        backend = pool.take() if pool is not None and workspace is None else None
        if backend is not None:
            self._workspace = backend.workspace
            owned = workspace is None
        elif workspace is not None:
            self._workspace = Path(workspace).resolve()
            self._workspace.mkdir(parents=True, exist_ok=True)
            owned = False
        else:
            self._workspace = Path(tempfile.mkdtemp(prefix="ws-", dir=runtime_root()))
            owned = True
        remove = owned if keep_workspace is None else not keep_workspace
        if isinstance(backend, LocalKernel):
            backend.temporary_workspace = remove  # for the supervisor, should this process die
        self._workspace_finalizer = weakref.finalize(self, shutil.rmtree, self._workspace, True) if remove else None
        try:
            if backend is None:
                backend = LocalKernel(
                    self._workspace, limits=self.limits, isolate=self.isolation.enabled, temporary_workspace=remove
                )
                backend.start(start_timeout)
                run_silent(backend, BOOTSTRAP, start_timeout)
        except BaseException:
            if backend is not None:
                backend.shutdown()
            if self._workspace_finalizer is not None:
                self._workspace_finalizer()
            raise
        self._backend: KernelBackend = backend
        self._image_dir = self._workspace / "outputs"

    def _init_remote(self, gateway, token, workspace, limits, isolate, pool, keep_workspace) -> None:
        """A kernel on a Kernel Gateway; images are saved in a local temporary directory."""
        from glm_agent.interpreter._gateway import KernelGateway

        given = {"workspace": workspace, "limits": limits, "isolate": isolate, "pool": pool}
        if any(value is not None for value in given.values()):
            names = ", ".join(name for name, value in given.items() if value is not None)
            raise ValueError(
                f"{names} cannot be combined with gateway=: the gateway's kernel spec sets the kernel's limits, "
                "isolation and workspace (see sandbox/README.md)"
            )
        backend = gateway if isinstance(gateway, KernelGateway) else KernelGateway(gateway, token=token)
        if keep_workspace is not None:
            backend.temporary_workspace = not keep_workspace
        self._workspace = Path(tempfile.mkdtemp(prefix="gw-", dir=runtime_root()))
        self._workspace_finalizer = weakref.finalize(self, shutil.rmtree, self._workspace, True)
        try:
            backend.start(self.start_timeout)
            run_silent(backend, BOOTSTRAP, self.start_timeout)
        except BaseException:
            backend.shutdown()
            self._workspace_finalizer()
            raise
        self.limits = backend.limits
        self.isolation = backend.isolation
        self._backend = backend
        self._image_dir = self._workspace / "outputs"

    # -- properties ---------------------------------------------------------------------------
    @property
    def workspace(self) -> Path:
        """The session's directory on this machine (``/mnt/data`` for the code)."""
        return self._workspace

    @property
    def backend(self) -> KernelBackend:
        return self._backend

    @property
    def closed(self) -> bool:
        return self._closed

    # -- running --------------------------------------------------------------------------------
    def run(self, code: str, *, timeout: float | EllipsisType | None = ...) -> ExecutionResult:
        """Run ``code`` in the kernel; wait for it (at most ``timeout`` s) and return everything it produced."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        limit = self.timeout if timeout is ... else timeout
        with self._lock:
            self._check_open()
            started = time.monotonic()
            notices: list[str] = []
            restarted = state_lost = False
            if not self._backend.is_alive():
                reason = self._backend.death_reason()
                restarted = state_lost = True
                notices.append(
                    f"[The kernel had stopped since the last run ({reason}) and was restarted: "
                    "variables, imports and files opened in earlier runs are gone.]"
                )
                alive = self._restart_or_note(notices)
            else:
                alive = True
            collector = OutputCollector(
                self._image_dir, f"run{len(self.history) + 1:03d}", max_chars=self.max_output_chars
            )
            if alive:
                outcome = self._execute(self._code_for_kernel(code), limit, collector, notices)
            else:
                outcome = {"status": "died", "execution_count": None, "timed_out": False, "restarted": False}
            restarted = restarted or outcome["restarted"]
            state_lost = state_lost or outcome["restarted"]
            notices.extend(self._transport_notices())
            result = self._build_result(code, collector, outcome, notices, restarted, state_lost, started)
            self.history.append(result)
            return result

    async def arun(self, code: str, *, timeout: float | EllipsisType | None = ...) -> ExecutionResult:
        """``run`` in a worker thread; runs of one session are serialised. Cancelling interrupts the kernel."""
        try:
            return await asyncio.to_thread(self.run, code, timeout=timeout)
        except asyncio.CancelledError:
            if not self._closed:
                self._backend.interrupt()
            raise

    def _execute(self, code: str, limit: float | None, collector: OutputCollector, notices: list[str]) -> dict:
        """Send the code and collect its messages until the kernel is idle, timed out or dead."""
        backend = self._backend
        msg_id = backend.execute(code)
        now = time.monotonic()
        deadline = now + limit if limit is not None else None
        interrupt_deadline: float | None = None
        outcome = {"status": "ok", "execution_count": None, "timed_out": False, "restarted": False}
        idle = replied = False
        try:
            while not (idle and replied):
                now = time.monotonic()
                if interrupt_deadline is None and deadline is not None and now >= deadline:
                    outcome["timed_out"] = True
                    backend.interrupt()
                    interrupt_deadline = now + self.interrupt_grace
                elif interrupt_deadline is not None and now >= interrupt_deadline:
                    notices.append(
                        f"[Timed out after {limit:g} s. The code did not stop when interrupted, so the kernel was "
                        "restarted: all variables, imports and state were lost. Re-run the set-up code you need.]"
                    )
                    outcome["restarted"] = True
                    self._restart_or_note(notices)
                    return outcome
                next_deadline = interrupt_deadline or deadline
                wait = 0.25 if next_deadline is None else max(0.0, min(0.25, next_deadline - now))
                if self._closed:
                    raise InterpreterError("the interpreter was closed while the code was running")
                item = backend.recv(wait)
                if item is None:
                    if not backend.is_alive():
                        notices.append(
                            f"[The kernel died while running this code ({backend.death_reason()}) and was restarted: "
                            "all variables, imports and state were lost.]"
                        )
                        outcome.update(status="died", restarted=True)
                        self._restart_or_note(notices)
                        return outcome
                    continue
                channel, msg = item
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue  # output of an earlier cell (e.g. a thread it started): never mixed in
                if channel == "shell":
                    if msg["msg_type"] == "execute_reply":
                        replied = True
                        outcome["execution_count"] = msg["content"].get("execution_count")
                        if msg["content"].get("status") != "ok":
                            outcome["status"] = "error"
                elif msg["msg_type"] == "status":
                    idle = idle or msg["content"].get("execution_state") == "idle"
                else:
                    collector.add(msg)
        except KeyboardInterrupt:
            backend.interrupt()  # Ctrl-C on the host stops the code too
            raise
        except (zmq.ZMQError, AssertionError, InterpreterError) as exc:
            if self._closed:
                raise InterpreterError("the interpreter was closed while the code was running") from exc
            raise
        if outcome["timed_out"]:
            notices.append(
                f"[Timed out after {limit:g} s: the run was interrupted. The kernel's state (variables, imports) is kept.]"
            )
        return outcome

    def _transport_notices(self) -> list[str]:
        """What a remote transport had to do during the run (reconnects, a lost reply)."""
        drain = getattr(self._backend, "drain_notices", None)
        return drain() if drain is not None else []

    def _restart_or_note(self, notices: list[str]) -> bool:
        """Restart the kernel; on failure add a notice and return False."""
        if self._closed:
            raise InterpreterError("the interpreter was closed while the code was running")
        try:
            self._backend.restart(self.start_timeout)
            run_silent(self._backend, BOOTSTRAP, self.start_timeout)
        except InterpreterError as exc:
            log.error("kernel restart failed: %s", exc)
            notices.append(f"[The kernel could not be restarted ({exc}); the next run will try again.]")
            return False
        return True

    def _build_result(
        self, code: str, collector: OutputCollector, outcome: dict, notices: list[str],
        restarted: bool, state_lost: bool, started: float,
    ) -> ExecutionResult:  # fmt: skip
        outputs = collector.finish()
        timed_out = outcome["timed_out"]
        body_parts = []
        for output in outputs:
            if timed_out and isinstance(output, ErrorOutput) and output.ename == "KeyboardInterrupt":
                continue  # the notice says it better
            body_parts.append(output_text(output))
            if isinstance(output, ErrorOutput):
                notices.extend(self._error_hints(output))
        body = self._path_for_model("".join(body_parts))
        status = outcome["status"]
        if timed_out:
            status = "timeout"
        elif status == "ok" and any(isinstance(o, ErrorOutput) for o in outputs):
            status = "error"
        return ExecutionResult(
            code=code,
            outputs=outputs,
            status=status,
            text=body,
            observation=format_observation(body, notices, self.max_observation_chars),
            execution_count=outcome["execution_count"],
            timed_out=timed_out,
            restarted=restarted,
            state_lost=state_lost,
            notices=list(notices),
            duration_s=time.monotonic() - started,
            dropped_chars=collector.dropped_chars,
        )

    def _error_hints(self, error: ErrorOutput) -> list[str]:
        if error.ename == "StdinNotImplementedError":
            return ["[input() is not available: nobody can type an answer here. Put the value in the code instead.]"]
        if error.ename == "MemoryError" and self.limits.memory_bytes:
            return [f"[The kernel's memory limit is {self.limits.memory_bytes / GiB:g} GiB.]"]
        return []

    # -- /mnt/data ------------------------------------------------------------------------------
    def _code_for_kernel(self, code: str) -> str:
        kernel_dir = self._backend.kernel_workspace
        if kernel_dir == MNT_DATA:
            return code
        return _MNT_DATA_IN_CODE.sub(lambda _m: kernel_dir, code)

    def _path_for_model(self, text: str) -> str:
        kernel_dir = self._backend.kernel_workspace
        if kernel_dir == MNT_DATA:
            return text
        return text.replace(kernel_dir, MNT_DATA)

    # -- session control ------------------------------------------------------------------------
    def interrupt(self) -> None:
        """Interrupt the running code (from another thread); the run returns with what it had."""
        self._backend.interrupt()

    def restart(self) -> None:
        """Start a fresh kernel in the same workspace (variables are lost, files stay)."""
        with self._lock:
            self._check_open()
            self._backend.restart(self.start_timeout)
            run_silent(self._backend, BOOTSTRAP, self.start_timeout)

    def upload(self, source: str | Path | bytes, name: str | None = None) -> str:
        """Put a file into the workspace; return the ``#File: /mnt/data/NAME`` header ChatGLM3 expects.

        ``source`` is a path or the file's bytes (then ``name`` is required). Prefix the user's
        message with the returned header (it ends with a newline).
        """
        self._check_open()
        if isinstance(source, (bytes, bytearray, memoryview)):
            if not name:
                raise InterpreterError("upload(bytes) needs a name= for the file in /mnt/data")
            data = bytes(source)
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"cannot upload {path}: no such file")
            data = None
            name = name or path.name
        if not _UPLOAD_NAME.match(name) or name in (".", ".."):
            raise InterpreterError(f"invalid upload name {name!r}: use a plain file name without '/' (e.g. 'data.csv')")
        if self._backend.workspace is None:  # remote: through the kernel
            data = Path(source).read_bytes() if data is None else data
            with self._lock:
                self._check_open()
                write_file(self._backend, f"{self._backend.kernel_workspace}/{name}", data, self.start_timeout)
            return f"#File: {MNT_DATA}/{name}\n#Size: {len(data)}\n#File uploaded\n"
        target = self._workspace / name
        if data is None:
            shutil.copyfile(source, target)
        else:
            target.write_bytes(data)
        return f"#File: {MNT_DATA}/{name}\n#Size: {target.stat().st_size}\n#File uploaded\n"

    def to_notebook(self, path: str | Path, conversation: Sequence[MessageLike] | None = None) -> Path:
        """Save this session (code cells with outputs, plus the conversation's text as markdown) as .ipynb."""
        from glm_agent.interpreter._notebook import write_notebook

        return write_notebook(Path(path), self.history, conversation)

    def close(self) -> None:
        """Stop the kernel and every process it started; remove a temporary workspace. Idempotent.

        Safe from another thread while a run is in progress: that run is interrupted and
        raises ``InterpreterError`` (sockets are closed only once it has let go of them).
        """
        if self._closed:
            return
        self._closed = True
        backend = getattr(self, "_backend", None)
        if backend is not None:
            if not self._lock.acquire(blocking=False):
                backend.interrupt()
                acquired = self._lock.acquire(timeout=self.interrupt_grace + 2)
            else:
                acquired = True
            try:
                backend.shutdown()
            finally:
                if acquired:
                    self._lock.release()
        if self._workspace_finalizer is not None:
            self._workspace_finalizer()

    def _check_open(self) -> None:
        if self._closed:
            raise InterpreterError("this CodeInterpreter is closed; create a new one")

    def __enter__(self) -> CodeInterpreter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"CodeInterpreter({str(self._workspace)!r}, isolation={self.isolation.mode!r}, {state})"
