"""The local transport: an ipykernel on this machine, behind our launcher/supervisor, over ZMQ ``ipc``."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from glm_agent.chatglm3.prompts import MNT_DATA
from glm_agent.errors import InterpreterError
from glm_agent.interpreter._backend import Channel, KernelMessage
from glm_agent.interpreter._launcher import describe_exit, launch_spec, launcher_argv, read_oom_kills, runtime_root
from glm_agent.interpreter._limits import Limits
from glm_agent.interpreter._stream_log import OUTPUT_FD_ENV, StreamLog, new_log, read_log
from glm_agent.interpreter._workspace import SessionDirs

__all__ = ["LocalKernel"]

logger = logging.getLogger(__name__)


class _KernelProcess:
    """One started kernel: the supervisor process, its lifeline, runtime dir and client sockets.

    ``kill`` is idempotent and touches no session state, so that it can run from
    ``weakref.finalize`` at garbage collection or interpreter exit.
    """

    def __init__(
        self, proc: subprocess.Popen[bytes], lifeline: int, runtime_dir: Path, log_path: Path, stream_log: int
    ) -> None:
        self.proc = proc
        self.lifeline: int | None = lifeline
        self.stream_log: int | None = stream_log  # the memory file the kernel logs its cell's output to
        self.runtime_dir = runtime_dir
        self.log_path = log_path
        self.cgroup_dirs: list[str] = []  # removed by the supervisor; here too, should it have been killed
        self.client: BlockingKernelClient | None = None
        self._lock = threading.Lock()

    def log_tail(self, size: int = 2000) -> str:
        try:  # the kernel can write in its runtime dir: never follow a link it put there
            fd = os.open(self.log_path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return ""
        with os.fdopen(fd, "rb") as fh:
            data = fh.read()[-size:]
        return data.decode("utf-8", "replace").strip()

    def oom_kills(self) -> int:
        """Processes the session's memory limit killed in this kernel's life (the supervisor writes it at the end)."""
        return read_oom_kills(self.runtime_dir)

    def close_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            for channel in (client._shell_channel, client._iopub_channel, client._control_channel):
                if channel is not None:
                    channel.close()

    def kill(self, graceful: float = 0.0) -> None:
        """Stop the supervisor, the kernel and all it started; remove the runtime dir."""
        with self._lock:
            if self.lifeline is None:
                return
            try:
                if graceful > 0 and self.proc.poll() is None and self.client is not None:
                    self.client.shutdown()
                    try:
                        self.proc.wait(graceful)
                    except subprocess.TimeoutExpired:
                        pass
                self.close_client()
                try:
                    os.write(self.lifeline, b"q")  # on purpose: the supervisor keeps the workspace
                except OSError:
                    pass  # the supervisor is gone already
                os.close(self.lifeline)  # end of file: the supervisor SIGKILLs the kernel and exits
                self.lifeline = None
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    logger.warning("kernel supervisor %d did not exit; killing it", self.proc.pid)
                    self.proc.kill()
                    self.proc.wait(5)
            finally:
                if self.lifeline is not None:
                    os.close(self.lifeline)
                    self.lifeline = None
                if self.stream_log is not None:
                    os.close(self.stream_log)
                    self.stream_log = None
                shutil.rmtree(self.runtime_dir, ignore_errors=True)
                busy = [path for path in self.cgroup_dirs if not _remove_cgroup(path)]
                if busy:  # a killed supervisor's kernel is not reaped yet: its cgroup empties a little later
                    threading.Thread(target=_remove_cgroups_later, args=(busy,), daemon=True).start()


def _remove_cgroup(path: str) -> bool:
    """rmdir a cgroup; True when it is gone (the usual case: the supervisor removed it), False while busy."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _remove_cgroups_later(paths: list[str], within: float = 60.0) -> None:
    """Keep trying until the cgroups empty (their last process reaped by whoever inherited it), then remove them."""
    deadline = time.monotonic() + within
    while paths and time.monotonic() < deadline:
        time.sleep(0.05)
        paths = [path for path in paths if not _remove_cgroup(path)]
    for path in paths:
        logger.warning("the cgroup %s could not be removed: a process in it is still alive", path)


class LocalKernel:
    """A kernel process on this machine (implements :class:`KernelBackend`).

    ``dirs`` holds the workspace, the sandbox's ``/tmp`` and the kernels' runtime directories
    (see :class:`~glm_agent.interpreter._workspace.SessionDirs`); without it the kernel makes its
    own around ``workspace``. ``owns_dirs`` (default: when it made them): :meth:`shutdown`
    removes them too (never a workspace of the caller's outside them); whoever takes the kernel
    over may take them over by setting it False. ``env``: extra environment variables (on top of
    the allowlist); ``readonly_paths``: host folders the isolated kernel may read.
    """

    def __init__(
        self,
        workspace: Path | None = None,
        *,
        limits: Limits,
        isolate: bool,
        dirs: SessionDirs | None = None,
        env: dict[str, str] | None = None,
        readonly_paths: Sequence[str | Path] = (),
        temporary_workspace: bool = False,
        owns_dirs: bool | None = None,
    ) -> None:
        """``temporary_workspace``: if this process dies without closing the kernel, the
        supervisor removes the workspace along with the runtime directory."""
        self.owns_dirs = dirs is None if owns_dirs is None else owns_dirs
        if dirs is None:
            if workspace is None:
                raise ValueError("LocalKernel needs a workspace or dirs")
            dirs = SessionDirs.create(
                runtime_root(), size=limits.workspace_bytes, mount=isolate, workspace=Path(workspace).resolve()
            )
        self.dirs = dirs
        self._workspace = dirs.workspace.resolve()
        self.temporary_workspace = temporary_workspace
        self.limits = limits
        self.isolate = isolate
        self._extra_env = dict(env or {})
        self._readonly_paths = [str(Path(p).resolve()) for p in readonly_paths]
        self._process: _KernelProcess | None = None
        self._finalizer: weakref.finalize[..., Any] | None = None
        self._poller: zmq.Poller | None = None
        self._iopub: zmq.Socket[bytes] | None = None
        self._shell: zmq.Socket[bytes] | None = None

    # -- identity ---------------------------------------------------------------------------
    @property
    def workspace(self) -> Path:
        return self._workspace

    @property
    def kernel_workspace(self) -> str:
        return MNT_DATA if self.isolate else str(self._workspace)

    @property
    def runtime_dir(self) -> Path | None:
        """Sockets, connection file, scratch space and log of the running kernel."""
        return self._process.runtime_dir if self._process else None

    @property
    def pid(self) -> int | None:
        """The supervisor's process id (the kernel is its only child)."""
        return self._process.proc.pid if self._process else None

    # -- life cycle -------------------------------------------------------------------------
    def start(self, timeout: float) -> None:
        if self._process is not None:
            raise InterpreterError("this kernel is already started; call restart() for a fresh one")
        self._workspace.mkdir(parents=True, exist_ok=True)
        process = self._spawn()
        self._process = process
        self._finalizer = weakref.finalize(self, process.kill)
        try:
            self._connect(process, timeout)
        except BaseException:
            self.shutdown()
            raise

    def _spawn(self) -> _KernelProcess:
        runtime_dir = self.dirs.new_runtime_dir()
        connection_file = runtime_dir / "connection.json"
        write_connection_file(
            str(connection_file),
            ip=str(runtime_dir / "kernel"),
            transport="ipc",
            shell_port=1,
            iopub_port=2,
            stdin_port=3,
            control_port=4,
            hb_port=5,
        )
        remove, unmount = self.dirs.orphan_paths(self.temporary_workspace)
        spec = launch_spec(
            workspace=self._workspace,
            runtime_dir=runtime_dir,
            connection_file=connection_file,
            limits=self.limits,
            isolate=self.isolate,
            extra_env=self._extra_env,
            readonly_paths=self._readonly_paths,
            tmp_dir=self.dirs.tmp if self.isolate else None,
            workspace_quota=self.dirs.workspace_on_quota,
            remove_if_orphaned=[str(runtime_dir), *remove],
            unmount_if_orphaned=unmount,
        )
        read_fd, write_fd = os.pipe()
        spec["lifeline_fd"] = read_fd
        stream_log = new_log()
        spec["env"][OUTPUT_FD_ENV] = str(stream_log)
        log_path = runtime_dir / "kernel.log"
        try:
            with open(log_path, "wb") as log_file:
                proc = subprocess.Popen(
                    launcher_argv(spec),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    pass_fds=(read_fd, stream_log),
                    start_new_session=True,
                    cwd=str(runtime_dir),
                )
        except OSError as exc:
            os.close(write_fd)
            os.close(stream_log)
            shutil.rmtree(runtime_dir, ignore_errors=True)
            raise InterpreterError(f"could not launch a kernel with {sys.executable}: {exc}") from exc
        finally:
            os.close(read_fd)
        logger.debug("kernel supervisor %d started in %s (isolated=%s)", proc.pid, runtime_dir, self.isolate)
        process = _KernelProcess(proc, write_fd, runtime_dir, log_path, stream_log)
        process.cgroup_dirs = list(spec["cgroups"].get("dirs", {}).values()) if spec["cgroups"] else []
        client = BlockingKernelClient(connection_file=str(connection_file), context=zmq.Context.instance())
        client.load_connection_file()
        client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
        process.client = client
        return process

    def _connect(self, process: _KernelProcess, timeout: float) -> None:
        """Wait until the kernel answers on shell and its iopub messages reach us."""
        client = process.client
        assert client is not None
        self._shell = client.shell_channel.socket
        self._iopub = client.iopub_channel.socket
        self._poller = zmq.Poller()
        self._poller.register(self._iopub, zmq.POLLIN)
        self._poller.register(self._shell, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        request = client.kernel_info()
        replied_at: float | None = None
        while True:
            now = time.monotonic()
            if not self.is_alive():
                raise InterpreterError(
                    f"the kernel failed to start ({self.death_reason()}). Its output:\n{process.log_tail()}"
                )
            if now > deadline:
                raise InterpreterError(
                    f"the kernel did not answer within {timeout:g} s; raise start_timeout on a slow machine. "
                    f"Its output:\n{process.log_tail()}"
                )
            if replied_at is not None and now - replied_at > 0.2:
                request = client.kernel_info()  # iopub not subscribed yet: ask again to get status messages
                replied_at = None
            item = self.recv(0.1)
            if item is None:
                continue
            channel, msg = item
            if channel == "iopub":
                return  # any iopub message: the subscription is live, nothing will be missed
            if msg["msg_type"] == "kernel_info_reply" and msg["parent_header"].get("msg_id") == request:
                replied_at = time.monotonic()

    def restart(self, timeout: float) -> None:
        self.shutdown(remove_dirs=False)
        self.start(timeout)

    def shutdown(self, graceful: float = 0.0, *, remove_dirs: bool = True) -> None:
        process, self._process = self._process, None
        self._poller = self._iopub = self._shell = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if process is not None:
            process.kill(graceful)
        if remove_dirs and self.owns_dirs:
            self.dirs.remove(remove_workspace=False)

    # -- running ----------------------------------------------------------------------------
    def _client(self) -> BlockingKernelClient:
        if self._process is None or self._process.client is None:
            raise InterpreterError("the kernel is not running; start() it first")
        return self._process.client

    def execute(self, code: str, *, silent: bool = False, user_expressions: dict[str, str] | None = None) -> str:
        try:
            msg_id: str = self._client().execute(
                code,
                silent=silent,
                store_history=not silent,
                allow_stdin=False,
                stop_on_error=False,
                user_expressions=user_expressions or {},
            )
            return msg_id
        except (zmq.ZMQError, AssertionError) as exc:
            raise InterpreterError(f"the connection to the kernel failed: {type(exc).__name__}: {exc}") from exc

    def recv(self, timeout: float) -> tuple[Channel, KernelMessage] | None:
        client = self._client()
        if self._poller is None:
            raise InterpreterError("the kernel is not running; start() it first")
        try:
            ready = dict(self._poller.poll(max(0, int(timeout * 1000))))
            if self._iopub in ready:
                return "iopub", client.iopub_channel.get_msg(timeout=0)
            if self._shell in ready:
                return "shell", client.shell_channel.get_msg(timeout=0)
        except (zmq.ZMQError, AssertionError) as exc:  # sockets closed under us (close() from another thread)
            raise InterpreterError(f"the connection to the kernel failed: {type(exc).__name__}: {exc}") from exc
        return None

    def interrupt(self) -> None:
        if self.is_alive():
            assert self._process is not None
            os.kill(self._process.proc.pid, signal.SIGINT)  # the supervisor forwards it to the kernel's group

    def is_alive(self) -> bool:
        return self._process is not None and self._process.proc.poll() is None

    def drain_notices(self) -> list[str]:
        return []  # nothing between the session and a local kernel can get lost

    def death_reason(self) -> str:
        if self._process is None:
            return "not started"
        returncode = self._process.proc.poll()
        return describe_exit(returncode, self.limits, oom_killed=bool(self._process.oom_kills()))

    def stream_log(self) -> StreamLog:
        process = self._process
        if process is None or process.stream_log is None:
            return StreamLog()
        return read_log(process.stream_log)

    def log_tail(self) -> str:
        """The kernel process's own stdout/stderr (the last part)."""
        return self._process.log_tail() if self._process else ""
