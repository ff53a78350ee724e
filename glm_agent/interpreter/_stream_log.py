"""Output a dying kernel printed but never sent: a log of the current cell's stdout/stderr.

ipykernel sends stream text over ZMQ from a background thread, every 0.2 s. A kernel that
ends abruptly (``os._exit``, a segmentation fault, the memory limit's SIGKILL, our own kill
after a timeout) takes with it what it printed last, even text it flushed: the message can
still sit in ZMQ's queue. So the kernel also writes every piece of stream text, synchronously,
to a memory file the host made and passed down (``GLM_AGENT_OUTPUT_FD``); what a write()
system call put there survives the process. When the kernel dies the host reads the log and
the session adds what never arrived (:meth:`OutputCollector.recover`).

The log holds one cell (emptied when a cell starts) and at most :data:`LOG_BYTES`: when it
would grow past that it starts over with a record of how many characters of each stream it
dropped. Records: ``o``/``e`` + 8 hex digits (byte length) + UTF-8 text, or ``s`` + two times
8 hex digits (characters of stdout and stderr before the log's start). The kernel's code can
write anything there itself: the host reads at most :data:`LOG_BYTES` plus one record, stops
at the first malformed record, and uses the log only where it lines up with what arrived.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "KERNEL_CODE",
    "LOG_BYTES",
    "OUTPUT_FD_ENV",
    "StreamLog",
    "log_from_json",
    "log_tail",
    "log_to_json",
    "new_log",
    "read_log",
]

OUTPUT_FD_ENV = "GLM_AGENT_OUTPUT_FD"
LOG_BYTES = 1024 * 1024
_PIECE_CHARS = LOG_BYTES // 8  # one write's text is cut to its last characters (at most 4 UTF-8 bytes each)
_STREAMS = {b"o": "stdout", b"e": "stderr"}

# Kernel side, run once per kernel (after the bootstrap). It is the ``echo`` of ipykernel's
# sys.stdout and sys.stderr (written before the text is buffered for sending), so C-level
# output ipykernel captures from the file descriptors is logged too.
KERNEL_CODE = (
    """
def __glm_agent_keep_output():
    import os
    import sys
    import threading
    from IPython import get_ipython

    try:
        fd = int(os.environ["__ENV__"])
        os.fstat(fd)
    except (KeyError, ValueError, OSError):
        return
    shell = get_ipython()
    lock = threading.Lock()
    state = {"bytes": 0, "chars": {b"o": 0, b"e": 0}, "on": True}

    def restart(skipped=0, tag=b"o"):
        state["chars"][tag] += skipped
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, 0)
        os.write(fd, b"s%08x%08x" % (state["chars"][b"o"], state["chars"][b"e"]))
        state["bytes"] = 17

    def keep(tag, text):
        with lock:
            if not state["on"]:
                return
            try:
                if len(text) > __PIECE__:
                    restart(len(text) - __PIECE__, tag)
                    text = text[-__PIECE__:]
                data = text.encode("utf-8", "surrogatepass")
                if state["bytes"] + len(data) + 9 > __LOG_BYTES__:
                    restart()
                os.write(fd, tag + b"%08x" % len(data) + data)
                state["bytes"] += len(data) + 9
                state["chars"][tag] += len(text)
            except (OSError, UnicodeError):
                state["on"] = False

    class Echo:  # ipykernel writes every piece of a stream's text to its echo first, synchronously

        def __init__(self, tag, previous):
            self.tag, self.previous = tag, previous

        def write(self, text):
            if isinstance(text, str) and text:
                keep(self.tag, text)
            if self.previous is not None:
                self.previous.write(text)

        def flush(self):
            if self.previous is not None:
                self.previous.flush()

    def new_cell(*_args):
        with lock:
            state["chars"] = {b"o": 0, b"e": 0}
            if state["on"]:
                try:
                    restart()
                except OSError:
                    state["on"] = False

    for stream, tag in ((sys.stdout, b"o"), (sys.stderr, b"e")):
        if hasattr(stream, "echo") and not isinstance(stream.echo, Echo):
            stream.echo = Echo(tag, stream.echo)
    shell.events.register("pre_run_cell", new_cell)


__glm_agent_keep_output()
del __glm_agent_keep_output
""".replace("__ENV__", OUTPUT_FD_ENV)
    .replace("__PIECE__", str(_PIECE_CHARS))
    .replace("__LOG_BYTES__", str(LOG_BYTES))
)


@dataclass
class StreamLog:
    """What the kernel's streams received in its last cell: ``records`` in order, after ``skipped`` characters."""

    records: list[tuple[str, str]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def new_log() -> int:
    """A memory file for the kernel's stream log (inheritable, to pass down with ``pass_fds``)."""
    fd = os.memfd_create("glm-agent-output", os.MFD_CLOEXEC)
    return fd


def read_log(fd: int) -> StreamLog:
    """Parse the log (never more than :data:`LOG_BYTES` and one record); stops at the first malformed record."""
    try:
        data = os.pread(fd, LOG_BYTES + _PIECE_CHARS * 4 + 64, 0)
    except OSError:
        return StreamLog()
    found = StreamLog()
    at = 0
    while at < len(data):
        tag = data[at : at + 1]
        if tag == b"s" and at == 0:
            try:
                out, err = int(data[1:9], 16), int(data[9:17], 16)
            except ValueError:
                break
            found.skipped = {"stdout": out, "stderr": err}
            at = 17
            continue
        name = _STREAMS.get(tag)
        try:
            size = int(data[at + 1 : at + 9], 16) if name else -1
        except ValueError:
            break
        body = data[at + 9 : at + 9 + size]
        if size < 0 or len(body) != size:
            break
        found.records.append((name or "stdout", body.decode("utf-8", "replace")))
        at += 9 + size
    return found


def log_tail(log: StreamLog, max_chars: int) -> StreamLog:
    """The last ``max_chars`` characters of ``log`` (what is cut is counted in ``skipped``)."""
    skipped = dict(log.skipped)
    records: list[tuple[str, str]] = []
    left = max_chars
    for name, text in reversed(log.records):
        kept = text[len(text) - min(left, len(text)) :] if left > 0 else ""
        skipped[name] = skipped.get(name, 0) + len(text) - len(kept)
        if kept:
            records.append((name, kept))
        left -= len(kept)
    return StreamLog(records[::-1], skipped)


def log_to_json(log: StreamLog, max_bytes: int) -> dict[str, Any]:
    """``log`` as JSON-ready data whose JSON is at most ``max_bytes`` (its start cut as needed)."""
    chars = sum(len(text) for _, text in log.records)
    kept = log
    while True:
        value = {"records": [list(record) for record in kept.records], "skipped": kept.skipped}
        if len(json.dumps(value)) <= max_bytes or chars == 0:  # ASCII: safe in an environment variable
            return value
        chars //= 2
        kept = log_tail(log, chars)


def log_from_json(value: object) -> StreamLog:
    """The inverse of :func:`log_to_json`; anything malformed is an empty log."""
    if not isinstance(value, dict):
        return StreamLog()
    records, skipped = value.get("records"), value.get("skipped")
    if not isinstance(records, list) or not isinstance(skipped, dict):
        return StreamLog()
    found = StreamLog()
    for record in records:
        if not (isinstance(record, list) and len(record) == 2 and record[0] in _STREAMS.values()):
            return StreamLog()
        if not isinstance(record[1], str):
            return StreamLog()
        found.records.append((record[0], record[1]))
    for name, count in skipped.items():
        if name in _STREAMS.values() and isinstance(count, int) and count >= 0:
            found.skipped[name] = count
    return found
