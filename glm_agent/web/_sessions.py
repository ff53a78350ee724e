"""A browser session: its own Agent, kernel and files, and the client that owns it."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from glm_agent import events as ev
from glm_agent.agent import Agent
from glm_agent.chatglm3.prompts import strip_upload_headers
from glm_agent.chatglm3.turns import PromptView, prompt_view
from glm_agent.errors import GlmAgentError, SessionForbidden, StoppedWhileWaiting, UploadRefused
from glm_agent.interpreter import CodeInterpreter, KernelPool, WorkspaceFile
from glm_agent.messages import Call, SystemMessage, UserMessage
from glm_agent.web._config import CHAT, CODE, Mode, WebConfig
from glm_agent.web._files import SessionFiles
from glm_agent.web._queue import QueuedModel
from glm_agent.web._render import ChatView

__all__ = ["WebSession", "Snapshot", "Owner", "SessionForbidden", "FileArea"]

logger = logging.getLogger(__name__)

FileArea = Literal["workspace", "session"]


@dataclass(frozen=True)
class Owner:
    """Who opened a session: the browser's client cookie and the login's user name (if the UI has a login).

    ``Owner.in_process()`` is the caller of the library itself (no browser).
    """

    client: str
    user: str | None = None

    @classmethod
    def in_process(cls) -> Owner:
        return _IN_PROCESS

    @property
    def key(self) -> str:
        """What per-client limits count by: the login when there is one, else the browser."""
        return f"user:{self.user}" if self.user is not None else f"client:{self.client}"


_IN_PROCESS = Owner("")


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

    def __init__(
        self,
        session_id: str,
        config: WebConfig,
        pool: KernelPool | None = None,
        *,
        owner: Owner | None = None,
        browser: bool = False,
        file_url: Callable[[str, str, str], str] | None = None,
        take_upload: Callable[[str], bool] | None = None,
        upload_root: str = "",
    ) -> None:
        """``owner``: who opened it (default: this process). ``browser``: opened by a page load (API
        sessions idle out sooner). ``file_url(token, area, name)``: the URL of one of its files.
        ``take_upload(path)``: whether its owner uploaded ``path`` (the door's ledger), which must lie
        in ``upload_root`` (Gradio's upload folder)."""
        self.id = session_id
        self.config = config
        self.pool = pool
        self.owner = owner or Owner.in_process()
        self.browser = browser
        self.token = secrets.token_urlsafe(18)  # names its files in URLs (with the owner's cookie)
        self._file_url = file_url
        self._take_upload = take_upload or (lambda _path: False)
        self._upload_root = upload_root
        self.view = ChatView(image_url=self._export_image, max_live_chars=config.max_live_chars)
        self.changed = threading.Condition()
        self.version = 0
        self.stop_requested = threading.Event()
        self.closed = False
        self.running = False
        self.status = ""
        self.pending_approval: Call | None = None
        self.last_active = time.monotonic()
        self.mode: Mode = config.modes()[-1]
        self.system: str | None = None
        self.generation: dict[str, Any] = {}
        self.ask = False
        self.files = SessionFiles("s", max_bytes=config.max_session_bytes, max_file_bytes=config.max_upload_bytes)
        self.interpreter: CodeInterpreter | None = None
        self.agent: Agent | None = None
        self._gate = _ApprovalGate(self)
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._images = 0

    # -- conversation ----------------------------------------------------------------------------
    def official_system(self, mode: Mode | None = None) -> str:
        """ChatGLM3's official system prompt for ``mode`` (the text; tools are attached separately)."""
        return self._system_message(mode or self.mode, None).content

    def _system_message(self, mode: Mode, system: str | None) -> SystemMessage:
        return self.config.system_message(mode, system)

    def configure(
        self, *, mode: str | None = None, system: str | None = None, generation: dict[str, Any] | None = None
    ) -> None:
        """Settings for the conversation; a new mode or system prompt starts a new conversation."""
        with self._lock:
            chosen = self._mode(mode) if mode is not None else self.mode
            if system is not None and system.strip() == self.official_system(chosen).strip():
                system = None
            restart = chosen != self.mode or system != self.system
            self.mode = chosen
            self.system = system
            if generation is not None:
                self.generation = generation
                if self.agent is not None:
                    self.agent.generation = self.agent.generation.of(generation)
            if restart and self.agent is not None:
                self.new_conversation(fresh_kernel=False)

    def _mode(self, name: str) -> Mode:
        """A mode a client named, if this UI offers it."""
        for mode in self.config.modes():
            if name == mode:
                return mode
        raise ValueError(f"unknown mode {name!r}; choose one of {self.config.modes()}")

    def new_conversation(self, *, fresh_kernel: bool = True) -> None:
        """Clear: a new conversation (and a fresh kernel, unless asked otherwise)."""
        with self._lock:
            self._check_idle()
            if fresh_kernel and self.interpreter is not None:
                self.interpreter.close()
                self.interpreter = None
            self.agent = None
            self.files.clear_uploads()
            with self.changed:
                self.view.clear()
                self.bump()

    def _ensure_agent(self) -> Agent:
        if self.agent is not None:
            return self.agent
        config = self.config
        model = config.models.for_session(self._on_wait, self.stop_requested.is_set)
        code = self.mode == CODE
        interpreter = self._ensure_interpreter() if code else None
        self.agent = Agent(
            model,
            tools=config.tools if self.mode != CHAT else None,
            code_interpreter=interpreter,
            system=self.system,
            max_steps=config.max_steps,
            language=config.language,
            generation=self.generation or None,
        )
        return self.agent

    def _ensure_interpreter(self) -> CodeInterpreter:
        if self.interpreter is None:
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
    @property
    def uploads(self) -> list[Path]:
        """Files waiting to go into /mnt/data with the next message."""
        return list(self.files.uploads)

    def add_upload(self, path: str | Path) -> str:
        """Queue a file Gradio received for the next message (it goes into /mnt/data then); returns its name.

        Only a file this session's owner uploaded (inside Gradio's upload folder, a regular file,
        not a link) is taken, within the per-file and per-session limits; anything else is an
        :class:`~glm_agent.web._files.UploadRefused` and nothing is copied.
        """
        path = str(path)
        if not self._take_upload(path):
            raise UploadRefused(f"{Path(path).name}: not a file this page uploaded")
        return self.files.take_upload(path, self._upload_root).name

    def exports(self) -> dict[str, str | None]:
        """The session as a notebook and a JSON Lines transcript (written now): their names for :meth:`open_download`."""
        with self._lock:
            agent = self.agent
            if agent is None or len(agent.messages) <= 1:
                return {"notebook": None, "transcript": None}
            names: dict[str, str | None] = {"notebook": "conversation.ipynb", "transcript": "conversation.jsonl"}
            agent.save_notebook(self.files.export_path("conversation.ipynb"))
            agent.save(self.files.export_path("conversation.jsonl"))
            if not self.files.fits():
                for name in ("conversation.ipynb", "conversation.jsonl"):
                    self.files.export_path(name).unlink(missing_ok=True)
                logger.warning("session %s: the exports do not fit the session's file budget", self.token[:6])
                return {"notebook": None, "transcript": None}
            return names

    def workspace_files(self) -> list[WorkspaceFile]:
        """The files in the kernel's /mnt/data that may be downloaded (regular, one link, not hidden)."""
        interpreter = self.interpreter
        if interpreter is None or self.config.gateway:
            return []
        return list(interpreter.files())

    def open_download(self, area: FileArea, name: str) -> BinaryIO:
        """One of the session's files, opened without following links: ``workspace`` (the kernel's
        /mnt/data, top level) or ``session`` (exports and images)."""
        if "/" in name or name.startswith("."):
            raise PermissionError(f"{name!r} is not a file of this session")
        if area == "workspace":
            interpreter = self.interpreter
            if interpreter is None or self.config.gateway:
                raise FileNotFoundError(f"{name}: no such file in /mnt/data")
            return interpreter.open_file(name)
        if area == "session":
            return self.files.open_export(name)
        raise PermissionError(f"{area!r} is not a file area")

    def file_url(self, area: FileArea, name: str) -> str | None:
        """The URL the page fetches one of its files at (None without a server)."""
        return self._file_url(self.token, area, name) if self._file_url is not None else None

    def _export_image(self, path: Path) -> str | None:
        """Images leave the kernel's workspace (which goes with the kernel) for the session's folder."""
        interpreter = self.interpreter
        if interpreter is None:
            return None
        name = self.files.copy_image(interpreter, path)
        if name is None:
            logger.warning("session %s: image %s not shown (a link, too big, or gone)", self.token[:6], path.name)
            return None
        return self.file_url("session", name)

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

    def last_generation(self) -> Any:
        """The stats of this conversation's last model turn (``GenerationStats``), when its model gives them."""
        with self._lock:
            model = self.agent.model if self.agent is not None else None
        return getattr(model, "last_stats", None) if isinstance(model, QueuedModel) else None

    # -- running ---------------------------------------------------------------------------------
    def start(self, text: str, *, ask: bool = False) -> None:
        """Send a message: the run goes on in a thread; follow it with :meth:`follow`."""
        with self._lock:
            self._check_idle()
            if self.files.uploads and self.mode != CODE:
                raise GlmAgentError(
                    "uploaded files go to the code interpreter: switch to Code Interpreter mode to send them"
                )
            self._busy()  # starting a kernel takes a moment: not idle meanwhile
            try:
                agent = self._ensure_agent()
            except BaseException:
                self.running = False
                raise
            self._set_approval(agent, ask)
            files = self.files.take_pending()
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
            self._set_approval(agent, ask)
            with self.changed:
                self.view.drop_last_turn()
            self._launch(agent, content, [], [], shown=strip_upload_headers(content))
            return True

    def _set_approval(self, agent: Agent, ask: bool) -> None:
        """Approve/Deny in the page: for every call with "Ask before running", else for marked tools only."""
        agent.approve = self._gate
        agent.ask = "all" if ask else "marked"

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
            logger.exception("session %s: the run failed", self.id)
            with self.changed:
                self.view.notice(f"Error: {type(exc).__name__}: {exc}")
                finished = True
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # cancels cleanly: pending calls get an observation
            self.files.drop(files)  # in the kernel's workspace now (or the run failed)
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
        self.files.remove()

    def check_owner(self, owner: Owner) -> None:
        """Raise :class:`SessionForbidden` unless ``owner`` opened this session."""
        mine = self.owner
        if owner != mine and not (secrets.compare_digest(owner.client, mine.client) and owner.user == mine.user):
            raise SessionForbidden("this session belongs to another client; reload the page for a session of your own")
