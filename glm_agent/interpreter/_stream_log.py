"""Output a dying kernel printed but never sent: a log of the current cell's stdout/stderr.

ipykernel sends stream text over ZMQ from a background thread, every 0.2 s. A kernel that
ends abruptly (``os._exit``, a segmentation fault, the memory limit's SIGKILL, our own kill
after a timeout) takes with it what it printed last, even text it flushed: the message can
still sit in ZMQ's queue. So the kernel also copies every piece of stream text, synchronously,
into a shared memory file the host made and passed down (``GLM_AGENT_OUTPUT_FD``, mapped with
``mmap``: no system call per write, ~0.6 µs); what is in its pages survives the process. When
the kernel dies the host reads the log and the session adds what never arrived
(:meth:`OutputCollector.recover`).

The file is :data:`LOG_BYTES` long and holds the records of one cell, then a zero byte (it
starts over when a cell starts, and when it is full, with a record of how many characters of
each stream it dropped). A record is a tag (``o`` stdout, ``e`` stderr, ``s`` skipped), a
32-bit little-endian byte length and the bytes: UTF-8 text, or for ``s`` two 64-bit counts of
characters of stdout and stderr before the log's start. The kernel's code can write anything
there itself: the host reads at most :data:`LOG_BYTES`, stops at the first malformed record,
and uses the log only where it lines up with what arrived.
"""

from __future__ import annotations

import json
import os
import struct
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
_HEADER = struct.Struct("<cI")  # tag, byte length
_COUNTS = struct.Struct("<QQ")  # characters of stdout, stderr skipped

# Kernel side, run once per kernel (after the bootstrap). It is the ``echo`` of ipykernel's
# sys.stdout and sys.stderr (written before the text is buffered for sending), so C-level
# output ipykernel captures from the file descriptors is logged too.
KERNEL_CODE = (
    """
def __glm_agent_keep_output():
    import mmap
    import os
    import struct
    import sys
    import threading
    from IPython import get_ipython

    try:
        area = mmap.mmap(int(os.environ["__ENV__"]), __LOG_BYTES__)
    except (KeyError, ValueError, OSError):
        return
    shell = get_ipython()
    lock = threading.Lock()
    header = struct.Struct("<cI").pack
    counts = struct.Struct("<QQ").pack
    end = __LOG_BYTES__ - 64
    at = 0
    chars = [0, 0]

    def restart():
        nonlocal at
        area[0:22] = header(b"s", 16) + counts(chars[0], chars[1]) + b"\\0"
        at = 21

    def keep(index, tag, text):
        nonlocal at
        if len(text) > __PIECE__:
            chars[index] += len(text) - __PIECE__
            text = text[-__PIECE__:]
            restart()
        data = text.encode("utf-8", "surrogatepass")
        if at + 5 + len(data) >= end:
            restart()
        area[at : at + 6 + len(data)] = header(tag, len(data)) + data + b"\\0"
        at += 5 + len(data)
        chars[index] += len(text)

    class Echo:  # ipykernel writes every piece of a stream's text to its echo first, synchronously
        def __init__(self, index, tag, previous):
            self.index, self.tag, self.previous = index, tag, previous

        def write(self, text):
            if text.__class__ is str and text:
                try:
                    with lock:
                        keep(self.index, self.tag, text)
                except (ValueError, UnicodeError):
                    pass
            if self.previous is not None:
                self.previous.write(text)

        def flush(self):
            if self.previous is not None:
                self.previous.flush()

    def new_cell(*_args):
        with lock:
            chars[:] = [0, 0]
            try:
                restart()
            except ValueError:
                pass

    for index, (stream, tag) in enumerate(((sys.stdout, b"o"), (sys.stderr, b"e"))):
        if hasattr(stream, "echo") and not isinstance(stream.echo, Echo):
            stream.echo = Echo(index, tag, stream.echo)
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
    """A memory file for the kernel's stream log, :data:`LOG_BYTES` long (pass it down with ``pass_fds``)."""
    fd = os.memfd_create("glm-agent-output", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, LOG_BYTES)
    except OSError:
        os.close(fd)
        raise
    return fd


def read_log(fd: int) -> StreamLog:
    """Parse the log (at most :data:`LOG_BYTES`); stops at the first malformed record."""
    try:
        data = os.pread(fd, LOG_BYTES, 0)
    except OSError:
        return StreamLog()
    found = StreamLog()
    at = 0
    while at + 5 <= len(data):
        tag, size = _HEADER.unpack_from(data, at)
        body = data[at + 5 : at + 5 + size]
        if len(body) != size:
            break
        if tag == b"s" and at == 0 and size == _COUNTS.size:
            out, err = _COUNTS.unpack(body)
            found.skipped = {"stdout": out, "stderr": err}
        elif tag in _STREAMS:
            found.records.append((_STREAMS[tag], body.decode("utf-8", "replace")))
        else:
            break  # the zero byte after the last record, or garbage
        at += 5 + size
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
