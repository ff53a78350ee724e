"""Reuse of keys and values across calls and conversations: the engine's working buffer, the
shared :class:`KVStore` in memory, and the :class:`PromptCache` on disk.

An agent resends its whole conversation every turn, and conversations share their start (the
system prompt with the tools' schemas). Before a prompt is prefilled, the longest prefix any
of the three holds is put in the runner's buffer; after a generation, what was computed goes
into the store (and the prompt cache), whichever conversation it came from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from glm_agent.engine._kv_store import Block, KVStore
from glm_agent.engine._prompt_cache import PromptCache
from glm_agent.engine._runner import KVRunner, Runner

logger = logging.getLogger(__name__)

__all__ = ["PrefixCache", "common_prefix_length"]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    """The ids whose keys and values sit in ``runner``, in order, and where to find more.

    :meth:`prepare` fills the runner with the longest stored prefix of a new prompt (keeping at
    least one prompt token to prefill, which yields the next-token logits) and returns the ids
    left to prefill; :attr:`source` says where the reused part came from. :meth:`finish` stores
    what the generation computed. Disabled, it starts from an empty cache every time. Without a
    ``store`` (an engine whose buffer cannot be read), only the last sequence is reused.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        enabled: bool = True,
        store: KVStore | None = None,
        disk: PromptCache | None = None,
    ) -> None:
        self.runner = runner
        self.enabled = enabled
        self.store = store if enabled else None
        self.disk = disk if enabled else None
        self.ids: list[int] = []
        self.source = ""  # where the reused prefix of the last prepared prompt came from: "memory", "disk" or ""
        self._pinned: list[Block] = []

    @property
    def _kv(self) -> KVRunner:
        runner: KVRunner = self.runner  # type: ignore[assignment]  # a store exists only for a KVRunner
        return runner

    def prepare(self, prompt: Sequence[int]) -> list[int]:
        self._release()
        if not self.enabled:
            self.reset()
            self.source = ""
            return list(prompt)
        limit = len(prompt) - 1
        keep = min(common_prefix_length(self.ids, prompt), limit)
        self.source = "memory" if keep else ""
        self.runner.crop(keep)
        del self.ids[keep:]
        if self.store is not None:
            chain = self.store.match(prompt, limit)
            self.store.pin(chain)
            self._pinned = chain
            size = self.store.block_size
            partial = self.store.partial(chain, prompt, limit)
            stored = len(chain) * size + (partial[1] if partial else 0)
            if stored > keep:
                first = keep // size  # blocks before it are already in the buffer
                self.runner.crop(first * size)
                for block in chain[first:]:
                    assert block.kv is not None
                    self._kv.write_kv(self.runner.length, block.kv)
                if partial is not None:
                    block, count = partial
                    assert block.kv is not None
                    self._kv.write_kv(self.runner.length, block.kv[:, :, :, :count])
                keep = stored
                self.ids = list(prompt[:keep])
                self.source = "memory"
        if self.disk is not None:
            keep = self._load_from_disk(prompt, keep, limit)
        logger.debug("prefix cache: reusing %d of %d prompt tokens (%s)", keep, len(prompt), self.source or "none")
        return list(prompt[keep:])

    def _load_from_disk(self, prompt: Sequence[int], keep: int, limit: int) -> int:
        assert self.disk is not None
        for segment in self.disk.load(prompt, longer_than=keep, limit=limit):
            if segment.end <= keep:
                continue
            skip = max(0, keep - segment.start)
            try:
                self._kv.write_kv(segment.start + skip, segment.kv[:, :, :, skip:])
            except ValueError as exc:  # shapes of another layout under the same fingerprint: never use them
                logger.warning("prompt cache: a stored prefix does not fit this model (%s); it is computed", exc)
                self.runner.crop(keep)
                break
            keep = segment.end
            self.ids = list(prompt[:keep])
            self.source = "disk"
        return keep

    def extend(self, ids: Sequence[int]) -> None:
        """Record ids whose forward pass completed."""
        self.ids.extend(ids)

    def finish(self, boundaries: Sequence[int] = ()) -> None:
        """Store the sequence in the runner (its whole blocks) for any later prompt; ``boundaries``
        are lengths worth a file of their own on disk (the end of the system prompt)."""
        self._release()
        if self.runner.length != len(self.ids):
            self.reset()
            return
        if self.store is not None and self.ids:
            self.store.insert(self.ids, self._kv.read_kv)
        if self.disk is not None and self.ids:
            for end in sorted({b for b in boundaries if 0 < b < len(self.ids)} | {len(self.ids)}):
                self.disk.save(self.ids[:end], self._kv.read_kv)

    def reset(self) -> None:
        """Forget the runner's buffer (after a forward pass that did not complete)."""
        self._release()
        self.runner.crop(0)
        self.ids.clear()

    def clear(self) -> None:
        """Forget the buffer and every block in memory (the prompt cache on disk stays)."""
        self.reset()
        if self.store is not None:
            self.store.clear()

    def _release(self) -> None:
        if self._pinned and self.store is not None:
            self.store.unpin(self._pinned)
        self._pinned = []
