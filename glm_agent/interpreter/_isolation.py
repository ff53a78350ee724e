"""Sandbox isolation: what holds, whether this machine can do it (probed once), and the launcher command.

Isolated mode (Linux, root) runs each kernel in its own mount, network, PID, IPC and UTS
namespaces, in a root filesystem built from an allowlist (the system directories, chosen
``/etc`` files, the kernel's Python, the workspace at ``/mnt/data``, a private ``/tmp``),
with no capabilities, ``no_new_privs``, a seccomp filter, and cgroups that bound the
session's processes and memory (see ``_launch.py`` and the README's attack table). What
this host allows is probed once per process, by starting the launcher in probe mode, and
reported by :class:`Isolation`.

It is not a VM: the kernel shares the host's Linux kernel, so a kernel exploit escapes it.
For that boundary run the kernels on a gateway inside gVisor or Kata (``sandbox/README.md``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glm_agent.errors import InterpreterError
from glm_agent.interpreter._cgroups import cgroup_parents
from glm_agent.interpreter._launcher import launch_spec, launcher_argv, runtime_root
from glm_agent.interpreter._limits import Limits, MiB
from glm_agent.interpreter._workspace import SessionDirs

__all__ = ["Isolation", "check_readonly_paths", "detect_isolation", "resolve_isolation", "NO_ISOLATION"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Isolation:
    """How a session's kernel is isolated, protection by protection.

    ``mode`` is ``"namespaces"`` or ``"none"``; ``reason`` says why not. In ``namespaces`` mode
    the network, filesystem allowlist, own PIDs and dropped privileges always hold; the others
    (``seccomp``, ``max_processes``, ``total_memory``, ``workspace_quota``) only where this host
    allows them, and ``notes`` say what is missing and why. ``environment`` (the allowlisted
    environment) holds in every mode.
    """

    mode: str
    reason: str = ""
    seccomp: bool = False
    max_processes: bool = False
    total_memory: bool = False
    workspace_quota: bool = False
    notes: tuple[str, ...] = ()

    @classmethod
    def from_report(cls, report: dict[str, Any], *, workspace_quota: bool, notes: tuple[str, ...] = ()) -> Isolation:
        """Namespaces isolation with what the sandbox launcher's JSON report says held."""
        return cls(
            "namespaces",
            seccomp=bool(report.get("seccomp")),
            max_processes="max_processes" in report,
            total_memory="total_memory_bytes" in report,
            workspace_quota=workspace_quota,
            notes=notes,
        )

    @property
    def enabled(self) -> bool:
        return self.mode == "namespaces"

    @property
    def network(self) -> bool:
        """No network from the kernel (only a loopback interface that is down)."""
        return self.enabled

    @property
    def filesystem(self) -> bool:
        """An allowlisted, read-only root; only the workspace (/mnt/data) and /tmp are writable."""
        return self.enabled

    @property
    def processes(self) -> bool:
        """Own PID namespace: the kernel sees and can signal only its own processes."""
        return self.enabled

    @property
    def privileges(self) -> bool:
        """No capabilities, no_new_privs: no setuid, no mounts, no raising limits."""
        return self.enabled

    @property
    def environment(self) -> bool:
        """The kernel's environment is an allowlist (no host secrets); true in every mode."""
        return True

    def holds(self) -> dict[str, bool]:
        """Every protection by name: whether it holds for this session."""
        names = ("network", "filesystem", "processes", "privileges", "environment", "seccomp")
        found = {name: bool(getattr(self, name)) for name in names}
        found.update(
            max_processes=self.max_processes, total_memory=self.total_memory, workspace_quota=self.workspace_quota
        )
        return found

    def __str__(self) -> str:
        if not self.enabled:
            return f"none ({self.reason})" if self.reason else "none"
        held = ", ".join(name for name, ok in self.holds().items() if ok)
        missing = [name for name, ok in self.holds().items() if not ok]
        text = f"namespaces ({held})"
        if missing:
            text += f"; not here: {', '.join(missing)}"
        return text


NO_ISOLATION = Isolation("none", "isolation was turned off (isolate=False)")

_cache: Isolation | None = None
_cache_lock = threading.Lock()


def detect_isolation() -> Isolation:
    """Probe once per process whether namespaces work here; cached."""
    global _cache
    with _cache_lock:
        if _cache is None:
            _cache = _probe()
            if _cache.enabled:
                logger.info("kernel isolation available: %s", _cache)
            else:
                logger.warning("kernel isolation is not available, kernels run unisolated: %s", _cache.reason)
        return _cache


def _probe() -> Isolation:
    if not sys.platform.startswith("linux"):
        return Isolation("none", f"needs Linux namespaces; this is {sys.platform}")
    if not os.path.isdir("/usr"):
        return Isolation("none", "there is no /usr to build the sandbox's root from")
    limits = Limits(max_processes=64, total_memory_bytes=512 * MiB, workspace_bytes=16 * MiB)
    dirs = SessionDirs.create(runtime_root(), size=limits.workspace_bytes, mount=True)
    runtime_dir = dirs.new_runtime_dir()
    server = socket.socket()
    read_fd, write_fd = os.pipe()
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        (runtime_dir / "connection.json").write_text(json.dumps({"transport": "ipc", "ip": f"{runtime_dir}/kernel"}))
        spec = launch_spec(
            workspace=dirs.workspace,
            runtime_dir=runtime_dir,
            connection_file=runtime_dir / "connection.json",
            limits=limits,
            isolate=True,
            tmp_dir=dirs.tmp,
            workspace_quota=dirs.workspace_on_quota,
        )
        spec["probe"], spec["argv"], spec["lifeline_fd"] = True, [sys.executable], read_fd
        spec["probe_port"], spec["probe_hidden"] = server.getsockname()[1], ["/etc/shadow", str(runtime_root())]
        try:
            proc = subprocess.run(
                launcher_argv(spec), pass_fds=(read_fd,), capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Isolation("none", f"the isolation probe failed to run: {exc}")
        if proc.returncode != 0 or not (dirs.workspace / ".probe").is_file():
            detail = " ".join(proc.stderr.split())[-300:] or f"exit status {proc.returncode}"
            return Isolation("none", f"Linux namespaces are not usable here: {detail}")
        try:
            report = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            report = {}
        notes = []
        if "max_processes" not in report:
            notes.append("max_processes: no writable pids cgroup (v1, or v2 delegated to this process's cgroup)")
        if "total_memory_bytes" not in report:
            notes.append("total_memory_bytes: no writable memory cgroup; memory is bounded per process only")
        if not dirs.quota:
            notes.append("workspace_bytes: cannot mount a size-limited tmpfs; writes are bounded per file only")
        if not report.get("seccomp"):
            notes.append("seccomp: no filter (supported on x86-64 Linux only)")
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("isolation probe: report %s, cgroup parents %s", report, cgroup_parents())
        return Isolation.from_report(report, workspace_quota=dirs.quota, notes=tuple(notes))
    finally:
        server.close()
        os.close(read_fd)
        os.close(write_fd)
        dirs.remove()


def check_readonly_paths(paths: Sequence[str | Path]) -> tuple[str, ...]:
    """``readonly_paths``: existing absolute folders or files, resolved (links followed on the host, once)."""
    if isinstance(paths, (str, Path)):
        raise TypeError("readonly_paths must be a list of paths, e.g. readonly_paths=['/data/sales']")
    resolved = []
    for path in paths:
        real = Path(path).expanduser().resolve()
        if not real.exists():
            raise InterpreterError(f"readonly_paths: {path} does not exist; pass folders or files that exist")
        if real == Path("/"):
            raise InterpreterError("readonly_paths: '/' would show the whole host; pass the folders the code needs")
        resolved.append(str(real))
    return tuple(resolved)


def resolve_isolation(isolate: bool | None) -> Isolation:
    """``None``: isolate where available (else fall back, with a warning); ``True``: require it; ``False``: off."""
    if isolate is False:
        return NO_ISOLATION
    detected = detect_isolation()
    if isolate is True and not detected.enabled:
        raise InterpreterError(
            f"isolation was required (isolate=True) but is not available here: {detected.reason}. "
            "Pass isolate=None to fall back to an unisolated kernel, or run as root on Linux."
        )
    return detected
