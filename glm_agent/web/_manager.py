"""Browser sessions: opened per tab, owned by the client that opened them, bounded, and closed when idle.

Limits: ``max_sessions`` in all and ``max_sessions_per_client`` for one client (a login, else a
browser); sessions a page opened close after ``idle_timeout``, those opened by API calls alone
(no page: Gradio's Python client, a script) after ``api_idle_timeout``, unless kept busy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from glm_agent.errors import GlmAgentError, SessionLimitError
from glm_agent.interpreter import KernelPool
from glm_agent.web._config import WebConfig
from glm_agent.web._door import Door
from glm_agent.web._sessions import Owner, WebSession

__all__ = ["SessionManager"]

logger = logging.getLogger(__name__)


def _warm_notebooks() -> None:
    """Import nbformat and build its validator now (seconds, once), not when the first run ends."""
    try:
        import nbformat

        nbformat.validate(nbformat.v4.new_notebook())  # type: ignore[no-untyped-call]
    except Exception:  # only a warm-up
        logger.debug("warming up nbformat failed", exc_info=True)


class SessionManager:
    """Opens, finds and closes sessions: at most ``max_sessions``, idle ones closed after their timeout.

    ``door``: the UI's :class:`~glm_agent.web._door.Door` (which client uploaded which file);
    ``file_url(token, area, name)``: where the page fetches a session's files.
    """

    def __init__(
        self,
        config: WebConfig,
        *,
        door: Door | None = None,
        file_url: Callable[[str, str, str], str] | None = None,
    ) -> None:
        self.config = config
        self.door = door
        self.file_url = file_url
        self.pool: KernelPool | None = None
        if config.code_interpreter and not config.gateway:
            self.pool = KernelPool(config.pool_size)
        self._sessions: dict[str, WebSession] = {}
        self._by_token: dict[str, WebSession] = {}
        self._expired: set[str] = set()  # closed for idleness: their tabs are told to reload
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="glm-agent-web-reaper", daemon=True)
        self._reaper.start()
        threading.Thread(target=_warm_notebooks, name="glm-agent-web-warm", daemon=True).start()
        #: set once every mode's system prompt is computed on a local model (at once for other models)
        self.prompts_warmed = threading.Event()
        threading.Thread(target=self._warm_prompts, name="glm-agent-web-warm-prompts", daemon=True).start()

    def _warm_prompts(self) -> None:
        try:
            count = self.config.warm()
            if count:
                logger.info("computed the system prompts of %d modes ahead of the first visitor", count)
        except Exception as exc:  # a first visitor then computes it: nothing is lost
            logger.warning("could not compute the system prompts ahead: %s", exc)
        finally:
            self.prompts_warmed.set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def open(self, session_id: str, owner: Owner | None = None, *, browser: bool = False) -> WebSession:
        """The session for ``session_id`` (created if new, owned by ``owner``; default: this process).

        Raises :class:`~glm_agent.web._sessions.SessionForbidden` if another client owns it, and
        :class:`SessionLimitError` past ``max_sessions`` (or ``max_sessions_per_client``).
        """
        owner = owner or Owner.in_process()
        with self._lock:
            if self._closing.is_set():
                raise GlmAgentError("the server is stopping")
            session = self._sessions.get(session_id)
            if session is not None and not session.closed:
                session.check_owner(owner)
                if browser and not session.browser:
                    session.browser = True
                return session
            if session_id in self._expired:
                raise GlmAgentError(
                    f"this session ended after {self.config.idle_timeout / 60:g} idle minutes and its kernel was "
                    "freed; reload the page to start a new one"
                )
            if len(self._sessions) >= self.config.max_sessions:
                raise SessionLimitError(
                    f"All {self.config.max_sessions} sessions are in use. Try again in a few minutes "
                    "(sessions end when their tab closes or after "
                    f"{self.config.idle_timeout / 60:g} idle minutes)."
                )
            per_client = self.config.per_client_sessions()
            if (
                owner != Owner.in_process()
                and sum(s.owner.key == owner.key for s in self._sessions.values()) >= per_client
            ):
                raise SessionLimitError(
                    f"This client already has {per_client} sessions open (the most one client may have); "
                    "close a tab or wait for an idle one to end."
                )
            session = self._new_session(session_id, owner, browser)
            self._sessions[session_id] = session
            self._by_token[session.token] = session
            logger.info("session %s opened (%d open)", session.token[:6], len(self._sessions))
            return session

    def _new_session(self, session_id: str, owner: Owner, browser: bool) -> WebSession:
        door = self.door
        take_upload = None if door is None else (lambda path: door.uploads.take(path, owner.client))
        return WebSession(
            session_id,
            self.config,
            self.pool,
            owner=owner,
            browser=browser,
            file_url=self.file_url,
            take_upload=take_upload,
            upload_root=door.upload_folder if door is not None else "",
        )

    def ids(self) -> list[str]:
        """The open sessions' ids."""
        with self._lock:
            return list(self._sessions)

    def get(self, session_id: str, owner: Owner | None = None) -> WebSession | None:
        """The open session ``session_id``, if ``owner`` (default: this process) may act on it; else None."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None or owner is None:
            return session
        try:
            session.check_owner(owner)
        except GlmAgentError:
            return None
        return session

    def by_token(self, token: str) -> WebSession | None:
        """The open session whose files are named by ``token``."""
        with self._lock:
            return self._by_token.get(token)

    def close(self, session_id: str, owner: Owner | None = None) -> None:
        """Close a session (only its owner's request may, when ``owner`` is given)."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return
            if owner is not None:
                try:
                    session.check_owner(owner)
                except GlmAgentError:
                    return
            del self._sessions[session_id]
            self._by_token.pop(session.token, None)
        session.close()
        logger.info("session %s closed", session.token[:6])

    def reap(self) -> list[str]:
        """Close sessions idle past their timeout (not while they run); their ids."""
        now = time.monotonic()
        with self._lock:  # removed and marked expired in one step: its tab is never given a fresh session
            idle = {
                sid: s for sid, s in self._sessions.items() if not s.running and now - s.last_active > self._timeout(s)
            }
            for sid, session in idle.items():
                del self._sessions[sid]
                self._by_token.pop(session.token, None)
                self._expired.add(sid)
        for session in idle.values():
            session.close()
            logger.info("session %s closed after %g idle seconds", session.token[:6], self._timeout(session))
        return list(idle)

    def _timeout(self, session: WebSession) -> float:
        return (
            self.config.idle_timeout if session.browser else min(self.config.idle_timeout, self.config.api_idle_timeout)
        )

    def _reap_loop(self) -> None:
        shortest = min(self.config.idle_timeout, self.config.api_idle_timeout)
        interval = min(30.0, max(0.5, shortest / 4))
        while not self._closing.wait(interval):
            try:
                self.reap()
            except Exception:
                logger.exception("closing idle sessions failed")

    def close_all(self) -> None:
        """Close every session and the kernel pool (server shutdown)."""
        self._closing.set()
        with self._lock:
            ids = list(self._sessions)
        for sid in ids:
            self.close(sid)
        if self.pool is not None:
            self.pool.close()
        self._reaper.join(timeout=5)
