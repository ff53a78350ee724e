"""The kernel's environment: an allowlist, never a copy of the host's.

Only what Python, locales and numeric libraries need is passed on (``PATH``, ``LANG`` and
``LC_*``, ``TZ``, thread-count knobs), plus the kernel's own settings and what the caller
passes as ``env=``. API keys, tokens, passwords and every other variable of the host
process never reach code in the kernel.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

__all__ = ["kernel_environment", "check_env", "PASSED_FROM_HOST"]

#: host variables passed on when set (names, or patterns ending in ``*``)
PASSED_FROM_HOST = (
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _passed(name: str) -> bool:
    return any(name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in PASSED_FROM_HOST)


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Validate ``CodeInterpreter(env=...)``: str names (identifiers) to str values without NUL."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of variable names to strings, not {type(env).__name__}")
    for name, value in env.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"invalid environment variable name {name!r}: use letters, digits and _")
        if not isinstance(value, str) or "\x00" in value:
            raise ValueError(f"environment variable {name} must be a str without NUL characters, not {value!r}")
    return dict(env)


def kernel_environment(
    *, home: str, tmpdir: str, scratch: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The complete environment of a kernel: the allowlist, the kernel's settings, then ``extra``."""
    env = {name: value for name, value in os.environ.items() if _passed(name)}
    bindir = os.path.dirname(sys.executable)
    env.update(
        PATH=os.pathsep.join(dict.fromkeys([bindir, "/usr/local/bin", "/usr/bin", "/bin"])),
        HOME=home,
        TMPDIR=tmpdir,
        IPYTHONDIR=f"{scratch}/ipython",
        MPLCONFIGDIR=f"{scratch}/matplotlib",
        XDG_CACHE_HOME=f"{scratch}/cache",
        MPLBACKEND="module://matplotlib_inline.backend_inline",
        MALLOC_ARENA_MAX="2",  # keeps address space use predictable under RLIMIT_AS
        JUPYTER_PLATFORM_DIRS="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
        PYTHONNOUSERSITE="1",
    )
    env.setdefault("LANG", "C.UTF-8")
    env.update(extra or {})
    return env
