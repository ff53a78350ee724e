"""Session cgroups: where this process's cgroups are, and which controllers it may delegate.

A session's processes go into cgroups of their own, created as children of the cgroups this
process already runs in (systemd's delegation model: never at a hierarchy's root, never
another process's), limited with ``pids.max`` and the memory limit, and removed when the
kernel ends (the launcher creates, joins and removes them; see ``_launch.py``).

cgroup v1 (a hierarchy per controller, e.g. ``/sys/fs/cgroup/memory``) is used where the
controller is mounted writable; cgroup v2 where this process's cgroup already delegates the
controller to its children (``cgroup.subtree_control``). Anything else: not available, and
``interpreter.isolation`` says so.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupPlan", "plan_session_cgroups", "cgroup_parents"]

_CONTROLLERS = ("memory", "pids")
_UNESCAPE = re.compile(r"\\([0-7]{3})")


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, filesystem type, super options) of every cgroup mount."""
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields, tail = left.split(), right.split()
                if len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                    continue
                point = _UNESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
                if "rw" not in fields[5].split(","):
                    continue
                found.append((point, tail[0], set(tail[2].split(","))))
    except OSError:
        return []
    return found


def _own_cgroups() -> dict[str, str]:
    """{controller or "" (v2): path of this process's cgroup} from /proc/self/cgroup."""
    own: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as fh:
            for line in fh:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for name in controllers.split(",") if controllers else [""]:
                    own[name] = path
    except (OSError, ValueError):
        return {}
    return own


def cgroup_parents() -> dict[str, Path]:
    """{controller: the directory of this process's own cgroup} where a child can be made and limited."""
    own = _own_cgroups()
    parents: dict[str, Path] = {}
    for point, fstype, options in _mounts():
        if fstype == "cgroup":
            for controller in _CONTROLLERS:
                if controller in options and controller in own and controller not in parents:
                    parents[controller] = Path(point + own[controller].rstrip("/"))
        elif "" in own:
            base = Path(point + own[""].rstrip("/"))
            try:
                delegated = set((base / "cgroup.subtree_control").read_text().split())
            except OSError:
                continue
            for controller in _CONTROLLERS:
                if controller in delegated and controller not in parents:
                    parents[controller] = base
    return {name: path for name, path in parents.items() if os.access(path, os.W_OK)}


@dataclass(frozen=True)
class CgroupPlan:
    """The cgroups one kernel will run in: ``dirs`` to create (children of our own), and their limits."""

    dirs: dict[str, str]
    memory_bytes: int | None
    max_processes: int | None

    def spec(self) -> dict[str, object]:
        return {"dirs": self.dirs, "memory_bytes": self.memory_bytes, "max_processes": self.max_processes}


def plan_session_cgroups(max_processes: int | None, memory_bytes: int | None, name: str | None = None) -> CgroupPlan:
    """Which cgroups a new kernel gets (only the controllers whose limit is set and available here)."""
    parents = cgroup_parents()
    leaf = name or f"glm-agent-{uuid.uuid4().hex[:12]}"
    dirs = {}
    if max_processes is not None and "pids" in parents:
        dirs["pids"] = str(parents["pids"] / leaf)
    if memory_bytes is not None and "memory" in parents:
        dirs["memory"] = str(parents["memory"] / leaf)
    return CgroupPlan(dirs, memory_bytes, max_processes)
