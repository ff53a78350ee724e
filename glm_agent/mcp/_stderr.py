"""An MCP server's stderr, read on a thread: every line logged, the last ones kept for error messages."""

from __future__ import annotations

import collections
import logging
import os
import select
import threading

__all__ = ["StderrTail"]


class StderrTail:
    """Reads a server's stderr on a thread: every line logged, the last ones kept for error messages.

    The pipe is non-blocking and read under a lock, by the thread whenever it is readable and by
    :meth:`tail` itself first: a server that printed its last words and died has them in the tail,
    however late the thread gets to run.
    """

    def __init__(self, name: str) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self.writer = os.fdopen(write_fd, "w")
        self.lines: collections.deque[str] = collections.deque(maxlen=20)
        self._log = logging.getLogger(f"{__name__}.{name}")
        self._fd = read_fd
        self._lock = threading.Lock()
        self._partial = b""
        self._ended = False
        threading.Thread(target=self._read, name=f"glm-agent-mcp-stderr-{name}", daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                select.select([self._fd], [], [])  # data, or end of file: every writer is gone
                if not self._drain():
                    return
        finally:
            os.close(self._fd)  # only here: never while this thread may wait on it

    def _drain(self) -> bool:
        """Take in all that is in the pipe now; False once it has ended."""
        with self._lock:
            while not self._ended:
                try:
                    chunk = os.read(self._fd, 65536)
                except BlockingIOError:
                    return True
                if chunk:
                    self._take(chunk)
                    continue
                self._ended = True
                if self._partial:
                    self._take(b"\n")
            return False

    def _take(self, chunk: bytes) -> None:
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            self._log.info("%s", line)

    def close_writer(self) -> None:
        """Our copy of the write end; the server (and its children) hold theirs until they exit."""
        try:
            self.writer.close()
        except OSError:
            pass

    def tail(self) -> str:
        self._drain()
        with self._lock:
            text = "\n".join([*self.lines, self._partial.decode("utf-8", "replace")]).strip()
        return f"\nThe server's last output (stderr):\n{text[-1500:]}" if text else ""
