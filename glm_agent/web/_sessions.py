"""Browser sessions: each has its own Agent and kernel; closed on tab close, idle timeout or shutdown."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from glm_agent import events as ev
from glm_agent.agent import Agent, build_system_message
from glm_agent.chatglm3.turns import PromptView, prompt_view
from glm_agent.errors import GlmAgentError, SessionLimitError, StoppedWhileWaiting
from glm_agent.messages import Call, SystemMessage, UserMessage
from glm_agent.web._config import WebConfig
from glm_agent.web._render import ChatView

__all__ = ["SessionManager", "WebSession", "Snapshot"]

log = logging.getLogger(__name__)

MODES = ("Chat", "Tools", "Code Interpreter")


class Snapshot:
    """What the UI shows of a session at one moment."""

    def __init__(self, session: WebSession) -> None:
        self.messages = [dict(m) for m in session.view.messages]
        self.running = session.running
        self.approval: Call | None = session.pending_approval
        self.status = session.status


class _ApprovalGate:
    """``approve(call)`` for the agent: waits for the user's Approve/Deny; anything else (stop, close) is a no."""

    def __init__(self, session: WebSession) -> None:
        self.session = session
        self._decided = threading.Event()
        self._verdict = False

    def __call__(self, call: Call) -> bool:
        session = self.session
        self._decided.clear()
        self._verdict = False
        with session.changed:
            session.pending_approval = call
            session.view.awaiting_approval(call)
            session.bump()
        try:
            while not self._decided.wait(0.2):
                if session.stop_requested.is_set() or session.closed:
                    return False
            return self._verdict is True
        finally:
            with session.changed:
                session.pending_approval = None
                session.bump()

    def answer(self, approved: bool) -> None:
        self._verdict = approved is True
        self._decided.set()


class WebSession:
    """One browser tab: a conversation (its own :class:`Agent`), its kernel, its files, its run thread."""

    def __init__(self, session_id: str, config: WebConfig, pool: Any = None) -> None:
        self.id = session_id
        self.config = config
        self.pool = pool
        self.view = ChatView(image_url=self._export_image)
        self.changed = threading.Condition()
        self.version = 0
        self.stop_requested = threading.Event()
        self.closed = False
        self.running = False
        self.status = ""
        self.pending_approval: Call | None = None
        self.last_active = time.monotonic()
        self.mode = config.modes()[-1]
        self.system: str | None = None
        self.generation: dict[str, Any] = {}
        self.ask = False
        self.uploads: list[Path] = []
        self.interpreter: Any = None
        self.agent: Agent | None = None
        self.export_dir = Path(tempfile.mkdtemp(prefix=f"glm-agent-web-{session_id[:8]}-"))
        self._gate = _ApprovalGate(self)
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._images = 0

    # -- conversation ----------------------------------------------------------------------------
    def official_system(self, mode: str | None = None) -> str:
        """ChatGLM3's official system prompt for ``mode`` (the text; tools are attached separately)."""
        return self._system_message(mode or self.mode, None).content

    def _system_message(self, mode: str, system: str | None) -> SystemMessage:
        tools = self.config.tools.chatglm3_schemas() if mode != "Chat" and len(self.config.tools) else None
        return build_system_message(system, tools, mode == "Code Interpreter", self.config.language)

    def configure(
        self, *, mode: str | None = None, system: str | None = None, generation: dict[str, Any] | None = None
    ) -> None:
        """Settings for the conversation; a new mode or system prompt starts a new conversation."""
        with self._lock:
            if mode is not None and mode not in self.config.modes():
                raise ValueError(f"unknown mode {mode!r}; choose one of {self.config.modes()}")
            if system is not None and system.strip() == self.official_system(mode).strip():
                system = None
            restart = (mode is not None and mode != self.mode) or system != self.system
            self.mode = mode or self.mode
            self.system = system
            if generation is not None:
                self.generation = generation
                if self.agent is not None:
                    self.agent.generation = self.agent.generation.of(generation)
            if restart and self.agent is not None:
                self.new_conversation(fresh_kernel=False)

    def new_conversation(self, *, fresh_kernel: bool = True) -> None:
        """Clear: a new conversation (and a fresh kernel, unless asked otherwise)."""
        with self._lock:
            self._check_idle()
            if fresh_kernel and self.interpreter is not None:
                self.interpreter.close()
                self.interpreter = None
            self.agent = None
            self.uploads.clear()
            with self.changed:
                self.view.clear()
                self.bump()

    def _ensure_agent(self) -> Agent:
        if self.agent is not None:
            return self.agent
        config = self.config
        model = config.models.for_session(self._on_wait, self.stop_requested.is_set)
        code = self.mode == "Code Interpreter"
        interpreter = self._ensure_interpreter() if code else None
        self.agent = Agent(
            model,
            tools=config.tools if self.mode != "Chat" else None,
            code_interpreter=interpreter,
            system=self.system,
            max_steps=config.max_steps,
            language=config.language,
            generation=self.generation or None,
        )
        return self.agent

    def _ensure_interpreter(self) -> Any:
        if self.interpreter is None:
            from glm_agent.interpreter import CodeInterpreter

            config = self.config
            if config.gateway:
                self.interpreter = CodeInterpreter(
                    gateway=config.gateway, token=config.token, timeout=config.code_timeout
                )
            else:
                self.interpreter = CodeInterpreter(pool=self.pool, timeout=config.code_timeout)
            self.interpreter.on_output = self._on_output
        return self.interpreter

    # -- files -----------------------------------------------------------------------------------
    def add_upload(self, path: str | Path) -> str:
        """Queue a file for the next message (it goes into /mnt/data then); returns its name."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot upload {path}: no such file")
        with self._lock:
            self.uploads.append(path)
        return path.name

    def exports(self) -> dict[str, Path | None]:
        """The session as a notebook and a JSON Lines transcript (written now), for download."""
        with self._lock:
            agent = self.agent
            if agent is None or len(agent.messages) <= 1:
                return {"notebook": None, "transcript": None}
            return {
                "notebook": agent.save_notebook(self.export_dir / "conversation.ipynb"),
                "transcript": agent.save(self.export_dir / "conversation.jsonl"),
            }

    def workspace_files(self) -> list[Path]:
        """Copies of the files in the kernel's /mnt/data (what the code wrote, and uploads), for download."""
        interpreter = self.interpreter
        if interpreter is None or self.config.gateway:
            return []
        workspace = Path(interpreter.workspace)
        target = self.export_dir / "files"
        shutil.rmtree(target, ignore_errors=True)
        out: list[Path] = []
        for path in sorted(workspace.iterdir()) if workspace.is_dir() else []:
            if path.is_file() and not path.name.startswith("."):
                target.mkdir(exist_ok=True)
                out.append(Path(shutil.copy2(path, target / path.name)))
        return out

    def _export_image(self, path: Path) -> str:
        """Images leave the kernel's workspace (which goes with the kernel) for the session's folder."""
        self._images += 1
        target = self.export_dir / "images" / f"{self._images:03d}-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(path, target)
        except OSError as exc:
            log.warning("could not copy image %s: %s", path, exc)
            return str(path)
        return str(target)

    def prompt(self) -> PromptView:
        """The conversation's ChatGLM3 turns with token counts (when a tokenizer is known)."""
        with self._lock:
            if self.agent is not None:
                messages = list(self.agent.messages)
            else:  # no conversation yet: the system turn it will start with
                messages = [self._system_message(self.mode, self.system)]
        return prompt_view(
            messages, self.config.tokenizer, context_length=self.config.context_length, add_generation_prompt=False
        )

    # -- running ---------------------------------------------------------------------------------
    def start(self, text: str, *, ask: bool = False) -> None:
        """Send a message: the run goes on in a thread; follow it with :meth:`follow`."""
        with self._lock:
            self._check_idle()
            self._busy()  # starting a kernel takes a moment: not idle meanwhile
            try:
                agent = self._ensure_agent()
            except BaseException:
                self.running = False
                raise
            agent.approve = self._gate if ask else None
            files, self.uploads = list(self.uploads), []
            self._launch(agent, text, files, [f.name for f in files])

    def regenerate(self, *, ask: bool = False) -> bool:
        """Run the last question again (its answer is dropped); False when there is none."""
        with self._lock:
            self._check_idle()
            agent = self.agent
            if agent is None:
                return False
            last = max((i for i, m in enumerate(agent.messages) if isinstance(m, UserMessage)), default=None)
            if last is None:
                return False
            content = agent.messages[last].content
            del agent.messages[last:]
            self._busy()
            agent.approve = self._gate if ask else None
            with self.changed:
                self.view.drop_last_turn()
            self._launch(agent, content, [], [], shown=_strip_upload_headers(content))
            return True

    def _busy(self) -> None:
        self.running = True
        self.last_active = time.monotonic()

    def _launch(self, agent: Agent, text: str, files: list[Path], names: list[str], shown: str | None = None) -> None:
        self.stop_requested.clear()
        self.last_active = time.monotonic()
        with self.changed:
            self.view.user(shown if shown is not None else text, names)
            self.running, self.status = True, ""
            self.bump()
        self._thread = threading.Thread(
            target=self._run, args=(agent, text, files), name=f"glm-agent-web-{self.id[:8]}", daemon=True
        )
        self._thread.start()

    def _run(self, agent: Agent, text: str, files: list[Path]) -> None:
        stream = None
        finished = False
        try:
            stream = agent.stream(text, files=files)
            for event in stream:
                with self.changed:
                    if isinstance(event, ev.RunError) and isinstance(event.exception, StoppedWhileWaiting):
                        self.view.notice("Stopped.")
                    else:
                        self.view.event(event)
                    finished = finished or isinstance(event, (ev.FinalAnswer, ev.RunError))
                    self.bump()
                if self.stop_requested.is_set():
                    agent.cancel()  # e.g. after a call denied by Stop: the run ends once the denial is recorded
        except Exception as exc:  # the UI shows it; the session stays usable
            log.exception("session %s: the run failed", self.id)
            with self.changed:
                self.view.notice(f"Error: {type(exc).__name__}: {exc}")
                finished = True
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # cancels cleanly: pending calls get an observation
            with self.changed:
                if self.stop_requested.is_set() and not finished:
                    self.view.notice("Stopped.")
                self.running, self.status = False, ""
                self.last_active = time.monotonic()
                self.bump()

    def stop(self) -> None:
        """Stop generation and running code (within a second or two); a pending approval is denied.

        The run ends the agent's own way (:meth:`Agent.cancel`: ``RunError(kind="cancelled")``,
        pending calls answered), so the conversation stays well formed. Waiting for the model ends
        on ``stop_requested``; a pending approval is denied first (the model's conversation says
        so), then the run is cancelled.
        """
        self.stop_requested.set()
        if self.running and self.pending_approval is None:
            threading.Thread(target=self._cancel_until_stopped, name="glm-agent-web-stop", daemon=True).start()

    def _cancel_until_stopped(self, tries: int = 10, every: float = 0.5) -> None:
        """``Agent.cancel()`` until the run ends, at most a few times: a cancel that lands before the run
        starts is cleared by it, and an interrupt that lands just before a cell starts is lost."""
        thread = self._thread
        for _ in range(tries):
            agent = self.agent
            if agent is None or thread is None or not thread.is_alive():
                return
            agent.cancel()
            thread.join(every)

    def answer_approval(self, approved: bool) -> None:
        self._gate.answer(approved)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run ends; True if it did."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def follow(self, poll: float = 0.1) -> Iterator[Snapshot]:
        """Snapshots as the run changes the view, until it ends (the last one has ``running`` False)."""
        seen = -1
        while True:
            with self.changed:
                if self.version == seen:
                    self.changed.wait(poll)
                if self.version == seen:
                    continue
                seen = self.version
                snap = Snapshot(self)
            self.last_active = time.monotonic()
            yield snap
            if not snap.running:
                return

    def snapshot(self) -> Snapshot:
        with self.changed:
            return Snapshot(self)

    # -- plumbing --------------------------------------------------------------------------------
    def bump(self) -> None:
        """Mark the view changed (call with ``changed`` held)."""
        self.version += 1
        self.changed.notify_all()

    def _on_output(self, output: Any) -> None:
        text = getattr(output, "text", None)
        if isinstance(text, str) and text:
            with self.changed:
                self.view.live_output(text)
                self.bump()

    def _on_wait(self, ahead: int) -> None:
        with self.changed:
            self.status = f"Waiting for the model: {ahead} generation{'s' * (ahead != 1)} ahead" if ahead else ""
            self.bump()

    def _check_idle(self) -> None:
        if self.closed:
            raise GlmAgentError("this session was closed (idle too long or the server is stopping); reload the page")
        if self.running:
            raise GlmAgentError("a reply is still running; wait for it or press Stop")

    def close(self) -> None:
        """End the run, free the kernel, remove the session's files. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.stop()
        self.wait(10)
        with self._lock:
            if self.interpreter is not None:
                self.interpreter.close()
                self.interpreter = None
            self.agent = None
        shutil.rmtree(self.export_dir, ignore_errors=True)


def _warm_notebooks() -> None:
    """Import nbformat and build its validator now (seconds, once), not when the first run ends."""
    try:
        import nbformat

        nbformat.validate(nbformat.v4.new_notebook())  # type: ignore[no-untyped-call]
    except Exception:  # only a warm-up
        log.debug("warming up nbformat failed", exc_info=True)


def _strip_upload_headers(content: str) -> str:
    lines = content.split("\n")
    while len(lines) >= 3 and lines[0].startswith("#File: ") and lines[2] == "#File uploaded":
        lines = lines[3:]
    return "\n".join(lines)


class SessionManager:
    """Opens, finds and closes sessions: at most ``max_sessions``, idle ones closed after ``idle_timeout``."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.pool: Any = None
        if config.code_interpreter and not config.gateway:
            from glm_agent.interpreter import KernelPool

            self.pool = KernelPool(config.pool_size)
        self._sessions: dict[str, WebSession] = {}
        self._expired: set[str] = set()  # closed for idleness: their tabs are told to reload
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="glm-agent-web-reaper", daemon=True)
        self._reaper.start()
        threading.Thread(target=_warm_notebooks, name="glm-agent-web-warm", daemon=True).start()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def open(self, session_id: str) -> WebSession:
        """The session for ``session_id`` (created if new); :class:`SessionLimitError` past ``max_sessions``."""
        with self._lock:
            if self._closing.is_set():
                raise GlmAgentError("the server is stopping")
            session = self._sessions.get(session_id)
            if session is not None and not session.closed:
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
            session = WebSession(session_id, self.config, self.pool)
            self._sessions[session_id] = session
            log.info("session %s opened (%d open)", session_id[:8], len(self._sessions))
            return session

    def ids(self) -> list[str]:
        """The open sessions' ids."""
        with self._lock:
            return list(self._sessions)

    def get(self, session_id: str) -> WebSession | None:
        with self._lock:
            return self._sessions.get(session_id)

    def close(self, session_id: str) -> None:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            session.close()
            log.info("session %s closed", session_id[:8])

    def reap(self) -> list[str]:
        """Close sessions idle for longer than ``idle_timeout`` (not while they run); their ids."""
        now = time.monotonic()
        with self._lock:  # removed and marked expired in one step: its tab is never given a fresh session
            idle = {
                sid: s
                for sid, s in self._sessions.items()
                if not s.running and now - s.last_active > self.config.idle_timeout
            }
            for sid in idle:
                del self._sessions[sid]
                self._expired.add(sid)
        for sid, session in idle.items():
            session.close()
            log.info("session %s closed after %g idle seconds", sid[:8], self.config.idle_timeout)
        return list(idle)

    def _reap_loop(self) -> None:
        interval = min(30.0, max(0.5, self.config.idle_timeout / 4))
        while not self._closing.wait(interval):
            try:
                self.reap()
            except Exception:
                log.exception("closing idle sessions failed")

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
