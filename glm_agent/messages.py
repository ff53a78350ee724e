"""Typed messages of a ChatGLM3 conversation, and their JSON Lines round trip.

The wire shape is the official one: ``{"role", "content", "metadata"?, "tools"?}``.
Every function here accepts the pydantic objects or plain dicts of that shape. Every role may
carry ``metadata``, as ChatGLM3's template encodes ``<|role|>`` + metadata + ``"\n"`` + content
for each message; only assistant call segments use it in practice (the tool name, ``interpreter``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

__all__ = [
    "INTERPRETER",
    "SystemMessage",
    "UserMessage",
    "AssistantMessage",
    "ObservationMessage",
    "Message",
    "MessageLike",
    "ToolCall",
    "CodeCall",
    "Call",
    "to_message",
    "to_messages",
    "to_dict",
    "to_dicts",
    "save_jsonl",
    "load_jsonl",
    "dumps_jsonl",
    "loads_jsonl",
]


#: The metadata (and call name) of a code-interpreter call, as ChatGLM3 writes it.
INTERPRETER: Final = "interpreter"


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        """The official dict shape of this message."""
        return to_dict(self)  # type: ignore[arg-type]


class SystemMessage(_Base):
    """The system prompt; ``tools`` (ChatGLM3 tool schemas) are appended to it as JSON."""

    role: Literal["system"] = "system"
    metadata: str = ""
    content: str = ""
    tools: list[dict[str, Any]] | None = None


class UserMessage(_Base):
    role: Literal["user"] = "user"
    metadata: str = ""
    content: str


class AssistantMessage(_Base):
    """One assistant segment: ``metadata`` is "" for text, a tool name or ``interpreter`` for a call."""

    role: Literal["assistant"] = "assistant"
    metadata: str = ""
    content: str = ""

    @property
    def is_call(self) -> bool:
        return bool(self.metadata.strip())


class ObservationMessage(_Base):
    """The result of a tool or code call, as the model reads it."""

    role: Literal["observation"] = "observation"
    metadata: str = ""
    content: str


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ObservationMessage,
    Field(discriminator="role"),
]
MessageLike = Union[SystemMessage, UserMessage, AssistantMessage, ObservationMessage, dict[str, Any]]

_MESSAGE = TypeAdapter(Message)


class ToolCall(BaseModel):
    """A call of a named tool with keyword arguments (already parsed as literals)."""

    model_config = ConfigDict(frozen=True)

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)

    @property
    def kind(self) -> Literal["tool"]:
        return "tool"


class CodeCall(BaseModel):
    """A code-interpreter call: Python source for the kernel."""

    model_config = ConfigDict(frozen=True)

    code: str
    name: Literal["interpreter"] = INTERPRETER

    @property
    def kind(self) -> Literal["code"]:
        return "code"


Call = Union[ToolCall, CodeCall]


def to_message(obj: MessageLike) -> SystemMessage | UserMessage | AssistantMessage | ObservationMessage:
    """Validate a dict of the official shape (or pass a message object through)."""
    if isinstance(obj, (SystemMessage, UserMessage, AssistantMessage, ObservationMessage)):
        return obj
    if not isinstance(obj, dict):
        raise TypeError(f"a message must be a dict or a message object, not {type(obj).__name__}")
    data = dict(obj)
    if data.get("role") != "system" and data.get("tools") is None:
        data.pop("tools", None)
    if data.get("metadata") is None:
        data.pop("metadata", None)  # the official code reads item.get("metadata", "")
    try:
        return _MESSAGE.validate_python(data)
    except ValidationError as exc:
        raise ValueError(f"invalid message {obj!r}: {exc}") from exc


def to_messages(
    messages: Iterable[MessageLike],
) -> list[SystemMessage | UserMessage | AssistantMessage | ObservationMessage]:
    return [to_message(m) for m in messages]


def to_dict(message: MessageLike) -> dict[str, Any]:
    """The official dict shape: role, metadata (always for assistants, else when set), content, (tools for system)."""
    msg = to_message(message)
    out: dict[str, Any] = {"role": msg.role}
    if isinstance(msg, AssistantMessage) or msg.metadata:
        out["metadata"] = msg.metadata
    out["content"] = msg.content
    if isinstance(msg, SystemMessage) and msg.tools is not None:
        out["tools"] = msg.tools
    return out


def to_dicts(messages: Iterable[MessageLike]) -> list[dict[str, Any]]:
    return [to_dict(m) for m in messages]


def dumps_jsonl(messages: Iterable[MessageLike]) -> str:
    """One JSON object a line, UTF-8 text kept as is."""
    return "".join(json.dumps(to_dict(m), ensure_ascii=False) + "\n" for m in messages)


def loads_jsonl(text: str) -> list[SystemMessage | UserMessage | AssistantMessage | ObservationMessage]:
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {lineno}: not JSON ({exc.msg})") from exc
        try:
            out.append(to_message(data))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"line {lineno}: {exc}") from exc
    return out


def save_jsonl(messages: Iterable[MessageLike], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(dumps_jsonl(messages), encoding="utf-8")
    return path


def load_jsonl(path: str | Path) -> list[SystemMessage | UserMessage | AssistantMessage | ObservationMessage]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no conversation file at {path}") from None
    try:
        return loads_jsonl(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
