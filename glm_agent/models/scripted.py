"""A model that replays given raw ChatGLM3 replies: deterministic, for tests, examples and demos."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from glm_agent.errors import ModelError
from glm_agent.messages import Message, MessageLike, to_messages
from glm_agent.models.base import BaseChatModel

__all__ = ["ScriptedModel"]

ReplyFn = Callable[[list[Message]], str]


class ScriptedModel(BaseChatModel):
    """Replays raw ChatGLM3 replies in chunks: a stand-in for a real model, for tests, examples and demos.

    ``replies`` is a list used in order, or a function of the conversation returning the reply;
    running out raises :class:`~glm_agent.errors.ModelError`. A reply is the text the model
    writes after ``<|assistant|>``: one or more segments joined by ``<|assistant|>``, each its
    metadata line, a newline, then its content:

    - an answer has empty metadata and starts with the tokenizer's space: ``"\\n The answer."``;
    - a tool call: ``"get_weather\\n ```python\\ntool_call(city='Paris')\\n```"``;
    - code for the interpreter: ``"interpreter\\n ```python\\nprint(6 * 7)\\n```"``;
    - a thought, then a call: ``"\\n Let me look.<|assistant|>get_weather\\n ```python\\n...\\n```"``.

    Every prompt it was given is kept in ``prompts`` (``prompt_ids`` for raw prompts). It says
    what it is: ``name`` is ``"scripted"`` and ``str(model)`` reads ``ScriptedModel(scripted, ...)``.
    ``scripted:FILE.json`` on the command line loads a JSON list of replies (:meth:`from_file`).
    """

    provider = "glm_agent.scripted"  # gen_ai.provider.name in traces

    def __init__(self, replies: Sequence[str] | ReplyFn, *, chunk_size: int = 3, label: str = "scripted") -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if not callable(replies):
            replies = list(replies)
            bad = [i for i, r in enumerate(replies) if not isinstance(r, str)]
            if bad:
                raise TypeError(f"scripted replies must be strings; item {bad[0]} is {type(replies[bad[0]]).__name__}")
        self._replies = replies
        self._lock = threading.Lock()
        self.chunk_size = chunk_size
        self.name = label
        self.index = 0
        self.prompts: list[list[Message]] = []
        self.prompt_ids: list[list[int]] = []

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> ScriptedModel:
        """Load a JSON list of raw reply strings (the ``scripted:FILE.json`` model spec)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"scripted model file not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise ModelError(f"scripted model file {path} is not JSON: {exc.msg} (line {exc.lineno})") from None
        if not isinstance(data, list) or not all(isinstance(r, str) for r in data):
            raise ModelError(f"scripted model file {path} must hold a JSON list of raw reply strings")
        return cls(data, label=f"scripted:{path.name}", **kwargs)

    @property
    def remaining(self) -> int | None:
        return None if callable(self._replies) else len(self._replies) - self.index

    def _next_reply(self, messages: list[Message] | None, prompt_ids: list[int] | None = None) -> str:
        with self._lock:
            if prompt_ids is not None:
                self.prompt_ids.append(prompt_ids)
            else:
                self.prompts.append(messages or [])
            if callable(self._replies):
                reply = self._replies(messages or [])
                if not isinstance(reply, str):
                    raise ModelError(f"the scripted reply function returned {type(reply).__name__}, not str")
            else:
                if self.index >= len(self._replies):
                    raise ModelError(
                        f"{self.name} ran out of replies: all {len(self._replies)} were used; "
                        "add more replies to the script"
                    )
                reply = self._replies[self.index]
            self.index += 1
            return reply

    def stream(self, messages: Sequence[MessageLike], **params: Any) -> Iterator[str]:
        return self._chunks(self._next_reply(to_messages(messages)))

    def stream_ids(self, prompt_ids: Sequence[int], **params: Any) -> Iterator[str]:
        """Replays the next reply for a raw prompt (a reply function then gets ``[]`` as messages)."""
        return self._chunks(self._next_reply(None, [int(i) for i in prompt_ids]))

    def _chunks(self, reply: str) -> Iterator[str]:
        for start in range(0, len(reply), self.chunk_size):
            yield reply[start : start + self.chunk_size]

    async def astream(self, messages: Sequence[MessageLike], **params: Any) -> AsyncIterator[str]:
        # no thread needed: replaying is instant
        for delta in self.stream(messages, **params):
            yield delta

    def __repr__(self) -> str:
        n = "fn" if callable(self._replies) else len(self._replies)
        return f"ScriptedModel({self.name}, replies={n}, used={self.index})"
