"""Reuse of the KV cache across calls: an agent resends the whole conversation every turn."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from glm_agent.models._glm_runner import Runner

logger = logging.getLogger(__name__)

__all__ = ["PrefixCache", "common_prefix_length"]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    """The ids whose keys and values sit in ``runner``, in order.

    :meth:`prepare` crops the runner to the longest common prefix with a new prompt (keeping at
    least one prompt token to prefill, which yields the next-token logits) and returns the ids
    left to prefill. Disabled, it starts from an empty cache every time.
    """

    def __init__(self, runner: Runner, *, enabled: bool = True) -> None:
        self.runner = runner
        self.enabled = enabled
        self.ids: list[int] = []

    def prepare(self, prompt: Sequence[int]) -> list[int]:
        keep = min(common_prefix_length(self.ids, prompt), len(prompt) - 1) if self.enabled else 0
        self.runner.crop(keep)
        del self.ids[keep:]
        logger.debug("prefix cache: reusing %d of %d prompt tokens", keep, len(prompt))
        return list(prompt[keep:])

    def extend(self, ids: Sequence[int]) -> None:
        """Record ids whose forward pass completed."""
        self.ids.extend(ids)

    def reset(self) -> None:
        """Forget everything (after a forward pass that did not complete)."""
        self.runner.crop(0)
        self.ids.clear()

    def sync(self) -> None:
        """Make the runner and the recorded ids agree (after a generation was closed early)."""
        if self.runner.length != len(self.ids):
            self.reset()
