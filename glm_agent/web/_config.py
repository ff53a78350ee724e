"""What the web UI serves: the model (shared, or one per session for scripted replays), tools, interpreter, limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from glm_agent.chatglm3.prompts import build_system_message
from glm_agent.messages import SystemMessage
from glm_agent.models import ScriptedModel
from glm_agent.models.base import ChatModel
from glm_agent.tools import ToolRegistry
from glm_agent.web._queue import ModelQueue, QueuedModel, StopFn, WaitFn

__all__ = ["ModelSource", "WebConfig", "Mode", "CHAT", "TOOLS", "CODE"]

#: the modes of a conversation, as ChatGLM3's composite demo names them
Mode = Literal["Chat", "Tools", "Code Interpreter"]
CHAT: Mode = "Chat"
TOOLS: Mode = "Tools"
CODE: Mode = "Code Interpreter"

_MiB = 1024 * 1024


class ModelSource:
    """Where sessions get their model.

    ``ModelSource(model)``: one shared model; concurrent generations wait in a :class:`ModelQueue`.
    ``ModelSource(factory=fn)``: a fresh model per conversation (``scripted:FILE`` replays the file
    from its first reply in every browser session, so anyone can run the demo without weights).
    """

    def __init__(
        self,
        model: ChatModel | None = None,
        *,
        factory: Callable[[], ChatModel] | None = None,
        label: str | None = None,
    ) -> None:
        if (model is None) == (factory is None):
            raise ValueError("pass either a shared model or a factory of per-session models")
        self.model = model
        self.factory = factory
        sample = model if model is not None else factory() if factory is not None else None
        # a local model decodes up to max_batch sessions together: only beyond that does one wait
        self.queue = ModelQueue(int(getattr(model, "max_batch", 1)) if model is not None else 1)
        self.label = label or str(getattr(sample, "name", type(sample).__name__))
        #: prepared replies, not a live model (the UI says so)
        self.scripted = isinstance(sample, ScriptedModel)
        self.tokenizer = getattr(sample, "tokenizer", None)
        self.context_length: int | None = getattr(sample, "context_length", None)

    @classmethod
    def from_spec(cls, spec: str, **options: Any) -> ModelSource:
        """A ``--model`` spec: ``scripted:FILE.json`` gives a per-session replay; anything else is loaded once."""
        from glm_agent.models import load_chat_model

        if spec.strip().startswith("scripted:"):
            return cls(
                factory=lambda: load_chat_model(spec, **options)
            )  # __init__ loads a sample: a bad file fails now
        return cls(load_chat_model(spec, **options))

    @property
    def shared(self) -> bool:
        return self.model is not None

    def for_session(self, on_wait: WaitFn, should_stop: StopFn) -> ChatModel:
        """The model one conversation talks to."""
        if self.factory is not None:
            return self.factory()
        assert self.model is not None  # one of the two, checked in __init__
        return QueuedModel(self.model, self.queue, on_wait, should_stop)


@dataclass
class WebConfig:
    """Everything ``glm-agent web`` (or ``serve --ui``) needs to build the UI.

    ``code_interpreter``: offer the Code Interpreter mode (a kernel per session, from a pool of
    ``pool_size`` pre-started local kernels, or on ``gateway``). ``tokenizer`` and
    ``context_length`` feed the prompt view's token counts (the model's own when it has them).

    Limits: ``max_sessions`` in all, ``max_sessions_per_client`` for one browser or login (default
    half of ``max_sessions``); sessions a page opened end after ``idle_timeout`` seconds idle,
    sessions of API calls alone after ``api_idle_timeout``. ``max_upload_bytes`` per uploaded file,
    ``max_session_bytes`` for everything a session keeps outside its kernel (uploads waiting,
    images, exports). ``max_live_chars`` of a cell's output are shown while it runs.
    ``allowed_hosts``: names besides the bound address that a request's ``Host`` may carry (a
    reverse proxy's or DNS name).
    """

    models: ModelSource
    tools: ToolRegistry = field(default_factory=ToolRegistry)
    code_interpreter: bool = False
    gateway: str | None = None
    token: str | None = None
    tokenizer: Any = None
    context_length: int | None = None
    max_sessions: int = 16
    idle_timeout: float = 15 * 60
    pool_size: int = 2
    code_timeout: float = 120.0
    max_steps: int = 10
    language: Literal["zh", "en"] = "zh"
    title: str = "glm-agent"
    max_sessions_per_client: int | None = None
    api_idle_timeout: float = 120.0
    max_upload_bytes: int = 100 * _MiB
    max_session_bytes: int = 512 * _MiB
    max_live_chars: int = 200_000
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if self.max_sessions_per_client is not None and self.max_sessions_per_client < 1:
            raise ValueError("max_sessions_per_client must be at least 1")
        if self.idle_timeout <= 0 or self.api_idle_timeout <= 0:
            raise ValueError("idle_timeout and api_idle_timeout must be positive numbers of seconds")
        if self.max_upload_bytes < 1 or self.max_session_bytes < self.max_upload_bytes:
            raise ValueError("max_upload_bytes must be positive and max_session_bytes at least as large")
        if self.max_live_chars < 1000:
            raise ValueError("max_live_chars must be at least 1000")
        if self.tokenizer is None:
            self.tokenizer = self.models.tokenizer
        if self.context_length is None:
            self.context_length = self.models.context_length

    def per_client_sessions(self) -> int:
        """Sessions one client may hold at once."""
        return self.max_sessions_per_client or max(1, self.max_sessions // 2)

    def system_message(self, mode: Mode, system: str | None = None) -> SystemMessage:
        """The system turn a conversation in ``mode`` starts with (``system``: the user's own prompt, else the official one)."""
        tools = self.tools.chatglm3_schemas() if mode != CHAT and len(self.tools) else None
        return build_system_message(system, tools, mode == CODE, self.language)

    def warm(self) -> int:
        """Compute the official system prompt of every mode on a shared model that can (``LocalModel.warm``),
        so that the first visitor does not wait for it; returns how many prompts were computed."""
        warm = getattr(self.models.model, "warm", None) if self.models.shared else None
        if warm is None:
            return 0
        for mode in self.modes():
            warm([self.system_message(mode)])
        return len(self.modes())

    def modes(self) -> list[Mode]:
        """The modes a conversation can be in: Chat always, Tools with tools, Code Interpreter with a kernel."""
        modes: list[Mode] = [CHAT]
        if len(self.tools):
            modes.append(TOOLS)
        if self.code_interpreter:
            modes.append(CODE)
        return modes
