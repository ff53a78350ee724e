"""Kernel-side set-up code, and running such code silently (any backend)."""

from __future__ import annotations

import base64
import io
import time
from typing import Any, BinaryIO

from glm_agent.errors import InterpreterError
from glm_agent.interpreter._backend import KernelBackend
from glm_agent.interpreter._observation import LISTED_ENTRIES
from glm_agent.interpreter._stream_log import KERNEL_CODE

__all__ = ["BOOTSTRAP", "REPORT_EXPRESSION", "run_silent", "start_kernel", "write_file"]

# Threads started by a cell keep that cell as their output's parent, so that what they print
# after the cell ended is not attributed to whichever cell runs then (ipykernel's default).
# After every (non-silent) cell: figures still open under a non-inline backend (``Agg``) are
# displayed and closed, as the inline backend does; files created or changed in the workspace
# are listed, and image files among them displayed when the cell displayed no image itself;
# the session's cgroup counters (``/run/glm-agent``) say whether a limit was hit. The report is
# read by the session with the user expression ``REPORT_EXPRESSION``.
BOOTSTRAP = (
    """
def __glm_agent_bootstrap():
    import os
    import sys
    import threading
    import warnings
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or getattr(threading.Thread.start, "_glm_agent", False):
        return
    original_start = threading.Thread.start

    def start(self, *args, **kwargs):
        try:
            parent = shell.get_parent()
        except Exception:
            parent = None
        if parent:
            run = self.run

            def run_with_parent(*a, **k):
                tokens = shell.set_thread_parent(parent)
                try:
                    return run(*a, **k)
                finally:
                    shell.reset_thread_parent(tokens)

            self.run = run_with_parent
        return original_start(self, *args, **kwargs)

    start._glm_agent = True
    threading.Thread.start = start

    warnings.filterwarnings("ignore", message=".*non-interactive, and thus cannot be shown")
    workspace = os.getcwd()
    images = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".svg": "image/svg+xml"}
    state = {"before": {}, "counters": {}, "shown": False, "report": {}}
    max_entries = __LISTED_ENTRIES__

    def snapshot():
        found, stack = {}, [workspace]
        while stack and len(found) < max_entries:
            top = stack.pop()
            try:
                entries = list(os.scandir(top))
            except OSError:
                continue
            for entry in entries:
                if top == workspace and entry.name == "outputs":
                    continue  # the session's own images
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                        found[entry.path] = (info.st_mtime_ns, info.st_size)
                except OSError:
                    pass
        return found

    def counters():
        values = {}
        for name, key in (("memory.oom_control", "oom_kill"), ("memory.events", "oom_kill"), ("pids.events", "max")):
            try:
                with open("/run/glm-agent/" + name) as fh:
                    for line in fh:
                        if line.startswith(key + " "):
                            values[key] = int(line.split()[1])
            except (OSError, ValueError):
                pass
        return values

    class Forget(dict):
        # IPython 9 keeps every printed piece of text and every displayed image of the session (for
        # its %notebook magic) in history_manager.outputs: 600,000 strings for a loop printing
        # 300,000 lines, counted against the session's memory. The session keeps outputs itself.
        def __contains__(self, key):
            return False

        def __getitem__(self, key):
            return []

    history = getattr(shell, "history_manager", None)
    if history is not None and hasattr(history, "outputs"):
        history.outputs = Forget()

    publisher = shell.display_pub
    original_publish = publisher.publish

    def publish(data, *args, **kwargs):
        if any(str(mime).startswith("image/") for mime in data or ()):
            state["shown"] = True
        return original_publish(data, *args, **kwargs)

    publisher.publish = publish

    def reap_ended_children():
        # Children that ended and that nothing waited for (a killed fork bomb) stay zombies, and a
        # pids cgroup counts zombies: near the session's process limit they are reaped, else the
        # next cell could not even start a thread.
        try:
            with open("/run/glm-agent/pids.max") as fh:
                limit = fh.read().strip()
            with open("/run/glm-agent/pids.current") as fh:
                current = int(fh.read())
        except (OSError, ValueError):
            return 0
        if not limit.isdigit() or current * 2 < int(limit):
            return 0
        reaped = 0
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped += 1
        return reaped

    def pre_run_cell(*_args):
        state["reaped"] = reap_ended_children()
        state["before"] = snapshot()
        state["counters"] = counters()
        state["shown"] = False

    def show_open_figures():
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None or "inline" in str(pyplot.get_backend()):
            return
        import base64
        import io

        from IPython.display import display

        for number in pyplot.get_fignums():
            figure = pyplot.figure(number)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", bbox_inches="tight")
            png = base64.b64encode(buffer.getvalue()).decode("ascii")
            display({"image/png": png, "text/plain": repr(figure)}, raw=True)
        pyplot.close("all")

    def post_run_cell(*_args):
        try:
            show_open_figures()
        except Exception as exc:
            print(f"[could not show the open figures: {exc}]", file=sys.stderr)
        after = snapshot()
        before = state["before"]
        changed = sorted(path for path, stamp in after.items() if before.get(path) != stamp)
        if not state["shown"]:
            import base64

            from IPython.display import display

            for path in changed:
                mime = images.get(os.path.splitext(path)[1].lower())
                if mime is None or after[path][1] > 10 * 1024 * 1024:
                    continue
                try:
                    with open(path, "rb") as fh:
                        raw = fh.read()
                except OSError:
                    continue
                value = raw.decode("utf-8", "replace") if mime == "image/svg+xml" else base64.b64encode(raw).decode()
                display({mime: value}, raw=True, metadata={"glm_agent_file": path})
        now = counters()
        report = {"files": changed, "more_files": len(after) >= max_entries, "reaped": state.get("reaped", 0)}
        for key, value in now.items():
            if value > state["counters"].get(key, 0):
                report[key] = value - state["counters"].get(key, 0)
        state["report"] = report

    shell.events.register("pre_run_cell", pre_run_cell)
    shell.events.register("post_run_cell", post_run_cell)
    shell.user_ns["_glm_agent_report"] = lambda: state["report"]
    shell.user_ns_hidden["_glm_agent_report"] = None


__glm_agent_bootstrap()
del __glm_agent_bootstrap
""".replace("__LISTED_ENTRIES__", str(LISTED_ENTRIES))
    + KERNEL_CODE
)

#: the user expression that returns a cell's report (files, limits hit) in its execute_reply
REPORT_EXPRESSION = {"glm_agent": "_glm_agent_report()"}


def start_kernel(backend: KernelBackend, timeout: float, *, restart: bool = False) -> None:
    """Start (or restart) ``backend``'s kernel and run the session set-up (:data:`BOOTSTRAP`) in it.

    A kernel that starts but fails its set-up is shut down again (not on a restart: the session
    that owns it decides), so a failed start leaves nothing running.
    """
    if restart:
        backend.restart(timeout)
        run_silent(backend, BOOTSTRAP, timeout)
        return
    backend.start(timeout)
    try:
        run_silent(backend, BOOTSTRAP, timeout)
    except BaseException:
        backend.shutdown()
        raise


def run_silent(backend: KernelBackend, code: str, timeout: float) -> None:
    """Execute set-up code without output or history; raise InterpreterError if it fails."""
    content = silent_reply(backend, code, timeout, during="during set-up", finish="finish its set-up")
    if content.get("status") != "ok":
        raise InterpreterError(f"kernel set-up code failed: {content.get('ename')}: {content.get('evalue')}")


def silent_reply(
    backend: KernelBackend,
    code: str,
    timeout: float,
    *,
    user_expressions: dict[str, str] | None = None,
    during: str = "",
    finish: str = "answer",
) -> dict[str, Any]:
    """Execute ``code`` silently and return its ``execute_reply`` content (``user_expressions`` evaluated after it).

    Raises InterpreterError when the kernel ends (``the kernel ended {during}``) or does not
    ``{finish}`` within ``timeout`` seconds; the reply's status is the caller's to read.
    """
    msg_id = backend.execute(code, silent=True, user_expressions=user_expressions)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = backend.recv(0.2)
        if item is None:
            if not backend.is_alive():
                where = f" {during}" if during else ""
                raise InterpreterError(f"the kernel ended{where} ({backend.death_reason()})")
            continue
        channel, msg = item
        if channel == "shell" and msg["parent_header"].get("msg_id") == msg_id:
            content: dict[str, Any] = msg["content"]
            return content
    raise InterpreterError(f"the kernel did not {finish} within {timeout:g} s")


def write_file(
    backend: KernelBackend, path: str, data: bytes | BinaryIO, timeout: float, chunk_size: int = 1024 * 1024
) -> int:
    """Write ``data`` (bytes, or a binary file read chunk by chunk) to ``path`` as the kernel sees it,
    through the kernel (a remote workspace); return the number of bytes written.

    Sent in base64 chunks (each one message under the gateway's WebSocket message limit),
    written to ``path.part`` and renamed at the end, so a failed upload leaves no half file.
    """
    reader = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    part = f"{path}.part"
    written = 0
    try:
        mode = "wb"
        while True:
            chunk = reader.read(chunk_size)
            if not chunk and mode == "ab":
                break
            encoded = base64.b64encode(chunk).decode("ascii")
            run_silent(
                backend,
                f"with open({part!r}, {mode!r}) as _f:\n    _f.write(__import__('base64').b64decode({encoded!r}))",
                timeout,
            )
            written += len(chunk)
            mode = "ab"
            if not chunk:
                break
        run_silent(backend, f"__import__('os').replace({part!r}, {path!r})", timeout)
    except InterpreterError as exc:
        try:
            run_silent(
                backend, f"__import__('os').path.exists({part!r}) and __import__('os').unlink({part!r})", timeout
            )
        except InterpreterError:
            pass
        raise InterpreterError(f"could not write {path} in the kernel: {exc}") from exc
    return written
