"""CodeInterpreter: one kernel per session, runs code, returns ChatGLM3 observations."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING, Any, BinaryIO, Union

from glm_agent._host_files import WorkspaceFile, list_regular, open_regular
from glm_agent.chatglm3.prompts import MNT_DATA, upload_header, variable_header
from glm_agent.errors import InterpreterError
from glm_agent.interpreter._backend import KernelBackend
from glm_agent.interpreter._bootstrap import REPORT_EXPRESSION, start_kernel, write_file
from glm_agent.interpreter._capture import OutputCollector
from glm_agent.interpreter._environment import check_env
from glm_agent.interpreter._isolation import Isolation, check_readonly_paths, resolve_isolation
from glm_agent.interpreter._launcher import runtime_root
from glm_agent.interpreter._limits import Limits
from glm_agent.interpreter._local import LocalKernel
from glm_agent.interpreter._observation import (
    error_hints,
    format_observation,
    kernel_died,
    kernel_stopped,
    output_text,
    report_notices,
    restart_failed,
    timed_out,
)
from glm_agent.interpreter._outcome import RunOutcome, read_report
from glm_agent.interpreter._results import DisplayOutput, ErrorOutput, ExecutionResult, StreamOutput, strip_ansi
from glm_agent.interpreter._workspace import SessionDirs
from glm_agent.telemetry import count

if TYPE_CHECKING:
    from glm_agent.interpreter._gateway import KernelGateway
    from glm_agent.interpreter._pool import KernelPool
    from glm_agent.messages import MessageLike

__all__ = ["CodeInterpreter", "OutputListener", "live_output"]

logger = logging.getLogger(__name__)

_MNT_DATA_IN_CODE = re.compile(r"(?<![\w/.])/mnt/data(?![\w.-])")
_UPLOAD_NAME = re.compile(r"^[^/\\\x00]+$")

#: Called from the running thread with each output as it arrives (stdout line by line, errors, displays).
OutputListener = Callable[[Union[StreamOutput, ErrorOutput, DisplayOutput]], None]


def live_output(
    msg: dict[str, Any], to_model_path: Callable[[str], str] = str
) -> StreamOutput | ErrorOutput | DisplayOutput | None:
    """One iopub message as the output a live view shows (ANSI codes removed), or None for other messages."""
    kind, content = msg.get("msg_type"), msg.get("content", {})
    if kind == "stream":
        return StreamOutput(content.get("name", "stdout"), to_model_path(strip_ansi(content.get("text", ""))))
    if kind == "error":
        return ErrorOutput(content.get("ename", ""), content.get("evalue", ""), list(content.get("traceback", [])))
    if kind in ("display_data", "execute_result"):
        return DisplayOutput(kind, dict(content.get("data", {})), dict(content.get("metadata", {})))
    return None


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
    ``max_output_chars`` what is kept of a run's output at all. ``on_output(output)`` (settable
    later as ``interpreter.on_output``) sees each output while the cell runs: stdout as it is
    printed, errors, displays; the complete result still comes from ``run``.

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
        readonly_paths: Sequence[str | Path] = (),
        env: Mapping[str, str] | None = None,
        on_output: OutputListener | None = None,
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
        self.on_output = on_output
        self._lock = threading.RLock()
        self._closed = False
        self.env = check_env(env)
        self.readonly_paths = check_readonly_paths(readonly_paths)
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
            if (self.env, self.readonly_paths) != (pool.env, pool.readonly_paths):
                raise ValueError(
                    "a session from a pool uses the pool's env and readonly_paths; create the KernelPool with them"
                )
            self.limits = pool.limits
            isolation = pool.isolation
        else:
            self.limits = limits or Limits()
            isolation = resolve_isolation(isolate)
        # a pooled kernel comes with its own workspace (on its session tmpfs when isolated)
        usable_pool = pool is not None and workspace is None and not keep_workspace
        backend = pool.take() if usable_pool and pool is not None else None
        if backend is not None:
            dirs = backend.dirs
        else:
            dirs = SessionDirs.create(
                runtime_root(),
                size=self.limits.workspace_bytes,
                mount=isolation.enabled,
                workspace=Path(workspace).resolve() if workspace is not None else None,
                keep_workspace=bool(keep_workspace),
            )
        self._dirs: SessionDirs | None = dirs
        self._workspace = dirs.workspace
        remove = (workspace is None) if keep_workspace is None else not keep_workspace
        self._workspace_finalizer: weakref.finalize[..., Any] | None = weakref.finalize(
            self, dirs.remove, remove_workspace=remove
        )
        self.isolation: Isolation = self._session_isolation(isolation, dirs)
        try:
            if backend is not None:
                backend.temporary_workspace = remove  # for the supervisor, should this process die
            else:
                backend = LocalKernel(
                    limits=self.limits,
                    isolate=isolation.enabled,
                    dirs=dirs,
                    env=self.env,
                    readonly_paths=self.readonly_paths,
                    temporary_workspace=remove,
                )
                start_kernel(backend, start_timeout)
        except BaseException:
            if backend is not None:
                backend.shutdown()
            self._workspace_finalizer()
            raise
        self._backend: KernelBackend = backend
        self._image_dir = self._workspace / "outputs"

    @staticmethod
    def _session_isolation(isolation: Isolation, dirs: SessionDirs) -> Isolation:
        """The process-wide isolation, with what this session's directories add or lack."""
        if not isolation.enabled or not isolation.workspace_quota or dirs.workspace_on_quota:
            return isolation
        note = "workspace_bytes bounds /tmp and /dev/shm only: the workspace is a directory of yours, used in place"
        return replace(isolation, workspace_quota=False, notes=(*isolation.notes, note))

    def _init_remote(
        self,
        gateway: str | KernelGateway,
        token: str | None,
        workspace: str | Path | None,
        limits: Limits | None,
        isolate: bool | None,
        pool: KernelPool | None,
        keep_workspace: bool | None,
    ) -> None:
        """A kernel on a Kernel Gateway; images are saved in a local temporary directory."""
        from glm_agent.interpreter._gateway import KernelGateway

        given = {
            "workspace": workspace,
            "limits": limits,
            "isolate": isolate,
            "pool": pool,
            "readonly_paths": self.readonly_paths or None,
        }
        if any(value is not None for value in given.values()):
            names = ", ".join(name for name, value in given.items() if value is not None)
            raise ValueError(
                f"{names} cannot be combined with gateway=: the gateway's kernel spec sets the kernel's limits, "
                "isolation and workspace (see sandbox/README.md)"
            )
        backend = gateway if isinstance(gateway, KernelGateway) else KernelGateway(gateway, token=token)
        backend.kernel_env = self.env
        if keep_workspace is not None:
            backend.temporary_workspace = not keep_workspace
        self._workspace = Path(tempfile.mkdtemp(prefix="gw-", dir=runtime_root()))
        self._workspace_finalizer = weakref.finalize(self, shutil.rmtree, self._workspace, True)
        self._dirs = None
        try:
            start_kernel(backend, self.start_timeout)
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
                notices.append(kernel_stopped(reason))
                alive = self._restart_or_note(notices)
            else:
                alive = True
            collector = OutputCollector(
                self._image_dir, f"run{len(self.history) + 1:03d}", max_chars=self.max_output_chars
            )
            if alive:
                outcome = self._execute(self._code_for_kernel(code), limit, collector, notices)
            else:
                outcome = RunOutcome(status="died")
            restarted = restarted or outcome.restarted
            state_lost = state_lost or outcome.restarted
            notices.extend(self._transport_notices())
            result = self._build_result(code, collector, outcome, notices, restarted, state_lost, started)
            self.history.append(result)
            count("interpreter_runs")
            if restarted:
                count("interpreter_restarts")
            return result

    async def arun(self, code: str, *, timeout: float | EllipsisType | None = ...) -> ExecutionResult:
        """``run`` in a worker thread; runs of one session are serialised. Cancelling interrupts the kernel."""
        try:
            return await asyncio.to_thread(self.run, code, timeout=timeout)
        except asyncio.CancelledError:
            if not self._closed:
                self._backend.interrupt()
            raise

    def _execute(self, code: str, limit: float | None, collector: OutputCollector, notices: list[str]) -> RunOutcome:
        """Send the code and collect its messages until the kernel is idle, timed out or dead."""
        backend = self._backend
        msg_id = backend.execute(code, user_expressions=REPORT_EXPRESSION)
        now = time.monotonic()
        deadline = now + limit if limit is not None else None
        interrupt_deadline: float | None = None
        outcome = RunOutcome()
        idle = replied = False
        try:
            while not (idle and replied):
                now = time.monotonic()
                if interrupt_deadline is None and deadline is not None and now >= deadline:
                    outcome.timed_out = True
                    backend.interrupt()
                    interrupt_deadline = now + self.interrupt_grace
                elif interrupt_deadline is not None and now >= interrupt_deadline:
                    notices.append(timed_out(limit or 0, restarted=True))
                    outcome.restarted = True
                    collector.recover(backend.stream_log())  # what it printed last, before the kill
                    self._restart_or_note(notices)
                    return outcome
                next_deadline = interrupt_deadline or deadline
                wait = 0.25 if next_deadline is None else max(0.0, min(0.25, next_deadline - now))
                if self._closed:
                    raise InterpreterError("the interpreter was closed while the code was running")
                item = backend.recv(wait)
                if item is None:
                    if not backend.is_alive():
                        notices.append(kernel_died(backend.death_reason()))
                        outcome.status = "died"
                        outcome.restarted = True
                        collector.recover(backend.stream_log())  # what it printed but never sent
                        self._restart_or_note(notices)
                        return outcome
                    continue
                channel, msg = item
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue  # output of an earlier cell (e.g. a thread it started): never mixed in
                if channel == "shell":
                    if msg["msg_type"] == "execute_reply":
                        replied = True
                        content = msg["content"]
                        outcome.execution_count = content.get("execution_count")
                        if content.get("status") != "ok":
                            outcome.status = "error"
                        outcome.report = read_report(content)
                elif msg["msg_type"] == "status":
                    idle = idle or msg["content"].get("execution_state") == "idle"
                else:
                    collector.add(msg)
                    if self.on_output is not None:
                        self._emit_live(msg)
        except KeyboardInterrupt:
            backend.interrupt()  # Ctrl-C on the host stops the code too
            raise
        except InterpreterError as exc:
            if self._closed:
                raise InterpreterError("the interpreter was closed while the code was running") from exc
            raise
        if outcome.timed_out:
            notices.append(timed_out(limit or 0, restarted=False))
        notices.extend(report_notices(outcome.report, self.limits, backend.kernel_workspace))
        return outcome

    def _emit_live(self, msg: dict[str, Any]) -> None:
        """Hand one output to ``on_output`` while the cell runs (a failing listener never breaks the run)."""
        live = live_output(msg, self._path_for_model)
        if live is None or self.on_output is None:
            return
        try:
            self.on_output(live)
        except Exception:
            logger.warning("the on_output listener failed", exc_info=True)

    def _transport_notices(self) -> list[str]:
        """What a remote transport had to do during the run (reconnects, a lost reply)."""
        return self._backend.drain_notices()

    def _restart_or_note(self, notices: list[str]) -> bool:
        """Restart the kernel; on failure add a notice and return False."""
        if self._closed:
            raise InterpreterError("the interpreter was closed while the code was running")
        try:
            start_kernel(self._backend, self.start_timeout, restart=True)
        except InterpreterError as exc:
            logger.error("kernel restart failed: %s", exc)
            notices.append(restart_failed(exc))
            return False
        return True

    def _build_result(
        self,
        code: str,
        collector: OutputCollector,
        outcome: RunOutcome,
        notices: list[str],
        restarted: bool,
        state_lost: bool,
        started: float,
    ) -> ExecutionResult:
        outputs = collector.finish()
        timed_out = outcome.timed_out
        body_parts = []
        for output in outputs:
            if timed_out and isinstance(output, ErrorOutput) and output.ename == "KeyboardInterrupt":
                continue  # the notice says it better
            body_parts.append(output_text(output))
            if isinstance(output, ErrorOutput):
                notices.extend(hint for hint in error_hints(output, self.limits, self.isolation) if hint not in notices)
        body = self._path_for_model("".join(body_parts))
        status = outcome.status
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
            execution_count=outcome.execution_count,
            files=[self._path_for_model(path) for path in outcome.report.files],
            timed_out=timed_out,
            restarted=restarted,
            state_lost=state_lost,
            notices=list(notices),
            duration_s=time.monotonic() - started,
            dropped_chars=collector.dropped_chars,
        )

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
            start_kernel(self._backend, self.start_timeout, restart=True)

    def upload(self, source: str | Path | bytes, name: str | None = None) -> str:
        """Put a file into the workspace; return the ``#File: /mnt/data/NAME`` header ChatGLM3 expects.

        ``source`` is a path or the file's bytes (then ``name`` is required). A file is streamed
        (never read whole into memory). Prefix the user's message with the returned header (it
        ends with a newline).
        """
        self._check_open()
        if isinstance(source, (bytes, bytearray, memoryview)):
            if not name:
                raise InterpreterError("upload(bytes) needs a name= for the file in /mnt/data")
            data = bytes(source)
            open_source: Callable[[], BinaryIO] = lambda: io.BytesIO(data)  # noqa: E731
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"cannot upload {path}: no such file")
            name = name or path.name
            open_source = lambda: open(path, "rb")  # noqa: E731, SIM115
        if not _UPLOAD_NAME.match(name) or name in (".", ".."):
            raise InterpreterError(f"invalid upload name {name!r}: use a plain file name without '/' (e.g. 'data.csv')")
        with open_source() as reader:
            if self._backend.workspace is None:  # remote: through the kernel
                with self._lock:
                    self._check_open()
                    size = write_file(
                        self._backend, f"{self._backend.kernel_workspace}/{name}", reader, self.start_timeout
                    )
            else:
                size = _replace_in_workspace(self._workspace, name, reader)
        return upload_header(name, size)

    # -- values in and out ----------------------------------------------------------------------
    def put(self, name: str, value: Any) -> str:
        """Set the kernel's variable ``name`` to a copy of a host value; return a header naming it to the model.

        Sent in formats that cannot run code: JSON values, bytes, numpy arrays (not of objects, as
        ``.npy`` without pickle), pandas DataFrames and Series (Arrow, which the kernel needs too).
        Another type is a ``TypeError``. The header (``#Variable: df`` ...) goes before a question,
        as :meth:`upload`'s does for a file.
        """
        from glm_agent.interpreter._transfer import describe, put_value

        with self._lock:
            self._check_open()
            put_value(self._backend, name, value, self.start_timeout)
        return variable_header(name, describe(value))

    def get(self, name: str, *, max_bytes: int = 512 * 1024 * 1024) -> Any:
        """A copy of the kernel's variable ``name``, never unpickled: JSON values, bytes, numpy arrays
        (``allow_pickle=False``), DataFrames and Series (Arrow), matplotlib figures (as a ``PNGImage``).

        Another type, a missing name or a value over ``max_bytes`` is an ``InterpreterError``.
        """
        from glm_agent.interpreter._transfer import get_value

        with self._lock:
            self._check_open()
            return get_value(self._backend, name, self.start_timeout, max_bytes)

    def variables(self) -> dict[str, str]:
        """The kernel's variables (not modules, functions or classes), name -> type: what code created."""
        from glm_agent.interpreter._transfer import list_variables

        with self._lock:
            self._check_open()
            return list_variables(self._backend, self.start_timeout)

    def files(self) -> list[WorkspaceFile]:
        """The files directly in the workspace that may leave it: regular, with one link, not hidden.

        Links, folders, FIFOs and hard-linked files the code made are left out. With a gateway the
        code's files stay on the gateway: this lists the local folder (images only), so nothing.
        """
        return list_regular(self._workspace)

    def open_file(self, name: str) -> BinaryIO:
        """A workspace file opened for reading (``name`` relative to the workspace, e.g. ``outputs/run001-1.png``).

        Only a regular file with a single link, reached without following any link, is opened;
        anything else (a link the code planted to a host file, a FIFO, a folder) is a
        ``PermissionError``, a missing file a ``FileNotFoundError``.
        """
        return open_regular(self._workspace, name)

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


def _replace_in_workspace(workspace: Path, name: str, reader: BinaryIO) -> int:
    """Write ``workspace/name`` as a new file from ``reader`` (streamed); return its size.

    A symbolic link the code put there is replaced, never followed.
    """
    dir_fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    part = f".{name}.{uuid.uuid4().hex[:8]}.part"
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as fh:
                shutil.copyfileobj(reader, fh, 1 << 20)
                size = fh.tell()
            os.replace(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            os.unlink(part, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)
    return size
