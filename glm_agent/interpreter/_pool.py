"""KernelPool: kernels started ahead of time, so that a new session's first run does not wait for one."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from glm_agent.errors import InterpreterError
from glm_agent.interpreter._bootstrap import start_kernel
from glm_agent.interpreter._environment import check_env
from glm_agent.interpreter._isolation import Isolation, check_readonly_paths, resolve_isolation
from glm_agent.interpreter._launcher import runtime_root
from glm_agent.interpreter._limits import Limits
from glm_agent.interpreter._local import LocalKernel
from glm_agent.interpreter._workspace import SessionDirs

__all__ = ["KernelPool"]

logger = logging.getLogger(__name__)


class _PoolState:
    """What the filler thread and the finalizer share (no reference to the pool itself)."""

    def __init__(self) -> None:
        self.ready: deque[LocalKernel] = deque()
        self.starting = 0
        self.closed = False
        self.cond = threading.Condition()
        self.last_error: str | None = None

    def shutdown(self) -> None:
        with self.cond:
            self.closed = True
            kernels = list(self.ready)
            self.ready.clear()
            self.cond.notify_all()
        for kernel in kernels:
            kernel.shutdown()


class KernelPool:
    """Keeps ``size`` kernels started and ready; ``CodeInterpreter(pool=pool)`` takes one.

    Each kernel gets a fresh workspace directory when it is pre-started (in isolated mode
    that directory is bind-mounted at ``/mnt/data`` then), which the session that takes it
    owns from then on. A kernel is never returned to the pool and never shared: a session
    closes its own; the pool starts a replacement in a background thread. Sessions that
    pass their own ``workspace=`` start a fresh kernel instead. When the pool is empty a
    session starts its own kernel (cold), so the pool only ever makes things faster.
    """

    def __init__(
        self,
        size: int = 2,
        *,
        limits: Limits | None = None,
        isolate: bool | None = None,
        start_timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        readonly_paths: Sequence[str | Path] = (),
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"KernelPool size must be a positive int, not {size!r}")
        self.size = size
        self.limits = limits or Limits()
        self.env = check_env(env)
        self.readonly_paths = check_readonly_paths(readonly_paths)
        self.isolation: Isolation = resolve_isolation(isolate)
        self.start_timeout = start_timeout
        self._state = _PoolState()
        self._finalizer = weakref.finalize(self, self._state.shutdown)
        self._thread = threading.Thread(
            target=_fill,
            args=(self._state, size, self.limits, self.isolation.enabled, start_timeout, self.env, self.readonly_paths),
            name="glm-agent-kernel-pool",
            daemon=True,
        )
        self._thread.start()

    @property
    def ready(self) -> int:
        """How many kernels are started and waiting."""
        with self._state.cond:
            return len(self._state.ready)

    @property
    def last_error(self) -> str | None:
        """Why the last pre-start failed, if it did."""
        return self._state.last_error

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Block until the pool is full (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._state.cond:
            while len(self._state.ready) < self.size and not self._state.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._state.cond.wait(left)
            return not self._state.closed

    def take(self) -> LocalKernel | None:
        """A ready kernel (now owned by the caller), or None when none is ready."""
        state = self._state
        while True:
            with state.cond:
                if state.closed:
                    raise InterpreterError("this KernelPool is closed; create a new one")
                if not state.ready:
                    return None
                kernel = state.ready.popleft()
                state.cond.notify_all()
            if kernel.is_alive():
                kernel.owns_dirs = False  # the session that takes it owns its directories from now on
                return kernel
            logger.warning("a pooled kernel had died (%s); discarding it", kernel.death_reason())
            kernel.shutdown()

    def close(self) -> None:
        """Stop the pre-started kernels and the filler thread. Sessions already taken are not affected."""
        self._finalizer()
        self._thread.join(timeout=self.start_timeout + 5)

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KernelPool(size={self.size}, ready={self.ready}, isolation={self.isolation.mode!r})"


def _fill(
    state: _PoolState,
    size: int,
    limits: Limits,
    isolate: bool,
    start_timeout: float,
    env: dict[str, str],
    readonly_paths: tuple[str, ...],
) -> None:
    """The filler thread: keep ``size`` kernels ready, one start at a time."""
    failures = 0
    while True:
        with state.cond:
            while not state.closed and len(state.ready) + state.starting >= size:
                state.cond.wait()
            if state.closed:
                return
            state.starting += 1
        dirs = SessionDirs.create(runtime_root(), size=limits.workspace_bytes, mount=isolate)
        kernel = LocalKernel(
            limits=limits,
            isolate=isolate,
            dirs=dirs,
            env=env,
            readonly_paths=readonly_paths,
            temporary_workspace=True,
            owns_dirs=True,
        )
        try:
            start_kernel(kernel, start_timeout)
        except Exception as exc:
            kernel.shutdown()
            failures += 1
            state.last_error = str(exc)
            logger.error("kernel pool: a kernel failed to start (%s)", exc)
            with state.cond:
                state.starting -= 1
                state.cond.wait(min(30.0, 0.5 * 2**failures))  # back off; close() wakes us
            continue
        failures = 0
        with state.cond:
            state.starting -= 1
            if state.closed:
                kernel.shutdown()
                return
            state.ready.append(kernel)
            state.cond.notify_all()
