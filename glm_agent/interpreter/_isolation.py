"""Sandbox isolation: what it is, whether this machine can do it (probed once), and the launcher command.

Isolated mode (Linux, root, namespaces available) puts each kernel in its own network,
mount and PID namespaces: no network at all (only a loopback interface that is down;
the host talks to the kernel over ZMQ ``ipc`` sockets, which are files), every host
mount read-only, the workspace read-write at ``/mnt/data``, private ``/tmp`` and
``/dev/shm``, a ``/proc`` that shows only the sandbox's processes, and no capabilities
(so root in the sandbox cannot remount, leave the namespaces or raise its limits).

It does NOT hide what the host filesystem contains (the code can read any file the
host user can read, e.g. other users' readable files, the project's code), does not
limit total memory across processes (rlimits are per process; use a cgroup or a
container for that), and is not a defence against kernel exploits. For untrusted code
on a shared machine run the kernels on a Kernel Gateway inside a VM or container.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glm_agent.errors import InterpreterError

__all__ = ["Isolation", "detect_isolation", "resolve_isolation", "launcher_argv", "runtime_root", "NO_ISOLATION"]

log = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("_launch.py")


@dataclass(frozen=True)
class Isolation:
    """How a kernel is isolated. ``mode`` is ``"namespaces"`` or ``"none"``; ``reason`` says why not."""

    mode: str
    reason: str = ""

    @property
    def enabled(self) -> bool:
        return self.mode == "namespaces"

    @property
    def network(self) -> bool:
        """No network from the kernel."""
        return self.enabled

    @property
    def filesystem(self) -> bool:
        """Host filesystem read-only; workspace at /mnt/data."""
        return self.enabled

    @property
    def processes(self) -> bool:
        """Own PID namespace: the kernel sees and can signal only its own processes."""
        return self.enabled

    def __str__(self) -> str:
        if self.enabled:
            return "namespaces (no network, read-only filesystem with the workspace at /mnt/data, own PIDs)"
        return f"none ({self.reason})" if self.reason else "none"


NO_ISOLATION = Isolation("none", "isolation was turned off (isolate=False)")

_cache: Isolation | None = None
_cache_lock = threading.Lock()


def runtime_root() -> Path:
    """Where kernels keep their sockets, connection files and scratch space (private to this user)."""
    root = Path(tempfile.gettempdir()) / f"glm-agent-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


#: what the sandbox covers with private, empty filesystems
SANDBOX_OVERLAYS = ("/tmp", "/dev/shm", "/mnt")


def hidden_python_paths() -> list[str]:
    """Directories this Python needs that the sandbox's private ``/tmp``, ``/dev/shm`` or ``/mnt``
    would hide (e.g. a virtual environment or a checkout under ``/tmp``, as CI clones often are).

    The launcher binds them back read-only at the same paths, so the kernel's interpreter and
    packages stay importable. An overlay root itself (say ``sys.path[0] == "/tmp"``) is never
    re-exposed.
    """

    def under(path: str, root: str) -> bool:
        return path == root or path.startswith(root.rstrip("/") + "/")

    candidates = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable)}
    candidates.update(p for p in sys.path if p)
    kept: list[str] = []
    for path in sorted({os.path.abspath(p) for p in candidates}, key=len):
        if path in SANDBOX_OVERLAYS or not os.path.isdir(path):
            continue
        if any(under(path, root) for root in SANDBOX_OVERLAYS) and not any(under(path, k) for k in kept):
            kept.append(path)
    return kept


def launcher_argv(spec: dict[str, Any]) -> list[str]:
    """The command that starts the launcher/supervisor with this spec (stdlib only, no site)."""
    return [sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(spec)]


def detect_isolation() -> Isolation:
    """Probe once per process whether namespaces work here; cached."""
    global _cache
    with _cache_lock:
        if _cache is None:
            _cache = _probe()
            if _cache.enabled:
                log.info("kernel isolation available: %s", _cache)
            else:
                log.warning("kernel isolation is not available, kernels run unisolated: %s", _cache.reason)
        return _cache


def _probe() -> Isolation:
    if not sys.platform.startswith("linux"):
        return Isolation("none", f"needs Linux namespaces; this is {sys.platform}")
    if not os.path.isdir("/mnt"):
        return Isolation("none", "there is no /mnt directory to mount the workspace under")
    root = runtime_root()
    workspace = Path(tempfile.mkdtemp(prefix="probe-ws-", dir=root))
    runtime_dir = Path(tempfile.mkdtemp(prefix="probe-rt-", dir=root))
    server = socket.socket()
    read_fd, write_fd = os.pipe()
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        spec = {
            "isolate": True,
            "probe": True,
            "workspace": str(workspace),
            "runtime_dir": str(runtime_dir),
            "tmpfs_bytes": 16 * 1024 * 1024,
            "cwd": "/mnt/data",
            "env": {},
            "argv": [],
            "limits": {},
            "lifeline_fd": read_fd,
            "probe_port": server.getsockname()[1],
            "probe_readonly_dir": str(LAUNCHER.parent),
            "readonly_paths": hidden_python_paths(),
        }
        try:
            proc = subprocess.run(
                launcher_argv(spec), pass_fds=(read_fd,), capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Isolation("none", f"the isolation probe failed to run: {exc}")
        if proc.returncode == 0 and (workspace / ".probe").is_file():
            return Isolation("namespaces")
        detail = " ".join(proc.stderr.split())[-300:] or f"exit status {proc.returncode}"
        return Isolation("none", f"Linux namespaces are not usable here: {detail}")
    finally:
        server.close()
        os.close(read_fd)
        os.close(write_fd)
        shutil.rmtree(workspace, ignore_errors=True)
        shutil.rmtree(runtime_dir, ignore_errors=True)


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
