"""Process-wide counts that rooms without a metrics library report (interpreter runs and restarts);
the server's ``/metrics`` reads them."""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["COUNTERS", "count"]

COUNTERS: Counter[str] = Counter()
_lock = threading.Lock()


def count(name: str, amount: int = 1) -> None:
    with _lock:
        COUNTERS[name] += amount
