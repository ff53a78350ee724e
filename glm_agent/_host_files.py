"""Reading a folder someone else can write: regular, singly linked files only, never through a link.

The code interpreter's workspace is written by code in the kernel, which may replace any file or
folder there with a symbolic link (to ``/etc/passwd``, to another session's files) or a hard
link, or leave a FIFO that blocks a reader; Gradio's upload folder is written by web clients.
Whatever the host hands on from such a folder (downloads, images, copies) is opened here: each folder on the way with ``O_NOFOLLOW | O_DIRECTORY``, the file with ``O_NOFOLLOW |
O_NONBLOCK``, then checked on the open descriptor (``fstat``: a regular file with one link),
so a link swapped in between a check and the open is never followed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["WorkspaceFile", "open_regular", "list_regular", "copy_regular", "valid_relative_name"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class WorkspaceFile:
    """A regular file in the workspace: ``name`` relative to it (``/``-separated) and its size in bytes."""

    name: str
    size: int


def valid_relative_name(name: str) -> bool:
    """A path inside a folder: non-empty parts, no ``.``/``..``, no NUL or backslash, not absolute."""
    if not name or name.startswith("/") or "\x00" in name or "\\" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


@contextmanager
def _folder_fd(root: Path, parts: list[str]) -> Iterator[int]:
    """A descriptor of ``root/parts...``, each step opened without following a link."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def open_regular(root: Path, name: str) -> BinaryIO:
    """``root/name`` opened for reading, if it is a regular file with a single link reached without links.

    Raises ``FileNotFoundError`` for a missing file and ``PermissionError`` for anything else
    (a link, a folder, a FIFO or device, a file with other names), with a message that says which.
    """
    if not valid_relative_name(name):
        raise PermissionError(f"{name!r} is not a file name inside the workspace")
    *folders, leaf = name.split("/")
    try:
        with _folder_fd(root, folders) as dir_fd:
            fd = os.open(leaf, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such file in the workspace") from None
    except OSError as exc:  # ELOOP (a link), ENOTDIR (a file on the way), ENXIO (a socket)
        raise PermissionError(f"{name}: not a regular file of the workspace ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PermissionError(f"{name}: not a regular file (a folder, FIFO or device)")
        if info.st_nlink != 1:
            raise PermissionError(f"{name}: the file has other names (a hard link); it is not handed out")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def list_regular(root: Path, *, max_entries: int = 1000, hidden: bool = False) -> list[WorkspaceFile]:
    """The regular, singly linked files directly in ``root`` (not links, folders or hidden names), sorted.

    At most ``max_entries`` directory entries are looked at (a folder of a million files costs
    no more than that), then the files found are sorted by name.
    """
    found: list[WorkspaceFile] = []
    try:
        with _folder_fd(root, []) as dir_fd, os.scandir(dir_fd) as entries:
            for seen, entry in enumerate(entries):
                if seen >= max_entries:
                    break
                if not hidden and entry.name.startswith("."):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                    found.append(WorkspaceFile(entry.name, info.st_size))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the folder itself was replaced by a link
            return []
        raise
    return sorted(found, key=lambda f: f.name)


def copy_regular(root: Path, name: str, target: Path, *, max_bytes: int | None = None) -> int:
    """Copy ``root/name`` (as :func:`open_regular` allows) to a new file ``target``; return its size.

    ``max_bytes``: a larger file is refused (``OSError`` with ``EFBIG``) and nothing is left at ``target``.
    """
    with open_regular(root, name) as source:
        size = os.fstat(source.fileno()).st_size
        if max_bytes is not None and size > max_bytes:
            raise OSError(27, f"{name} is {size:,} bytes, over the limit of {max_bytes:,}")
        written = 0
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(1 << 20):
                    written += len(chunk)
                    if max_bytes is not None and written > max_bytes:  # it grew while being copied
                        raise OSError(27, f"{name} grew past the limit of {max_bytes:,} bytes while copied")
                    out.write(chunk)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
    return written
