"""The kernel command of the Kernel Gateway's ``glm-agent-python`` kernel spec (``sandbox/kernels/``).

A Jupyter Kernel Gateway starts ``python -m glm_agent.interpreter._gateway_kernel
--connection-file {connection_file} ...`` for every kernel. This wrapper runs the kernel
exactly like :class:`~glm_agent.interpreter.LocalKernel` does (same launcher/supervisor,
rlimits, namespaces, scratch directories; :func:`~glm_agent.interpreter._local.launch_spec`)
and stands in for the host process towards the supervisor: it holds the lifeline (if the
gateway kills this wrapper, the supervisor kills the kernel), forwards the gateway's
SIGINT (interrupt) and maps SIGTERM to a kill; it gets SIGTERM when the gateway process
dies, so kernels do not outlive their gateway.

Layout, under the gateway's runtime (connection) directory ``R``:

- ``R/kernel-ID.json``: the gateway's connection file (ZMQ ``ipc`` transport);
- ``R/glm-agent/kernels/ID/``: this kernel's sockets, scratch space and connection file;
  the gateway's socket paths ``R/kernel-ID-ipc-N`` are symlinks to the sockets here,
  so that an isolated kernel sees its own directory and nothing else of ``R``;
- ``R/glm-agent/workspaces/SESSION/``: the workspace (``/mnt/data``), named by the
  client's ``KERNEL_GLM_AGENT_SESSION`` (else by the kernel id), so that it survives
  kernel restarts; removed when the kernel ends and it is empty (the client empties it
  when it closes the session);
- ``R/glm-agent/kernels/ID.exit``: how the previous kernel of this id died, handed to
  its replacement as ``GLM_AGENT_LAST_EXIT`` (the client reads it to say why).

Isolation needs ``ipc`` transport (an isolated kernel has no network, so TCP from the
gateway cannot reach it) and ``R`` under ``/tmp`` or ``/dev/shm`` (which the sandbox
replaces with private ones: other kernels' connection files, sockets and workspaces stay
invisible). The wrapper refuses to start an isolated kernel otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from glm_agent.interpreter._isolation import detect_isolation, launcher_argv
from glm_agent.interpreter._launch import PR_SET_PDEATHSIG, _prctl
from glm_agent.interpreter._limits import Limits
from glm_agent.interpreter._local import describe_exit, launch_spec

__all__ = ["main", "SESSION_ENV", "LAST_EXIT_ENV"]

log = logging.getLogger(__name__)

SESSION_ENV = "KERNEL_GLM_AGENT_SESSION"
LAST_EXIT_ENV = "GLM_AGENT_LAST_EXIT"
_SESSION_NAME = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
_PRIVATE_IN_SANDBOX = ("/tmp", "/dev/shm")
_SECRET_NAME = re.compile(r"^(KG|EG)_|TOKEN|SECRET|PASSWORD", re.IGNORECASE)


class LaunchError(Exception):
    """The kernel cannot be started as configured; the message says what to change."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m glm_agent.interpreter._gateway_kernel")
    parser.add_argument("--connection-file", required=True, help="the gateway's {connection_file}")
    parser.add_argument(
        "--isolate", choices=("auto", "required", "off"), default="auto",
        help="namespaces where available (auto), or refuse to start without them (required), or never",
    )  # fmt: skip
    defaults = Limits()
    for name in ("memory_bytes", "cpu_seconds", "open_files", "file_size_bytes", "tmpfs_bytes"):
        parser.add_argument(
            "--" + name.replace("_", "-"), type=lambda v: None if v == "none" else int(v),
            default=getattr(defaults, name), help=f"Limits.{name} ('none' for no limit)",
        )  # fmt: skip
    return parser.parse_args(argv)


def _isolated(mode: str) -> bool:
    if mode == "off":
        return False
    isolation = detect_isolation()
    if mode == "required" and not isolation.enabled:
        raise LaunchError(f"isolation is required (--isolate required) but not available: {isolation.reason}")
    return isolation.enabled


def _hidden_in_sandbox(path: Path) -> bool:
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + "/") for root in _PRIVATE_IN_SANDBOX)


def _prepare(args: argparse.Namespace) -> tuple[dict, Path, Path, list[Path], Path]:
    """Directories, connection file and launcher spec; returns (spec, runtime_dir, workspace, links, exit_file)."""
    connection_file = Path(args.connection_file).resolve()
    info = json.loads(connection_file.read_text())
    kernel_id = connection_file.stem.removeprefix("kernel-")
    base = connection_file.parent / "glm-agent"
    isolate = _isolated(args.isolate)
    if isolate and info.get("transport") != "ipc":
        raise LaunchError(
            "an isolated kernel has no network, so the gateway must talk to it over ZMQ ipc: set "
            "c.KernelManager.transport = 'ipc' in the gateway's configuration (sandbox/kernelgateway_config.py does)"
        )
    if isolate and not _hidden_in_sandbox(base):
        raise LaunchError(
            f"the gateway's runtime directory {connection_file.parent} must be under /tmp or /dev/shm, which the "
            "sandbox replaces, so that kernels cannot see each other's connection files and workspaces "
            "(set JUPYTER_RUNTIME_DIR; sandbox/kernelgateway_config.py does)"
        )
    session = os.environ.get(SESSION_ENV, "")
    workspace = base / "workspaces" / (session if _SESSION_NAME.match(session) else kernel_id)
    runtime_dir = base / "kernels" / kernel_id
    shutil.rmtree(runtime_dir, ignore_errors=True)  # left by a kernel of this id that was killed
    runtime_dir.mkdir(parents=True, mode=0o700)
    workspace.mkdir(parents=True, exist_ok=True)
    links: list[Path] = []
    if info.get("transport") == "ipc":
        for key in _PORTS:
            port = int(info[key])
            link = Path(f"{info['ip']}-{port}")
            link.unlink(missing_ok=True)
            link.symlink_to(runtime_dir / f"ipc-{port}")
            links.append(link)
        info["ip"] = str(runtime_dir / "ipc")
    kernel_connection = runtime_dir / "connection.json"
    kernel_connection.touch(mode=0o600)
    kernel_connection.write_text(json.dumps(info))
    limits = Limits(
        memory_bytes=args.memory_bytes, cpu_seconds=args.cpu_seconds, open_files=args.open_files,
        file_size_bytes=args.file_size_bytes, tmpfs_bytes=args.tmpfs_bytes,
    )  # fmt: skip
    exit_file = base / "kernels" / f"{kernel_id}.exit"
    extra_env = {}
    try:
        extra_env[LAST_EXIT_ENV] = exit_file.read_text()
        exit_file.unlink()
    except OSError:
        pass
    spec = launch_spec(
        workspace=workspace, runtime_dir=runtime_dir, connection_file=kernel_connection,
        limits=limits, isolate=isolate, extra_env=extra_env, remove_if_orphaned=[runtime_dir],
    )  # fmt: skip
    spec["limits_object"] = limits
    return spec, runtime_dir, workspace, links, exit_file


def _run(spec: dict) -> int:
    """Start the supervisor, relay signals, wait; the supervisor's exit status."""
    limits = spec.pop("limits_object")
    for name in [n for n in os.environ if _SECRET_NAME.search(n)]:
        del os.environ[name]  # the gateway's token and other secrets never reach the kernel
    read_fd, write_fd = os.pipe()
    spec["lifeline_fd"] = read_fd
    try:
        proc = subprocess.Popen(
            launcher_argv(spec), stdin=subprocess.DEVNULL, pass_fds=(read_fd,), start_new_session=True
        )
    finally:
        os.close(read_fd)

    def interrupt(_signum: int, _frame: object) -> None:
        try:
            os.kill(proc.pid, signal.SIGINT)  # the supervisor forwards it to the kernel's process group
        except OSError:
            pass

    def terminate(_signum: int, _frame: object) -> None:
        try:
            os.write(write_fd, b"q")  # deliberate: the supervisor kills the kernel and keeps the workspace
            os.close(write_fd)
        except OSError:
            pass

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    status = proc.wait()
    spec["exit_description"] = describe_exit(status, limits)
    try:
        os.close(write_fd)
    except OSError:
        pass
    return status


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="glm-agent gateway kernel: %(message)s")
    gateway = os.getppid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the gateway died (even SIGKILL): stop the kernel too
    if os.getppid() != gateway:
        return 1
    args = _parse(argv)
    try:
        spec, runtime_dir, workspace, links, exit_file = _prepare(args)
    except (LaunchError, OSError, ValueError, KeyError) as exc:
        log.error("cannot start the kernel: %s", exc)
        return 126
    try:
        status = _run(spec)
    finally:
        for link in links:
            link.unlink(missing_ok=True)
        shutil.rmtree(runtime_dir, ignore_errors=True)
        try:
            workspace.rmdir()  # only when empty: files stay for the session's next kernel
        except OSError:
            pass
    if status != 0:
        exit_file.write_text(spec["exit_description"])
        log.info("kernel %s ended: %s", runtime_dir.name, spec["exit_description"])
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(main())
