"""Resource limits of a kernel process (applied with setrlimit by the launcher before ipykernel starts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Limits", "GiB", "MiB"]

MiB = 1024**2
GiB = 1024**3


@dataclass(frozen=True)
class Limits:
    """Per-kernel resource limits. ``None`` leaves a limit as the host has it.

    - ``memory_bytes``: address space of the kernel process (RLIMIT_AS). An allocation past it
      raises ``MemoryError`` in the model's code; the kernel lives on. Default 4 GiB, enough for
      numpy, pandas and matplotlib. Each child process the code starts gets its own copy of the
      limit (it is per process, not a total).
    - ``cpu_seconds``: total CPU time of the kernel process over its life (RLIMIT_CPU). Past it the
      kernel is killed (SIGXCPU, then SIGKILL 5 s later) and restarted on the next run.
    - ``open_files``: file descriptors (RLIMIT_NOFILE); the kernel itself needs about 40.
    - ``file_size_bytes``: the largest file the code may write (RLIMIT_FSIZE); a bigger write
      fails with ``OSError: [Errno 27] File too large``.
    - ``tmpfs_bytes``: size of the private ``/tmp`` and ``/dev/shm`` in isolated mode (memory-backed).

    All rlimits are set with soft = hard, so code in the kernel cannot raise them.
    """

    memory_bytes: int | None = 4 * GiB
    cpu_seconds: int | None = 3600
    open_files: int | None = 1024
    file_size_bytes: int | None = 1 * GiB
    tmpfs_bytes: int = 512 * MiB

    def __post_init__(self) -> None:
        minimum = {
            "memory_bytes": 512 * MiB,
            "cpu_seconds": 5,
            "open_files": 64,
            "file_size_bytes": 1,
            "tmpfs_bytes": MiB,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if value is None and name != "tmpfs_bytes":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Limits.{name} must be an int (or None for no limit), not {value!r}")
            if value < low:
                raise ValueError(
                    f"Limits.{name}={value} is too small for a working kernel; use at least {low} or None for no limit"
                )

    def rlimits(self) -> dict[str, int | None]:
        """The setrlimit part, as the launcher reads it."""
        values = asdict(self)
        values.pop("tmpfs_bytes")
        return values
