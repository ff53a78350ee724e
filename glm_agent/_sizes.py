"""Sizes written for people: ``100MiB``, ``2GiB``, ``500MB``, ``1048576``."""

from __future__ import annotations

import re

__all__ = ["parse_size"]

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_UNITS = {
    "": 1,
    "B": 1,
    "K": 10**3,
    "KB": 10**3,
    "KIB": 2**10,
    "M": 10**6,
    "MB": 10**6,
    "MIB": 2**20,
    "G": 10**9,
    "GB": 10**9,
    "GIB": 2**30,
    "T": 10**12,
    "TB": 10**12,
    "TIB": 2**40,
}


def parse_size(text: str | int) -> int:
    """Bytes from ``text`` (KiB/MiB/GiB are powers of 1024, KB/MB/GB of 1000); ``ValueError`` if it is not a size."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        match = _SIZE.fullmatch(str(text))
        unit = (match.group(2) or "").upper() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"{text!r} is not a size; write e.g. 100MiB, 2GiB or 500MB")
        size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError(f"{text!r}: a size must be at least one byte")
    return size
