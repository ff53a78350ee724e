"""The host's side of the launcher contract (``_launch.py`` is the other): the spec, the command, the end.

Everything that starts a kernel through the launcher/supervisor — :class:`LocalKernel`, the
Kernel Gateway's kernel command and the isolation probe — builds its :class:`~glm_agent.interpreter._launch.LaunchSpec`
with :func:`launch_spec`, starts it with :func:`launcher_argv`, and reads how the kernel ended
with :func:`describe_exit` and :func:`read_oom_kills`.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from glm_agent.chatglm3.prompts import MNT_DATA
from glm_agent.interpreter._cgroups import plan_session_cgroups
from glm_agent.interpreter._environment import kernel_environment
from glm_agent.interpreter._limits import GiB, Limits

if TYPE_CHECKING:
    from glm_agent.interpreter._launch import LaunchSpec

__all__ = [
    "KERNEL_RUNTIME_DIR",
    "LAUNCHER",
    "runtime_root",
    "python_paths",
    "launch_spec",
    "launcher_argv",
    "describe_exit",
    "read_oom_kills",
    "die_with_parent",
]

LAUNCHER = Path(__file__).with_name("_launch.py")
_PR_SET_PDEATHSIG = 1


def runtime_root() -> Path:
    """Where kernels keep their sockets, connection files and scratch space (private to this user)."""
    root = Path(tempfile.gettempdir()) / f"glm-agent-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def launcher_argv(spec: LaunchSpec) -> list[str]:
    """The command that starts the launcher/supervisor with this spec (stdlib only, no site)."""
    return [sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(spec)]


def die_with_parent(signum: int) -> bool:
    """Ask Linux to send this process ``signum`` when its parent dies (prctl); False where it cannot."""
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    return prctl is not None and prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0


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
) -> LaunchSpec:
    """The launcher's spec (``_launch.LaunchSpec``) for an ipykernel with this connection file.

    Creates the kernel's scratch directories under ``runtime_dir``. The caller adds
    ``lifeline_fd``. Shared by :class:`~glm_agent.interpreter.LocalKernel`, the Kernel
    Gateway's kernel command (``_gateway_kernel.py``) and the isolation probe, so that all
    run kernels the same way. ``tmp_dir``: the host
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
        home=MNT_DATA if isolate else str(workspace),
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
        "cwd": MNT_DATA if isolate else str(workspace),
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
