"""Keys and values of finished prefixes on disk, so that a new process starts from them.

A file holds one segment: the keys and values of positions ``start:end`` of a token sequence,
the sequence's ids ``0:end`` and the name of the file holding ``0:start`` (its parent), all as
safetensors (no pickle, nothing executable). Names are a hash of the model's fingerprint and
the ids ``0:end``; a file is used only after its stored ids equal the prompt's, its format,
fingerprint and shapes match, and a checksum of its tensors holds. Anything else (truncated,
bit-flipped, other weights, another format) is ignored with one warning and deleted, and the
prefix is recomputed: wrong keys and values are never used.

Writes are atomic (a temporary file in the directory, then a rename), so processes can share
a directory. The directory has a size cap; the least recently used files go first (a file's
modification time is its last use).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "PromptCache", "Segment"]

#: the file format; a file of another format is ignored
FORMAT = "glm-agent-kv/1"
_SUFFIX = ".safetensors"
_STALE_TEMP_SECONDS = 3600.0  # a temporary file this old was left by a writer that died


@dataclass
class Segment:
    """Keys and values for positions ``start:end`` (``kv``: ``[layers, 2, kv heads, end - start, head_dim]``)."""

    start: int
    end: int
    kv: torch.Tensor


class PromptCache:
    """A directory of stored prefixes for one model (``fingerprint``) in blocks of ``block_size`` ids."""

    def __init__(self, directory: str | os.PathLike[str], *, fingerprint: str, block_size: int, max_bytes: int) -> None:
        self.directory = Path(directory).expanduser()
        self.fingerprint = fingerprint
        self.block_size = block_size
        self.max_bytes = int(max_bytes)
        self.enabled = True
        self._warned: set[str] = set()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not os.access(self.directory, os.R_OK | os.W_OK | os.X_OK):
                raise PermissionError(f"no read and write access to {self.directory}")
        except OSError as exc:
            self._disable(f"cannot use the prompt cache directory {self.directory} ({exc}); prompts are computed")

    # -- names --------------------------------------------------------------------------------
    def _keys(self, ids: Sequence[int], limit: int) -> list[tuple[int, str]]:
        """(length, file key) for every block boundary up to ``limit``, shortest first."""
        digest = hashlib.sha256(f"{FORMAT}\0{self.fingerprint}\0".encode())
        keys = []
        size = self.block_size
        for end in range(size, limit + 1, size):
            digest.update(array("i", ids[end - size : end]).tobytes())
            keys.append((end, digest.copy().hexdigest()[:40]))
        return keys

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}{_SUFFIX}"

    # -- reading ------------------------------------------------------------------------------
    def load(self, ids: Sequence[int], *, longer_than: int, limit: int) -> list[Segment]:
        """Stored keys and values for the longest stored prefix of ``ids`` (up to ``limit`` ids), if
        it is longer than ``longer_than``; ``[]`` when there is none (or none that checks out)."""
        if not self.enabled or limit <= longer_than:
            return []
        keys = self._keys(ids, limit)
        by_end = dict(keys)
        for end, key in reversed(keys):
            if end <= longer_than:
                break
            if not self._path(key).exists():
                continue
            segments = self._load_chain(ids, end, key, by_end)
            if segments:
                return segments
        return []

    def _load_chain(self, ids: Sequence[int], end: int, key: str, by_end: dict[int, str]) -> list[Segment]:
        segments: list[Segment] = []
        while True:
            segment = self._read(ids, end, key)
            if segment is None:
                return []
            segments.append(segment)
            if segment.start == 0:
                break
            end, key = segment.start, by_end.get(segment.start, "")
            if not key or not self._path(key).exists():  # its start was removed (the size cap): useless now
                for orphan in segments:
                    _remove(self._path(by_end[orphan.end]))
                return []
        segments.reverse()
        return segments

    def _read(self, ids: Sequence[int], end: int, key: str) -> Segment | None:
        from safetensors import SafetensorError
        from safetensors.torch import load

        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn(path, f"cannot read {path} ({exc}); the prefix is computed")
            return None
        try:
            tensors = load(data)
            meta = _metadata(data)
            problem = self._check(tensors, meta, ids, end)
        except (SafetensorError, ValueError, KeyError, RuntimeError) as exc:
            problem = f"unreadable ({exc})"
        if problem:
            self._warn(path, f"ignoring {path}: {problem}; the prefix is computed")
            _remove(path)
            return None
        _touch(path)
        return Segment(int(meta["start"]), end, tensors["kv"])

    def _check(self, tensors: dict[str, torch.Tensor], meta: dict[str, str], ids: Sequence[int], end: int) -> str:
        if meta.get("format") != FORMAT:
            return f"format {meta.get('format')!r}, not {FORMAT!r}"
        if meta.get("fingerprint") != self.fingerprint:
            return "made by other weights or settings"
        stored_ids, kv = tensors.get("ids"), tensors.get("kv")
        if stored_ids is None or kv is None:
            return "tensors missing"
        if meta.get("checksum") != _checksum(stored_ids, kv):
            return "checksum mismatch (damaged)"
        start = int(meta.get("start", "-1"))
        if stored_ids.dtype != torch.int32 or stored_ids.shape != (end,) or stored_ids.tolist() != list(ids[:end]):
            return "its token ids differ"
        if not 0 <= start < end or kv.dim() != 5 or kv.shape[3] != end - start:
            return "inconsistent shapes"
        return ""

    # -- writing ------------------------------------------------------------------------------
    def save(self, ids: Sequence[int], read: Callable[[int, int], torch.Tensor]) -> int:
        """Write the whole blocks of ``ids`` not stored yet (as one segment after the longest stored
        prefix); ``read(start, end)`` gives keys and values. Returns the positions written."""
        if not self.enabled:
            return 0
        full = len(ids) // self.block_size * self.block_size
        keys = self._keys(ids, full)
        if not keys:
            return 0
        start, parent = 0, ""
        for end, key in reversed(keys):
            if self._path(key).exists():
                start, parent = end, key
                break
        if start == full:
            _touch(self._path(parent))
            return 0
        stored_ids = torch.tensor(list(ids[:full]), dtype=torch.int32)
        kv = read(start, full).contiguous().cpu()
        meta = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "start": str(start),
            "parent": parent,
            "checksum": _checksum(stored_ids, kv),
        }
        try:
            self._write_atomic(self._path(keys[-1][1]), {"ids": stored_ids, "kv": kv}, meta)
            self._enforce_cap()
        except OSError as exc:
            self._warn(
                self.directory, f"cannot write to the prompt cache {self.directory} ({exc}); continuing without it"
            )
            return 0
        return full - start

    def _write_atomic(self, path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        from safetensors.torch import save

        data = save(tensors, metadata=meta)
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(temporary, path)
        except BaseException:
            _remove(Path(temporary))
            raise

    def _enforce_cap(self) -> None:
        files: list[tuple[float, int, Path]] = []
        total = 0
        now = time.time()
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                path = Path(entry.path)
                if entry.name.startswith(".tmp-"):
                    if now - info.st_mtime > _STALE_TEMP_SECONDS:
                        _remove(path)
                    continue
                if entry.name.endswith(_SUFFIX) and entry.is_file(follow_symlinks=False):
                    files.append((info.st_mtime, info.st_size, path))
                    total += info.st_size
        files.sort()
        for _, size, path in files:
            if total <= self.max_bytes:
                break
            _remove(path)
            total -= size

    # -- warnings -----------------------------------------------------------------------------
    def _warn(self, where: Path, message: str) -> None:
        if str(where) not in self._warned:
            self._warned.add(str(where))
            logger.warning("prompt cache: %s", message)

    def _disable(self, message: str) -> None:
        self.enabled = False
        logger.warning("prompt cache: %s", message)


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes."""
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError("truncated header")
    header = json.loads(data[8 : 8 + size])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("bad metadata")
    return {str(k): str(v) for k, v in meta.items()}


def _checksum(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().data)  # no copy
    return digest.hexdigest()


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
