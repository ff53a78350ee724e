"""A browser session's files on the host: uploads waiting for the next message, and copies for download.

Everything a session keeps outside its kernel lives in one folder of its own (``root``), within
``max_bytes`` together, and goes with the session:

- ``uploads/N/NAME``: files the user uploaded, taken out of Gradio's upload folder only if this
  client uploaded them there (the door's ledger), as regular, singly linked files (never a link,
  never a path the client made up), each at most ``max_file_bytes``;
- ``exports/``: the notebook, the transcript and the images shown in the chat (copied out of the
  kernel's workspace without following links, since the workspace goes with the kernel).

Files of the kernel's workspace are not copied for download: they are streamed from it when
asked for (:meth:`glm_agent.interpreter.CodeInterpreter.open_file`), so they count only against the
workspace's own quota.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

from glm_agent._host_files import copy_regular, open_regular
from glm_agent.errors import UploadRefused
from glm_agent.interpreter import CodeInterpreter
from glm_agent.web._door import folder_bytes

__all__ = ["SessionFiles", "UploadRefused"]

_MiB = 1024 * 1024


def _mib(size: int) -> str:
    return f"{size / _MiB:,.1f} MiB"


class SessionFiles:
    """The folder of one session's host-side files (see the module's docstring)."""

    def __init__(self, label: str, *, max_bytes: int, max_file_bytes: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"glm-agent-web-{label}-"))
        self.max_bytes = max_bytes
        self.max_file_bytes = max_file_bytes
        self.uploads: list[Path] = []
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        (self.root / "uploads").mkdir()
        (self.root / "exports").mkdir()

    def used(self) -> int:
        """Bytes the session's files take now."""
        return folder_bytes(str(self.root))

    # -- uploads ---------------------------------------------------------------------------------
    def take_upload(self, path: str, upload_root: str) -> Path:
        """Move a file Gradio received into the session (the caller checked that this client uploaded it)."""
        root = os.path.realpath(upload_root)
        candidate = os.path.normpath(os.path.join(root, path))
        relative = os.path.relpath(candidate, root)
        if relative.startswith("..") or os.path.isabs(relative):
            raise UploadRefused(f"{Path(path).name}: not a file uploaded to this server")
        name = Path(relative).name
        if name in ("", ".", "..") or name.startswith("."):
            raise UploadRefused(f"{name!r} is not a name a file can have in /mnt/data")
        with self._lock:
            room = self.max_bytes - self.used()
            limit = min(self.max_file_bytes, room)
            folder = self.root / "uploads" / str(next(self._numbers))
            folder.mkdir()
            try:
                copy_regular(Path(root), relative, folder / name, max_bytes=max(limit, 0))
            except PermissionError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise UploadRefused(f"{name}: {exc}") from None
            except FileNotFoundError:
                shutil.rmtree(folder, ignore_errors=True)
                raise UploadRefused(f"{name}: no such upload (it may have expired; upload it again)") from None
            except OSError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                if exc.errno != 27:
                    raise
                if limit < self.max_file_bytes:
                    raise UploadRefused(
                        f"{name} does not fit: this session keeps at most {_mib(self.max_bytes)} of files "
                        f"({_mib(max(room, 0))} left); send or clear what is waiting first"
                    ) from None
                raise UploadRefused(
                    f"{name} is larger than the limit of {_mib(self.max_file_bytes)} per file"
                ) from None
            self.uploads.append(folder / name)
        try:
            os.unlink(candidate)  # Gradio's copy is not needed any more
            if os.path.dirname(candidate) != root:
                os.rmdir(os.path.dirname(candidate))  # its folder per upload, when empty
        except OSError:
            pass
        return folder / name

    def take_pending(self) -> list[Path]:
        """The uploads for the message being sent (they stay on disk until :meth:`drop_sent`)."""
        with self._lock:
            files, self.uploads = self.uploads, []
        return files

    def drop(self, files: list[Path]) -> None:
        """Remove uploads that reached the kernel (or were cleared)."""
        for path in files:
            if path.parent.parent == self.root / "uploads":
                shutil.rmtree(path.parent, ignore_errors=True)

    def clear_uploads(self) -> None:
        self.drop(self.take_pending())

    # -- exports ---------------------------------------------------------------------------------
    def export_path(self, name: str) -> Path:
        """Where an export called ``name`` is written (the caller writes it)."""
        return self.root / "exports" / name

    def copy_image(self, interpreter: CodeInterpreter, path: Path) -> str | None:
        """Copy an image the code made into the session's exports; its name there, or None if it may not."""
        try:
            relative = path.resolve(strict=False).relative_to(Path(interpreter.workspace).resolve())
        except ValueError:
            return None
        with self._lock:
            name = f"{next(self._numbers):03d}-{path.name}"
            room = self.max_bytes - self.used()
            try:
                copy_regular(
                    Path(interpreter.workspace), relative.as_posix(), self.export_path(name), max_bytes=max(room, 0)
                )
            except OSError:
                return None
        return name

    def open_export(self, name: str) -> BinaryIO:
        return open_regular(self.root / "exports", name)

    def fits(self) -> bool:
        return self.used() <= self.max_bytes

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
