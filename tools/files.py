"""File tools confined to a workspace folder: list, read and write files.

The workspace is ``make_file_tools(root)``'s ``root``; the module-level tools use
the folder named by the ``GLM_AGENT_WORKSPACE`` environment variable, else the
current working directory, read at each call. Paths must be relative to the
workspace: absolute paths, ``..`` and symbolic links that lead outside it are
refused with a message that says what to pass instead. (A link changed by another
process between the check and the open is not guarded against.)
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Literal

from glm_agent import Tool, tool

__all__ = ["list_files", "read_file", "write_file", "make_file_tools", "WORKSPACE_ENV", "resolve_in_workspace"]

WORKSPACE_ENV = "GLM_AGENT_WORKSPACE"
MAX_LIST_ENTRIES = 500
MAX_READ_BYTES = 1_000_000


def _default_root() -> Path:
    return Path(os.environ.get(WORKSPACE_ENV) or Path.cwd())


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


def make_file_tools(root: str | Path | None = None) -> list[Tool]:
    """``list_files``, ``read_file`` and ``write_file`` confined to ``root`` (None: the default workspace)."""

    def workspace() -> Path:
        return Path(os.path.realpath(root if root is not None else _default_root()))

    @tool
    def list_files(
        path: Annotated[str, "Folder relative to the workspace; '.' is the workspace itself"] = ".",
        recursive: Annotated[bool, "Also list the contents of sub-folders"] = False,
    ) -> dict[str, object]:
        """List the files and folders in a workspace folder, with their sizes in bytes."""
        base = workspace()
        folder = resolve_in_workspace(base, path)
        if not folder.is_dir():
            raise NotADirectoryError(f"{path!r} is not a folder in the workspace")
        entries: list[dict[str, object]] = []
        walker = folder.rglob("*") if recursive else folder.iterdir()
        for item in sorted(walker):
            if len(entries) >= MAX_LIST_ENTRIES:
                return {"folder": path, "entries": entries, "note": f"only the first {MAX_LIST_ENTRIES} entries"}
            kind = "link" if item.is_symlink() else "folder" if item.is_dir() else "file"
            size = item.lstat().st_size if kind == "file" else None
            entries.append({"path": item.relative_to(base).as_posix(), "type": kind, "size": size})
        return {"folder": path, "entries": entries}

    @tool
    def read_file(path: Annotated[str, "File path relative to the workspace"]) -> str:
        """Read a UTF-8 text file from the workspace."""
        full = resolve_in_workspace(workspace(), path)
        if not full.is_file():
            raise FileNotFoundError(f"no file {path!r} in the workspace; call list_files to see what is there")
        with full.open("rb") as handle:
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

    @tool
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
        if mode == "create" and full.exists():
            raise FileExistsError(f"{path!r} already exists; pass mode='overwrite' or mode='append'")
        full.parent.mkdir(parents=True, exist_ok=True)
        with full.open("a" if mode == "append" else "w", encoding="utf-8") as handle:
            handle.write(content)
        return f"Wrote {len(content)} characters to {full.relative_to(base).as_posix()}"

    return [list_files, read_file, write_file]


list_files, read_file, write_file = make_file_tools()
