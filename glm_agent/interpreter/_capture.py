"""Collects one cell's iopub messages into ordered outputs, with bounded memory, saving images to files."""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections import deque
from pathlib import Path
from typing import Any

from glm_agent.interpreter._backend import KernelMessage
from glm_agent.interpreter._results import (
    DisplayOutput,
    ErrorOutput,
    OmittedOutput,
    Output,
    StreamOutput,
)
from glm_agent.interpreter._stream_log import StreamLog

__all__ = ["OutputCollector", "write_no_follow"]

logger = logging.getLogger(__name__)

_RECENT = 64  # characters of each stream remembered to line a stream log up with
_IMAGE_SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg", "image/svg+xml": ".svg"}


class OutputCollector:
    """Turns a cell's iopub messages into :class:`Output` objects.

    Stream text is kept up to ``max_chars``: the first half as it comes, then a rolling
    tail of the other half; what falls out in between is counted in ``dropped_chars`` and
    marked by an :class:`OmittedOutput`. At most ``max_outputs`` rich outputs are kept
    (errors always are). So a cell printing a million lines costs bounded memory.
    """

    def __init__(self, images_dir: Path, image_prefix: str, *, max_chars: int, max_outputs: int = 500) -> None:
        self.outputs: list[Output] = []
        self.dropped_chars = 0
        self.dropped_outputs = 0
        self._images_dir = images_dir
        self._image_prefix = image_prefix
        self._image_count = 0
        self._head_room = max_chars // 2
        self._tail_budget = max_chars - self._head_room
        self._overflow = False
        self._tail: deque[list[str]] = deque()  # [name, text] chunks of the rolling tail
        self._tail_chars = 0
        self._unflushed_drop = 0
        self._max_outputs = max_outputs
        self._rich = 0
        self._clear_pending = False
        self._received: dict[str, int] = {}  # characters of each stream that arrived (kept or not)
        self._recent: dict[str, str] = {}  # the last few of them, to line a stream log up with

    # -- messages ---------------------------------------------------------------------------
    def add(self, msg: KernelMessage) -> None:
        kind = msg["msg_type"]
        content = msg["content"]
        if kind == "clear_output":
            if content.get("wait"):
                self._clear_pending = True
            else:
                self._clear()
            return
        if kind not in ("stream", "display_data", "execute_result", "error"):
            return
        if self._clear_pending:
            self._clear()
        if kind == "stream":
            self._stream(content.get("name", "stdout"), content.get("text", ""))
        elif kind == "error":
            self._append(
                ErrorOutput(content.get("ename", ""), content.get("evalue", ""), list(content.get("traceback", []))),
                always=True,
            )
        else:
            data = dict(content.get("data", {}))
            output = DisplayOutput(kind, data, dict(content.get("metadata", {})), content.get("execution_count"))
            if self._append(output):
                output.image = self._save_image(data)

    def recover(self, log: StreamLog) -> int:
        """Add the text in the kernel's stream ``log`` that never arrived (it died first); return its length.

        Only where the log lines up with what arrived: it agrees with the last characters
        received (text a thread printed for an earlier cell is in the log but not here: then
        nothing is added). Where the log starts after the first missing character, the gap is
        marked as omitted.
        """
        texts: dict[str, str] = {}
        for name, text in log.records:
            texts[name] = texts.get(name, "") + text
        start: dict[str, int] = {}
        gap = 0
        for name, text in texts.items():
            at = self._received.get(name, 0) - log.skipped.get(name, 0)
            recent = self._recent.get(name, "")
            seen = min(max(at, 0), len(recent))
            if at > len(text) or (at >= 0 and text[at - seen : at] != recent[len(recent) - seen :]):
                return 0
            gap += max(-at, 0)
            start[name] = max(at, 0)
        if gap:
            self._flush_tail()
            self.outputs.append(OmittedOutput(gap))
            self.dropped_chars += gap
        added = 0
        for name, text in log.records:
            skip = min(start[name], len(text))
            start[name] -= skip
            if text[skip:]:
                self._stream(name, text[skip:])
                added += len(text) - skip
        return added

    def finish(self) -> list[Output]:
        """The outputs, in order, with the rolling tail (if any) in place."""
        self._flush_tail()
        if self.dropped_outputs:
            self.outputs.append(OmittedOutput(0, self.dropped_outputs))
        return self.outputs

    # -- internals --------------------------------------------------------------------------
    def _clear(self) -> None:
        self._clear_pending = False
        self.outputs.clear()
        self._rich = 0
        self._tail.clear()
        self._tail_chars = 0

    def _stream(self, name: str, text: str) -> None:
        self._received[name] = self._received.get(name, 0) + len(text)
        self._recent[name] = (self._recent.get(name, "") + text[-_RECENT:])[-_RECENT:]
        if not self._overflow:
            head, text = text[: self._head_room], text[self._head_room :]
            self._head_room -= len(head)
            self._merge(name, head)
            if not text:
                return
            self._overflow = True
        if self._tail and self._tail[-1][0] == name:
            self._tail[-1][1] += text
        else:
            self._tail.append([name, text])
        self._tail_chars += len(text)
        while self._tail_chars > self._tail_budget:
            excess = self._tail_chars - self._tail_budget
            first = self._tail[0]
            if len(first[1]) <= excess:
                self._tail.popleft()
                cut = len(first[1])
            else:
                first[1] = first[1][excess:]
                cut = excess
            self._tail_chars -= cut
            self.dropped_chars += cut
            self._unflushed_drop += cut

    def _merge(self, name: str, text: str) -> None:
        if not text:
            return
        last = self.outputs[-1] if self.outputs else None
        if isinstance(last, StreamOutput) and last.name == name:
            last.text += text
        else:
            self.outputs.append(StreamOutput(name, text))

    def _flush_tail(self) -> None:
        if self._unflushed_drop:
            self.outputs.append(OmittedOutput(self._unflushed_drop))
            self._unflushed_drop = 0
        for name, text in self._tail:
            self._merge(name, text)
        self._tail.clear()
        self._tail_chars = 0

    def _append(self, output: Output, *, always: bool = False) -> bool:
        self._flush_tail()
        if self._rich >= self._max_outputs and not always:
            self.dropped_outputs += 1
            return False
        self._rich += 1
        self.outputs.append(output)
        return True

    def _save_image(self, data: dict[str, Any]) -> Path | None:
        for mime, suffix in _IMAGE_SUFFIX.items():
            if mime not in data:
                continue
            value = data[mime]
            try:
                if mime == "image/svg+xml":
                    payload = (value if isinstance(value, str) else "".join(value)).encode("utf-8")
                else:
                    payload = base64.b64decode(value if isinstance(value, str) else "".join(value))
            except (binascii.Error, ValueError, TypeError) as exc:
                logger.warning("could not decode a %s output: %s", mime, exc)
                return None
            self._image_count += 1
            path = self._images_dir / f"{self._image_prefix}-{self._image_count}{suffix}"
            try:
                write_no_follow(path, payload)
            except OSError as exc:
                logger.warning("could not save an image output to %s: %s", path, exc)
                return None
            return path
        return None


def write_no_follow(path: Path, data: bytes) -> None:
    """Write ``path`` in a folder the kernel can also write (the workspace) without following links.

    The kernel could have replaced the folder or the file with a symbolic link to a host file; the
    host must never write (or read) through it. A link in the folder's place is removed.
    """
    folder = path.parent
    if folder.is_symlink():
        folder.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fd = os.open(path.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    finally:
        os.close(dir_fd)
