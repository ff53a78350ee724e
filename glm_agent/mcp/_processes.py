"""Find and end every process a stdio MCP server started, by a tag in their environment.

The SDK starts each server in a new process group and kills the group when the
server does not exit. Children that outlive their server (it exited on stdin EOF
but left workers behind, or it crashed) or that made a session of their own are
found here by the ``GLM_AGENT_MCP_TAG`` variable they inherited (Linux ``/proc``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import uuid

__all__ = ["TAG_VARIABLE", "new_tag", "tagged_processes", "end_tagged_processes"]

logger = logging.getLogger(__name__)

TAG_VARIABLE = "GLM_AGENT_MCP_TAG"


def new_tag() -> str:
    return uuid.uuid4().hex


def tagged_processes(tag: str) -> list[int]:
    """Live (not zombie) processes whose environment carries ``tag``; empty where /proc is missing."""
    if not sys.platform.startswith("linux"):
        return []
    needle = f"{TAG_VARIABLE}={tag}".encode()
    found: list[int] = []
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != b"Z" and any(item == needle for item in environ.split(b"\0")):
            found.append(int(entry))
    return found


def end_tagged_processes(tag: str, grace: float = 2.0) -> list[int]:
    """SIGTERM every tagged process, SIGKILL those still alive after ``grace`` seconds; return their pids."""
    pids = tagged_processes(tag)
    if not pids:
        return []
    logger.debug("ending MCP server processes %s", pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not tagged_processes(tag):
            return pids
        time.sleep(0.05)
    for pid in tagged_processes(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return pids
