"""File tools confined to a workspace folder: list, read and write files.

The workspace is ``make_file_tools(root)``'s ``root``; the module-level tools use
the folder named by the ``GLM_AGENT_WORKSPACE`` environment variable (read at each
call), else a fresh temporary folder of their own, made at the first call and said in
the log: never wherever the user happens to stand. Paths must be relative to the
workspace: absolute paths, ``..`` and symbolic links that lead outside it are
refused with a message that says what to pass instead.

Only regular files are read or written: FIFOs, sockets and devices are refused, and
so are hard-linked files (``st_nlink > 1``, the other name may be outside the
workspace). Files are opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked on the open
descriptor, so a last path component swapped for a link or a FIFO after the check
cannot redirect or block the tool. (A folder higher up the path swapped for a link
by another process between the check and the open is not guarded against.) Listing
stops after ``MAX_LIST_ENTRIES`` entries before anything is sorted, and each tool
has a timeout of ``TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Literal

from glm_agent import Tool, tool

__all__ = ["list_files", "read_file", "write_file", "make_file_tools", "WORKSPACE_ENV", "resolve_in_workspace"]

WORKSPACE_ENV = "GLM_AGENT_WORKSPACE"
MAX_LIST_ENTRIES = 500
MAX_READ_BYTES = 1_000_000
TIMEOUT_SECONDS = 30.0
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


_temporary_root: Path | None = None


def _default_root() -> Path:
    """``$GLM_AGENT_WORKSPACE``, else one temporary folder for this process (made once, said once)."""
    global _temporary_root
    chosen = os.environ.get(WORKSPACE_ENV)
    if chosen:
        return Path(chosen)
    if _temporary_root is None:
        _temporary_root = Path(tempfile.mkdtemp(prefix="glm-agent-files-"))
        logging.getLogger(__name__).warning(
            "tools/files.py works in the temporary folder %s; set %s to choose a folder", _temporary_root, WORKSPACE_ENV
        )
    return _temporary_root


def resolve_in_workspace(root: str | Path, relative: str) -> Path:
    """The real path of ``relative`` inside ``root``; ``PermissionError`` if it would leave the workspace."""
    base = Path(os.path.realpath(root))
    if not base.is_dir():
        raise FileNotFoundError(f"the workspace {base} does not exist; create it or set {WORKSPACE_ENV}")
    text = relative.strip()
    if "\x00" in text:
        raise PermissionError("the path contains a NUL character")
    if text.startswith("~") or PurePosixPath(text).is_absolute() or PureWindowsPath(text).drive:
        raise PermissionError(
            f"absolute paths are not allowed ({relative!r}); give a path relative to the workspace, e.g. 'notes/todo.txt'"
        )
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if ".." in parts:
        raise PermissionError(f"'..' is not allowed in paths ({relative!r}); give a path inside the workspace")
    full = Path(os.path.realpath(base.joinpath(*parts)))
    if full != base and not full.is_relative_to(base):
        raise PermissionError(f"{relative!r} is a symbolic link that leads outside the workspace; it cannot be used")
    return full


def _open_regular(full: Path, relative: str, flags: int, *, create: bool = False) -> int:
    """A descriptor on the regular, singly linked file ``full``; refuses anything else without blocking."""
    try:
        fd = os.open(full, flags | _OPEN_FLAGS | (os.O_CREAT | os.O_EXCL if create else 0), 0o644)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no file {relative!r} in the workspace; call list_files to see what is there"
        ) from None
    except FileExistsError:
        raise FileExistsError(f"{relative!r} already exists; pass mode='overwrite' or mode='append'") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PermissionError(f"{relative!r} was replaced by a symbolic link; it cannot be used") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            raise PermissionError(f"{relative!r} is not a regular file; only regular files can be used") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PermissionError(f"{relative!r} is not a regular file (a FIFO, socket or device); it cannot be used")
        if info.st_nlink > 1:
            raise PermissionError(
                f"{relative!r} is a hard-linked file (it has {info.st_nlink} names, maybe outside the workspace); "
                "it cannot be used"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _walk(folder: Path, recursive: bool, limit: int) -> Iterator[os.DirEntry[str]]:
    """Up to ``limit`` entries below ``folder`` in directory order, not following links; no sorting."""
    pending = [folder]
    count = 0
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if count >= limit:
                    return
                count += 1
                yield entry
                if recursive and entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))


def _describe(entry: os.DirEntry[str], base: Path) -> dict[str, object]:
    if entry.is_symlink():
        kind = "link"
    elif entry.is_dir(follow_symlinks=False):
        kind = "folder"
    elif entry.is_file(follow_symlinks=False):
        kind = "file"
    else:
        kind = "other"
    size = entry.stat(follow_symlinks=False).st_size if kind == "file" else None
    return {"path": Path(entry.path).relative_to(base).as_posix(), "type": kind, "size": size}


def make_file_tools(root: str | Path | None = None) -> list[Tool]:
    """``list_files``, ``read_file`` and ``write_file`` confined to ``root`` (None: the default workspace)."""

    def workspace() -> Path:
        return Path(os.path.realpath(root if root is not None else _default_root()))

    @tool(timeout=TIMEOUT_SECONDS)
    def list_files(
        path: Annotated[str, "Folder relative to the workspace; '.' is the workspace itself"] = ".",
        recursive: Annotated[bool, "Also list the contents of sub-folders"] = False,
    ) -> dict[str, object]:
        """List the files and folders in a workspace folder, with their sizes in bytes."""
        base = workspace()
        folder = resolve_in_workspace(base, path)
        if not folder.is_dir():
            raise NotADirectoryError(f"{path!r} is not a folder in the workspace")
        found = list(_walk(folder, recursive, MAX_LIST_ENTRIES + 1))
        entries = sorted((_describe(entry, base) for entry in found[:MAX_LIST_ENTRIES]), key=lambda e: str(e["path"]))
        if len(found) > MAX_LIST_ENTRIES:
            note = (
                f"more than {MAX_LIST_ENTRIES} entries: listing stopped after {MAX_LIST_ENTRIES} "
                "(in the order the file system gave them); list a sub-folder to see the rest"
            )
            return {"folder": path, "entries": entries, "note": note}
        return {"folder": path, "entries": entries}

    @tool(timeout=TIMEOUT_SECONDS)
    def read_file(path: Annotated[str, "File path relative to the workspace"]) -> str:
        """Read a UTF-8 text file from the workspace."""
        full = resolve_in_workspace(workspace(), path)
        if full.is_dir():
            raise IsADirectoryError(f"{path!r} is a folder; call list_files to see what is in it")
        with os.fdopen(_open_regular(full, path, os.O_RDONLY), "rb") as handle:
            data = handle.read(MAX_READ_BYTES + 1)
        cut = len(data) > MAX_READ_BYTES
        data = data[:MAX_READ_BYTES]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if not (cut and exc.start >= len(data) - 3):  # a character split by the size limit is fine
                raise ValueError(f"{path!r} is not a UTF-8 text file") from None
            text = data[: exc.start].decode("utf-8")
        return text + (f"\n[... stopped after {MAX_READ_BYTES} bytes ...]" if cut else "")

    @tool(timeout=TIMEOUT_SECONDS)
    def write_file(
        path: Annotated[str, "File path relative to the workspace; missing folders are created"],
        content: Annotated[str, "The text to write"],
        mode: Annotated[
            Literal["create", "overwrite", "append"],
            "'create' refuses to replace an existing file, 'overwrite' replaces it, 'append' adds to its end",
        ] = "create",
    ) -> str:
        """Write a UTF-8 text file in the workspace."""
        base = workspace()
        full = resolve_in_workspace(base, path)
        if full == base or full.is_dir():
            raise IsADirectoryError(f"{path!r} is a folder; give a file path")
        full.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | (os.O_APPEND if mode == "append" else 0) | (0 if mode == "create" else os.O_CREAT)
        fd = _open_regular(full, path, flags, create=mode == "create")
        if mode == "overwrite":
            os.ftruncate(fd, 0)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        return f"Wrote {len(content)} characters to {full.relative_to(base).as_posix()}"

    return [list_files, read_file, write_file]


list_files, read_file, write_file = make_file_tools()
