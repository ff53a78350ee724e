"""An MCP server's stderr, read on a thread: every line logged, the last ones kept for error messages."""

from __future__ import annotations

import collections
import logging
import os
import threading

__all__ = ["StderrTail"]


class StderrTail:
    """Reads a server's stderr on a thread: every line logged, the last ones kept for error messages."""

    def __init__(self, name: str) -> None:
        read_fd, write_fd = os.pipe()
        self.writer = os.fdopen(write_fd, "w")
        self.lines: collections.deque[str] = collections.deque(maxlen=20)
        self._log = logging.getLogger(f"{__name__}.{name}")
        self._reader = os.fdopen(read_fd, "r", errors="replace")
        threading.Thread(target=self._read, name=f"glm-agent-mcp-stderr-{name}", daemon=True).start()

    def _read(self) -> None:
        with self._reader:
            for line in self._reader:
                line = line.rstrip("\n")
                self.lines.append(line)
                self._log.info("%s", line)

    def close_writer(self) -> None:
        """Our copy of the write end; the server (and its children) hold theirs until they exit."""
        try:
            self.writer.close()
        except OSError:
            pass

    def tail(self) -> str:
        text = "\n".join(self.lines).strip()
        return f"\nThe server's last output (stderr):\n{text[-1500:]}" if text else ""
