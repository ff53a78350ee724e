"""The local transport: an ipykernel on this machine, behind our launcher/supervisor, over ZMQ ``ipc``."""

from __future__ import annotations

import json
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

from glm_agent.errors import InterpreterError
from glm_agent.interpreter._backend import Channel, KernelMessage
from glm_agent.interpreter._cgroups import plan_session_cgroups
from glm_agent.interpreter._environment import kernel_environment
from glm_agent.interpreter._isolation import launcher_argv, runtime_root
from glm_agent.interpreter._limits import GiB, Limits
from glm_agent.interpreter._workspace import SessionDirs

__all__ = ["LocalKernel", "describe_exit", "launch_spec", "python_paths", "KERNEL_RUNTIME_DIR"]

log = logging.getLogger(__name__)

#: where an isolated kernel sees its runtime directory (sockets, connection file, caches)
KERNEL_RUNTIME_DIR = "/run/kernel"

_SIGNAL_MEANING = {
    signal.SIGSEGV: "segmentation fault",
    signal.SIGBUS: "bus error",
    signal.SIGABRT: "aborted",
    signal.SIGFPE: "floating-point exception",
    signal.SIGILL: "illegal instruction",
    signal.SIGKILL: "killed: out of memory, the CPU time limit, or killed from outside",
    signal.SIGXCPU: "its CPU time limit was reached",
    signal.SIGXFSZ: "its file size limit was reached",
    signal.SIGTERM: "terminated",
}


def read_oom_kills(runtime_dir: Path) -> int:
    """Processes the session's memory limit killed in a kernel's life (its supervisor writes them at the end)."""
    try:  # the kernel can write in its runtime dir: never follow a link it put there
        fd = os.open(runtime_dir / "oom_kills", os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return 0
    with os.fdopen(fd) as fh:
        text = fh.read(32)
    return int(text) if text.isdigit() else 0


def describe_exit(returncode: int | None, limits: Limits | None = None, *, oom_killed: bool = False) -> str:
    """A kernel's end in words, from the supervisor's exit status (``oom_killed``: the session's memory limit struck)."""
    if returncode is None:
        return "still running"
    if returncode == -signal.SIGKILL and oom_killed and limits is not None and limits.total_memory_bytes:
        return (
            f"killed by SIGKILL: the session's memory limit of {limits.total_memory_bytes / GiB:g} GiB "
            "(Limits.total_memory_bytes) was reached"
        )
    if returncode < 0:
        sig = -returncode
        try:
            member = signal.Signals(sig)
            name, meaning = member.name, _SIGNAL_MEANING.get(member, "")
        except ValueError:
            name, meaning = f"signal {sig}", ""
        if sig == signal.SIGXCPU and limits is not None and limits.cpu_seconds:
            meaning = f"its CPU time limit of {limits.cpu_seconds} s was reached"
        return f"killed by {name}" + (f" ({meaning})" if meaning else "")
    if returncode == 126:
        return "the sandbox could not be set up"
    if returncode == 127:
        return "the kernel could not be started"
    return f"exited with code {returncode}"


def python_paths() -> list[str]:
    """What the kernel's Python needs to run: its prefixes, its executable's directory, its site-packages."""
    paths = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    paths.add(os.path.dirname(os.path.abspath(sys.executable)))
    try:
        import site

        paths.update(site.getsitepackages())
    except (ImportError, AttributeError):
        pass
    return sorted(p for p in paths if p and os.path.isdir(p))


def launch_spec(
    *,
    workspace: Path,
    runtime_dir: Path,
    connection_file: Path,
    limits: Limits,
    isolate: bool,
    extra_env: dict[str, str] | None = None,
    readonly_paths: Sequence[str | Path] = (),
    tmp_dir: Path | None = None,
    workspace_quota: bool = False,
    remove_if_orphaned: list[Path] | list[str] | None = None,
    unmount_if_orphaned: list[str] | None = None,
    cgroups: bool = True,
) -> dict[str, Any]:
    """The launcher's spec (``_launch.py``) for an ipykernel with this connection file.

    Creates the kernel's scratch directories under ``runtime_dir``. The caller adds
    ``lifeline_fd``. Shared by :class:`LocalKernel` and the Kernel Gateway's kernel spec
    (``_gateway_kernel.py``), so that both run kernels the same way. ``tmp_dir``: the host
    directory that becomes the sandbox's ``/tmp`` (the session's tmpfs); ``workspace_quota``:
    the workspace lives on that size-limited filesystem too.
    """
    scratch = runtime_dir / "scratch"
    for sub in ("tmp", "ipython", "matplotlib", "cache"):
        (scratch / sub).mkdir(parents=True, exist_ok=True)
    kernel_runtime, kernel_connection = str(runtime_dir), str(connection_file)
    if isolate:  # the kernel sees its runtime directory at /run/kernel (same sockets, through a bind mount)
        kernel_runtime = KERNEL_RUNTIME_DIR
        info = json.loads(connection_file.read_text())
        if info.get("transport") == "ipc":
            info["ip"] = info["ip"].replace(str(runtime_dir), kernel_runtime, 1)
        inside = runtime_dir / "connection-sandbox.json"
        inside.touch(mode=0o600)
        inside.write_text(json.dumps(info))
        kernel_connection = f"{kernel_runtime}/{inside.name}"
    env = kernel_environment(
        home="/mnt/data" if isolate else str(workspace),
        tmpdir="/tmp" if isolate else str(scratch / "tmp"),
        scratch=f"{kernel_runtime}/scratch",
        extra=extra_env,
    )
    plan = None
    if isolate and cgroups:
        plan = plan_session_cgroups(limits.max_processes, limits.total_memory_bytes, f"glm-agent-{runtime_dir.name}")
    return {
        "isolate": isolate,
        "workspace": str(workspace),
        "runtime_dir": str(runtime_dir),
        "runtime_dir_inside": KERNEL_RUNTIME_DIR,
        "tmp_dir": str(tmp_dir) if tmp_dir is not None else None,
        "workspace_bytes": limits.workspace_bytes,
        "workspace_quota": workspace_quota,
        "cwd": "/mnt/data" if isolate else str(workspace),
        "env": env,
        "argv": [
            sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            kernel_connection,
            "--HistoryManager.enabled=False",
        ],
        "limits": limits.rlimits(),
        "cgroups": plan.spec() if plan is not None and plan.dirs else {},
        "remove_if_orphaned": [str(path) for path in remove_if_orphaned or []],
        "unmount_if_orphaned": list(unmount_if_orphaned or []),
        "readonly_paths": [*python_paths(), *map(str, readonly_paths)] if isolate else [],
        "seccomp": True,
    }


class _KernelProcess:
    """One started kernel: the supervisor process, its lifeline, runtime dir and client sockets.

    ``kill`` is idempotent and touches no session state, so that it can run from
    ``weakref.finalize`` at garbage collection or interpreter exit.
    """

    def __init__(self, proc: subprocess.Popen[bytes], lifeline: int, runtime_dir: Path, log_path: Path) -> None:
        self.proc = proc
        self.lifeline: int | None = lifeline
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
                    log.warning("kernel supervisor %d did not exit; killing it", self.proc.pid)
                    self.proc.kill()
                    self.proc.wait(5)
            finally:
                if self.lifeline is not None:
                    os.close(self.lifeline)
                    self.lifeline = None
                shutil.rmtree(self.runtime_dir, ignore_errors=True)
                for path in self.cgroup_dirs:
                    try:
                        os.rmdir(path)
                    except OSError:
                        pass  # gone already (the usual case), or still busy


class LocalKernel:
    """A kernel process on this machine (implements :class:`KernelBackend`).

    ``dirs`` holds the workspace, the sandbox's ``/tmp`` and the kernels' runtime directories
    (see :class:`~glm_agent.interpreter._workspace.SessionDirs`); without it the kernel makes its
    own around ``workspace`` and removes them at shutdown. ``env``: extra environment variables
    (on top of the allowlist); ``readonly_paths``: host folders the isolated kernel may read.
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
    ) -> None:
        """``temporary_workspace``: if this process dies without closing the kernel, the
        supervisor removes the workspace along with the runtime directory."""
        self._own_dirs = dirs is None
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
        return "/mnt/data" if self.isolate else str(self._workspace)

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
            str(connection_file), ip=str(runtime_dir / "kernel"), transport="ipc",
            shell_port=1, iopub_port=2, stdin_port=3, control_port=4, hb_port=5,
        )  # fmt: skip
        remove, unmount = self.dirs.orphan_paths(self.temporary_workspace)
        spec = launch_spec(
            workspace=self._workspace, runtime_dir=runtime_dir, connection_file=connection_file,
            limits=self.limits, isolate=self.isolate, extra_env=self._extra_env,
            readonly_paths=self._readonly_paths, tmp_dir=self.dirs.tmp if self.isolate else None,
            workspace_quota=self.dirs.workspace_on_quota, remove_if_orphaned=[str(runtime_dir), *remove],
            unmount_if_orphaned=unmount,
        )  # fmt: skip
        read_fd, write_fd = os.pipe()
        spec["lifeline_fd"] = read_fd
        log_path = runtime_dir / "kernel.log"
        try:
            with open(log_path, "wb") as log_file:
                proc = subprocess.Popen(
                    launcher_argv(spec), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    pass_fds=(read_fd,), start_new_session=True, cwd=str(runtime_dir),
                )  # fmt: skip
        except OSError as exc:
            os.close(write_fd)
            shutil.rmtree(runtime_dir, ignore_errors=True)
            raise InterpreterError(f"could not launch a kernel with {sys.executable}: {exc}") from exc
        finally:
            os.close(read_fd)
        log.debug("kernel supervisor %d started in %s (isolated=%s)", proc.pid, runtime_dir, self.isolate)
        process = _KernelProcess(proc, write_fd, runtime_dir, log_path)
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
        if remove_dirs and self._own_dirs:
            self.dirs.remove(remove_workspace=False)

    # -- running ----------------------------------------------------------------------------
    def _client(self) -> BlockingKernelClient:
        if self._process is None or self._process.client is None:
            raise InterpreterError("the kernel is not running; start() it first")
        return self._process.client

    def execute(self, code: str, *, silent: bool = False, user_expressions: dict[str, str] | None = None) -> str:
        try:
            msg_id: str = self._client().execute(
                code, silent=silent, store_history=not silent, allow_stdin=False, stop_on_error=False,
                user_expressions=user_expressions or {},
            )  # fmt: skip
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

    def death_reason(self) -> str:
        if self._process is None:
            return "not started"
        returncode = self._process.proc.poll()
        return describe_exit(returncode, self.limits, oom_killed=bool(self._process.oom_kills()))

    def log_tail(self) -> str:
        """The kernel process's own stdout/stderr (the last part)."""
        return self._process.log_tail() if self._process else ""
