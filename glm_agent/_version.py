"""glm-agent's version, from the installed package's metadata (a bottom module: anything may import it)."""

from __future__ import annotations

from importlib import metadata

__all__ = ["__version__"]


def _installed_version() -> str:
    try:
        return metadata.version("glm-agent")
    except metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
        return "0+unknown"


__version__ = _installed_version()
