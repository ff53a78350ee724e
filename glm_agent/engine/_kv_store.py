"""One KV store for every conversation: a radix tree over blocks of token ids, under a memory budget.

A prompt's keys and values are kept in blocks of ``block_size`` positions. Each block is a node
whose key is its token ids and whose parent is the block before it, so a block stands for the
whole prefix that ends with it (as in SGLang's radix tree and vLLM's chained block hashes, but
compared by ids, never by a hash alone). Conversations that share a start share its nodes: a
system prompt with the tools' schemas is held once however many conversations use it.

Nodes in use are pinned (a reference count); when the store is over its budget, the least
recently used unpinned leaves go first, so a shared start outlives the conversations on it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = ["Block", "KVStore"]


class Block:
    """``block_size`` positions of keys and values after the prefix of its parent."""

    __slots__ = ("__weakref__", "children", "depth", "ids", "kv", "parent", "pins")

    def __init__(self, ids: tuple[int, ...], parent: Block | None, kv: torch.Tensor | None, depth: int) -> None:
        self.ids = ids
        self.parent = parent
        self.children: dict[tuple[int, ...], Block] = {}
        self.kv = kv  # [layers, 2, kv heads, block_size, head_dim]; None for the root
        self.pins = 0
        self.depth = depth  # blocks from the root, this one included


class KVStore:
    """Blocks of keys and values by token prefix, at most ``budget_bytes`` of them (plus what is pinned).

    ``reserved`` is a callable giving memory that counts against the budget outside the store
    (the engine's working buffers), so that the budget bounds the engine's KV memory as a whole.
    """

    def __init__(
        self,
        *,
        block_size: int,
        budget_bytes: int,
        block_bytes: int,
        reserved: Callable[[], int] = lambda: 0,
    ) -> None:
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        self.block_size = block_size
        self.budget_bytes = int(budget_bytes)
        self.block_bytes = int(block_bytes)
        self._reserved = reserved
        self.root = Block((), None, None, 0)
        self._recent: OrderedDict[Block, None] = OrderedDict()  # every block but the root, oldest use first
        self.evicted = 0

    # -- reading ------------------------------------------------------------------------------
    @property
    def blocks(self) -> int:
        return len(self._recent)

    @property
    def bytes(self) -> int:
        return len(self._recent) * self.block_bytes

    def match(self, ids: Sequence[int], limit: int | None = None) -> list[Block]:
        """The longest chain of stored blocks equal to the start of ``ids`` (covering at most ``limit`` ids)."""
        size = self.block_size
        end = len(ids) if limit is None else min(limit, len(ids))
        chain: list[Block] = []
        node = self.root
        for start in range(0, end - size + 1, size):
            child = node.children.get(tuple(ids[start : start + size]))
            if child is None:
                break
            chain.append(child)
            node = child
        self._touch(chain)
        return chain

    def partial(self, chain: Sequence[Block], ids: Sequence[int], limit: int | None = None) -> tuple[Block, int] | None:
        """The block after ``chain`` that shares the most ids with ``ids`` there, and how many (0 < n < block_size).

        A position's keys and values depend only on the ids up to it, so the start of a block
        serves any prompt that shares that start.
        """
        start = len(chain) * self.block_size
        end = len(ids) if limit is None else min(limit, len(ids))
        wanted = ids[start : min(end, start + self.block_size)]
        node = chain[-1] if chain else self.root
        best: tuple[Block, int] | None = None
        for child in node.children.values():
            n = 0
            for a, b in zip(child.ids, wanted, strict=False):
                if a != b:
                    break
                n += 1
            if n and (best is None or n > best[1]):
                best = (child, n)
        if best is not None:
            self._touch([best[0]])
        return best

    # -- pins ---------------------------------------------------------------------------------
    @staticmethod
    def pin(chain: Sequence[Block]) -> None:
        """Keep these blocks (in use) until :meth:`unpin`."""
        for block in chain:
            block.pins += 1

    @staticmethod
    def unpin(chain: Sequence[Block]) -> None:
        for block in chain:
            block.pins -= 1

    # -- writing ------------------------------------------------------------------------------
    def insert(self, ids: Sequence[int], read: Callable[[int, int], torch.Tensor]) -> list[Block]:
        """Store every whole block of ``ids`` not stored yet; ``read(start, end)`` gives their keys and values.

        Returns the chain for ``ids``, its blocks now the most recently used, then evicts down to
        the budget (the new blocks last, and only if nothing older is left to evict).
        """
        size = self.block_size
        full = len(ids) // size * size
        chain = self.match(ids, full)
        node = chain[-1] if chain else self.root
        stored = len(chain) * size
        if self.budget_bytes - self._reserved() < self.block_bytes:
            return chain  # no room for even one block (the working buffer takes the budget)
        if stored < full:
            pieces = torch.split(read(stored, full), size, dim=3)  # one pass over the engine's buffers
            for offset, piece in zip(range(stored, full, size), pieces, strict=True):
                key = tuple(ids[offset : offset + size])
                child = Block(key, node, piece.contiguous(), node.depth + 1)
                node.children[key] = child
                self._recent[child] = None
                chain.append(child)
                node = child
        self.evict()
        return chain

    def evict(self, extra_bytes: int = 0) -> int:
        """Drop least recently used unpinned leaves until the store (and ``extra_bytes``) fits the budget."""
        dropped = 0
        while self.bytes + self._reserved() + extra_bytes > self.budget_bytes:
            victims = self._victims(self.bytes + self._reserved() + extra_bytes - self.budget_bytes)
            if not victims:
                break
            for block in victims:
                self._drop(block)
            dropped += len(victims)
        self.evicted += dropped
        if dropped:
            logger.debug("kv store: evicted %d blocks, %d kept", dropped, self.blocks)
        return dropped

    def clear(self) -> None:
        """Drop every unpinned block."""
        for block in list(self._recent):
            if block.pins == 0 and block in self._recent:
                self._drop_subtree(block)

    # -- internals ----------------------------------------------------------------------------
    def _touch(self, chain: Sequence[Block]) -> None:
        for block in chain:  # root to leaf: the leaf is the most recent, evicted last of its chain
            self._recent.move_to_end(block)

    def _victims(self, excess: int) -> list[Block]:
        """Unpinned leaves, oldest first, enough to free ``excess`` bytes (one pass; parents come free later)."""
        victims: list[Block] = []
        freed = 0
        for block in self._recent:
            if block.pins or block.children:
                continue
            victims.append(block)
            freed += self.block_bytes
            if freed >= excess:
                break
        return victims

    def _drop(self, block: Block) -> None:
        parent = block.parent
        if parent is not None:
            parent.children.pop(block.ids, None)
        self._recent.pop(block, None)
        block.kv = None
        block.parent = None

    def _drop_subtree(self, block: Block) -> None:
        if block.pins:
            return
        for child in list(block.children.values()):
            self._drop_subtree(child)
        if not block.children:
            self._drop(block)
