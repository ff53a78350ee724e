"""Resource limits of a session: rlimits per kernel process, and totals for the whole session."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits", "GiB", "MiB", "RLIMIT_FIELDS"]

MiB = 1024**2
GiB = 1024**3

#: the fields applied with setrlimit (per process), in the launcher's order
RLIMIT_FIELDS = ("memory_bytes", "cpu_seconds", "open_files", "file_size_bytes")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one session. ``None`` leaves a limit as the host has it.

    Per process (setrlimit, soft = hard, so code in the kernel cannot raise them):

    - ``memory_bytes``: address space of each process (RLIMIT_AS). An allocation past it raises
      ``MemoryError``; the kernel lives on. Default 4 GiB, enough for numpy, pandas and matplotlib.
    - ``cpu_seconds``: CPU time of the kernel process over its life (RLIMIT_CPU). Past it the
      kernel is killed (SIGXCPU, then SIGKILL 5 s later) and restarted on the next run.
    - ``open_files``: file descriptors (RLIMIT_NOFILE); the kernel itself needs about 40.
    - ``file_size_bytes``: the largest file the code may write (RLIMIT_FSIZE); a bigger write
      fails with ``OSError: [Errno 27] File too large``.

    For the whole session together (isolated mode; ``interpreter.isolation`` says which hold here):

    - ``max_processes``: processes and threads of the session (a ``pids`` cgroup). Past it,
      ``fork``/``Thread.start`` fail with ``EAGAIN`` (a fork bomb stops there).
    - ``total_memory_bytes``: memory (resident + page cache + the session's tmpfs files) of all
      its processes (a ``memory`` cgroup). Past it the kernel's out-of-memory killer kills the
      biggest process of the session, and the observation says so.
    - ``workspace_bytes``: bytes the session can write in ``/mnt/data``, ``/tmp`` and ``/dev/shm``
      together (a size-limited tmpfs); past it writes fail with ``ENOSPC`` ("No space left on
      device"). When you pass your own ``workspace=`` directory, only ``/tmp`` and ``/dev/shm``
      are bounded by it (your directory is used in place).
    """

    memory_bytes: int | None = 4 * GiB
    cpu_seconds: int | None = 3600
    open_files: int | None = 1024
    file_size_bytes: int | None = 1 * GiB
    max_processes: int | None = 256
    total_memory_bytes: int | None = 4 * GiB
    workspace_bytes: int | None = 1 * GiB

    def __post_init__(self) -> None:
        minimum = {
            "memory_bytes": 512 * MiB,
            "cpu_seconds": 5,
            "open_files": 64,
            "file_size_bytes": 1,
            "max_processes": 32,
            "total_memory_bytes": 256 * MiB,
            "workspace_bytes": MiB,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Limits.{name} must be an int (or None for no limit), not {value!r}")
            if value < low:
                raise ValueError(
                    f"Limits.{name}={value} is too small for a working kernel; use at least {low} or None for no limit"
                )

    def rlimits(self) -> dict[str, int | None]:
        """The setrlimit part, as the launcher reads it."""
        return {name: getattr(self, name) for name in RLIMIT_FIELDS}
