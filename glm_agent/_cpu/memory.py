"""The operating system's side of CPU inference: glibc's allocator settings and transparent huge pages.

By default glibc serves blocks over 128 KiB with fresh ``mmap``s and returns freed heap tops
to the kernel, so every forward pass page-faults its activations (logits, attention scratch)
in again. In virtual machines a page fault is expensive: we measured prefill and decode
running up to 10x slower. Keeping freed memory in the process fixes it; the cost is that the
process holds on to up to ``trim_threshold`` bytes of freed heap.

Opt out with the environment variable ``GLM_AGENT_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

logger = logging.getLogger(__name__)

__all__ = ["advise_huge_pages", "keep_freed_memory", "return_freed_memory"]

_MADV_HUGEPAGE = 14
_HUGE_PAGE = 2 << 20

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied = False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, loaded once (``find_library`` costs a millisecond or more; loading calls this per layer)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc (not musl)
    except (OSError, AttributeError):
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def return_freed_memory() -> bool:
    """Give the heap's free pages back to the kernel now (``malloc_trim``); True when done.

    Loading and re-laying out weights leaves freed temporaries between live weights, where
    glibc never trims on its own: measured at ChatGLM3-6B int4, 1.1 GB of the process's 5.3 GB.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def keep_freed_memory(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 512 * 2**20) -> bool:
    """Serve blocks up to ``mmap_threshold`` from the heap and keep freed heap memory; True when applied."""
    global _applied
    if _applied:
        return True
    if os.environ.get("GLM_AGENT_MALLOC_TUNING", "1") == "0":
        return False
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
    )
    _applied = ok
    logger.debug("glibc malloc tuning for CPU inference %s", "applied" if ok else "refused")
    return ok


def advise_huge_pages(address: int, length: int) -> bool:
    """Ask for transparent huge pages on the 2 MiB pages inside ``[address, address + length)``.

    For weights streamed once a token: in a virtual machine each 4 KiB page costs a nested
    page walk. Call it before the memory is first written (the pages are then faulted in huge).
    Opt out with ``GLM_AGENT_HUGE_PAGES=0``; a no-op where the kernel refuses.
    """
    if os.environ.get("GLM_AGENT_HUGE_PAGES", "1") == "0":
        return False
    libc = _glibc()
    if libc is None:
        return False
    start = -(-address // _HUGE_PAGE) * _HUGE_PAGE
    end = (address + length) // _HUGE_PAGE * _HUGE_PAGE
    if end <= start:
        return False
    return bool(libc.madvise(start, end - start, _MADV_HUGEPAGE) == 0)
