"""The kernel command of the Kernel Gateway's ``glm-agent-python`` kernel spec (``sandbox/kernels/``).

A Jupyter Kernel Gateway starts ``python -m glm_agent.interpreter._gateway_kernel
--connection-file {connection_file} ...`` for every kernel. This wrapper runs the kernel
exactly like :class:`~glm_agent.interpreter.LocalKernel` does (same launcher/supervisor,
rlimits, namespaces, scratch directories; :func:`~glm_agent.interpreter._launcher.launch_spec`)
and stands in for the host process towards the supervisor: it holds the lifeline (if the
gateway kills this wrapper, the supervisor kills the kernel), forwards the gateway's
SIGINT (interrupt) and maps SIGTERM to a kill; it gets SIGTERM when the gateway process
dies, so kernels do not outlive their gateway.

Layout, under the gateway's runtime (connection) directory ``R``:

- ``R/kernel-ID.json``: the gateway's connection file (ZMQ ``ipc`` transport);
- ``R/glm-agent/sessions/SESSION/``: the session's directories
  (:class:`~glm_agent.interpreter._workspace.SessionDirs`: a tmpfs of ``--workspace-bytes``
  when isolated), named by the client's ``KERNEL_GLM_AGENT_SESSION`` (else by the kernel id),
  so that they survive kernel restarts: ``data/`` (the workspace, ``/mnt/data``), ``tmp/``
  and ``kernels/ID/`` (this kernel's sockets, scratch space and connection file; the
  gateway's socket paths ``R/kernel-ID-ipc-N`` are symlinks to the sockets there). Unmounted
  and removed when a kernel ends with the workspace empty (the client empties it when it
  closes the session);
- ``R/glm-agent/exits/ID``: how the previous kernel of this id died and the end of its last
  cell's output (JSON), handed to its replacement as ``GLM_AGENT_LAST_EXIT`` (the client reads
  it to say why, and to keep output the kernel printed but never sent).

The kernel's environment is the same allowlist as a local kernel's, plus the variables the
client sent as ``KERNEL_GLM_AGENT_ENV`` (JSON; ``CodeInterpreter(env=...)``); nothing of the
gateway's own environment (its token) reaches it.

Isolation needs ``ipc`` transport (an isolated kernel has no network, so TCP from the
gateway cannot reach it) and ``R`` under ``/tmp`` or ``/dev/shm`` (hidden from every
sandbox). The wrapper refuses to start an isolated kernel otherwise.
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
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from glm_agent.interpreter._environment import check_env
from glm_agent.interpreter._gateway_protocol import KERNEL_ENV_ENV, LAST_EXIT_ENV, LAST_OUTPUT_BYTES, SESSION_ENV
from glm_agent.interpreter._isolation import detect_isolation
from glm_agent.interpreter._launcher import describe_exit, die_with_parent, launch_spec, launcher_argv, read_oom_kills
from glm_agent.interpreter._limits import Limits
from glm_agent.interpreter._stream_log import OUTPUT_FD_ENV, StreamLog, log_to_json, new_log, read_log
from glm_agent.interpreter._workspace import SessionDirs

if TYPE_CHECKING:
    from glm_agent.interpreter._launch import LaunchSpec

__all__ = ["main"]

logger = logging.getLogger(__name__)

_SESSION_NAME = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
_PRIVATE_IN_SANDBOX = ("/tmp", "/dev/shm")


class LaunchError(Exception):
    """The kernel cannot be started as configured; the message says what to change."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m glm_agent.interpreter._gateway_kernel")
    parser.add_argument("--connection-file", required=True, help="the gateway's {connection_file}")
    parser.add_argument(
        "--isolate",
        choices=("auto", "required", "off"),
        default="auto",
        help="namespaces where available (auto), or refuse to start without them (required), or never",
    )
    defaults = Limits()
    for name in [f.name for f in fields(Limits)]:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=lambda v: None if v == "none" else int(v),
            default=getattr(defaults, name),
            help=f"Limits.{name} ('none' for no limit)",
        )
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


def _prepare(args: argparse.Namespace) -> tuple[LaunchSpec, Limits, SessionDirs, Path, list[Path], Path]:
    """Directories, connection file and launcher spec; returns (spec, limits, dirs, runtime_dir, links, exit_file)."""
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
            f"the gateway's runtime directory {connection_file.parent} must be under /tmp or /dev/shm, so that "
            "kernels cannot reach each other's connection files and workspaces "
            "(set JUPYTER_RUNTIME_DIR; sandbox/kernelgateway_config.py does)"
        )
    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
    session = os.environ.get(SESSION_ENV, "")
    (base / "sessions").mkdir(parents=True, exist_ok=True)
    dirs = SessionDirs.create(
        base / "sessions",
        size=limits.workspace_bytes,
        mount=isolate,
        name=session if _SESSION_NAME.match(session) else kernel_id,
    )
    runtime_dir = dirs.new_runtime_dir(kernel_id)
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
    (base / "exits").mkdir(exist_ok=True)
    exit_file = base / "exits" / kernel_id
    extra_env = _client_env()
    try:
        extra_env[LAST_EXIT_ENV] = exit_file.read_text()
        exit_file.unlink()
    except OSError:
        pass
    spec = launch_spec(
        workspace=dirs.workspace,
        runtime_dir=runtime_dir,
        connection_file=kernel_connection,
        limits=limits,
        isolate=isolate,
        extra_env=extra_env,
        tmp_dir=dirs.tmp if isolate else None,
        workspace_quota=dirs.workspace_on_quota,
        remove_if_orphaned=[runtime_dir],
    )
    return spec, limits, dirs, runtime_dir, links, exit_file


def _client_env() -> dict[str, str]:
    """The variables the client asked for (``CodeInterpreter(env=...)``), sent as JSON in ``KERNEL_GLM_AGENT_ENV``."""
    text = os.environ.get(KERNEL_ENV_ENV)
    if not text:
        return {}
    try:
        return check_env(json.loads(text))
    except (ValueError, TypeError) as exc:
        raise LaunchError(f"{KERNEL_ENV_ENV} is not a JSON object of variable names to strings: {exc}") from exc


def _run(spec: LaunchSpec, limits: Limits) -> tuple[int, str, StreamLog]:
    """Start the supervisor, relay signals, wait; the supervisor's exit status, the kernel's end in words
    and its last cell's stream log (``_stream_log.py``)."""
    read_fd, write_fd = os.pipe()
    spec["lifeline_fd"] = read_fd
    stream_log = new_log()
    spec["env"][OUTPUT_FD_ENV] = str(stream_log)
    try:
        proc = subprocess.Popen(
            launcher_argv(spec), stdin=subprocess.DEVNULL, pass_fds=(read_fd, stream_log), start_new_session=True
        )
    except BaseException:
        os.close(stream_log)
        raise
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
    oom_killed = status == -signal.SIGKILL and read_oom_kills(Path(spec["runtime_dir"])) > 0
    try:
        os.close(write_fd)
    except OSError:
        pass
    output = read_log(stream_log)
    os.close(stream_log)
    return status, describe_exit(status, limits, oom_killed=oom_killed), output


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="glm-agent gateway kernel: %(message)s")
    gateway = os.getppid()
    die_with_parent(signal.SIGTERM)  # the gateway died (even SIGKILL): stop the kernel too
    if os.getppid() != gateway:
        return 1
    args = _parse(argv)
    try:
        spec, limits, dirs, runtime_dir, links, exit_file = _prepare(args)
    except (LaunchError, OSError, ValueError, KeyError) as exc:
        logger.error("cannot start the kernel: %s", exc)
        return 126
    try:
        status, ending, output = _run(spec, limits)
    finally:
        for link in links:
            link.unlink(missing_ok=True)
        shutil.rmtree(runtime_dir, ignore_errors=True)
        try:
            empty = not any(dirs.workspace.iterdir())
        except OSError:
            empty = True
        if empty:  # only when empty: files stay for the session's next kernel
            dirs.remove()
    if status != 0:  # for the replacement (LAST_EXIT_ENV); small enough for an environment variable
        exit_file.write_text(json.dumps({"ending": ending, "output": log_to_json(output, LAST_OUTPUT_BYTES)}))
        logger.info("kernel %s ended: %s", runtime_dir.name, ending)
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(main())
