"""Map conversations and replies between OpenAI's chat shape and ChatGLM3's (server and client share it).

OpenAI → ChatGLM3 (the server reading a request):
  ``system`` → system message (the request's ``tools`` attached as ChatGLM3 schemas; with tools but no
  system message, ChatGLM3's official tools prompt); ``user`` → user; an ``assistant`` message → one
  text segment (metadata "") for its content, then one segment per ``tool_calls`` item (metadata = the
  function name, content = ```` ```python\\ntool_call(k=literal, ...)\\n``` ````, arguments rendered as
  Python literals, never evaluated); ``tool`` → observation (content as is).
  A call named ``interpreter`` with ``{"code": ...}`` is the code interpreter's segment.

ChatGLM3 → OpenAI (the client sending the agent's history): the reverse, with call ids made up per
conversation (``call_<n>``) and observations paired with the calls before them in order.
"""

from __future__ import annotations

import json
import keyword
import math
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

from glm_agent.chatglm3.parser import ASSISTANT_TOKEN, parse_call
from glm_agent.chatglm3.prompts import TOOLS_SYSTEM
from glm_agent.errors import FormatError, ToolCallParseError
from glm_agent.messages import (
    INTERPRETER,
    AssistantMessage,
    CodeCall,
    Message,
    MessageLike,
    ObservationMessage,
    SystemMessage,
    ToolCall,
    UserMessage,
    to_messages,
)

__all__ = [
    "FormatError",
    "INTERPRETER",
    "python_literal",
    "call_block",
    "call_segment",
    "parse_arguments",
    "text_content",
    "chatglm3_tools",
    "ToolChoice",
    "resolve_tool_choice",
    "openai_to_chatglm3",
    "chatglm3_to_openai",
    "openai_call",
    "new_call_id",
    "raw_reply",
]


# -- Python literals (the arguments ChatGLM3 writes) -------------------------------------------


def python_literal(value: Any, *, _depth: int = 0) -> str:
    """``value`` (a JSON value) as Python literal source: True/False/None, repr strings. Never evaluated."""
    if _depth > 64:
        raise FormatError("tool-call arguments are nested too deeply (more than 64 levels)")
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FormatError(f"tool-call argument {value!r} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        return repr(value).replace("`", "\\x60")  # a ``` inside a string must not close the fence
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(python_literal(v, _depth=_depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        items = (
            f"{python_literal(k, _depth=_depth + 1)}: {python_literal(v, _depth=_depth + 1)}" for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    raise FormatError(f"tool-call argument of type {type(value).__name__} has no literal form")


def call_block(name: str, arguments: dict[str, Any]) -> str:
    """The content of a call segment: a fenced ``tool_call(...)`` (or the code, for ``interpreter``)."""
    if name == INTERPRETER and set(arguments) == {"code"} and isinstance(arguments["code"], str):
        return f"```python\n{arguments['code']}\n```"
    parts = []
    for key, value in arguments.items():
        if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key):
            raise FormatError(
                f"argument name {key!r} of {name!r} is not a Python identifier; ChatGLM3 calls take keyword "
                "arguments, so rename the parameter (letters, digits, underscores; not a Python keyword)"
            )
        parts.append(f"{key}={python_literal(value)}")
    return "```python\ntool_call(" + ", ".join(parts) + ")\n```"


def call_segment(name: str, arguments: dict[str, Any]) -> str:
    """A whole raw call segment as the model writes it: ``NAME\\n```python ...```"""
    return f"{name}\n{call_block(name, arguments)}"


def parse_arguments(name: str, arguments: Any, param: str = "arguments") -> dict[str, Any]:
    """OpenAI ``function.arguments`` (a JSON object as a string, or already a dict) as a dict."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or arguments == "":
        return {}
    if not isinstance(arguments, str):
        raise FormatError(f"the arguments of {name!r} must be a JSON object in a string", param)
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise FormatError(
            f"the arguments of {name!r} are not valid JSON ({exc.msg} at {exc.pos}): {arguments[:200]!r}", param
        ) from None
    if not isinstance(value, dict):
        raise FormatError(f"the arguments of {name!r} must be a JSON object, not {type(value).__name__}", param)
    return value


def text_content(content: Any, param: str) -> str:
    """Message content: a string, None, or a list of ``{"type": "text"}`` parts (other parts refused)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise FormatError(f"content part {i} is {kind!r}; ChatGLM3 reads only text parts", f"{param}[{i}]")
            texts.append(part["text"])
        return "".join(texts)
    raise FormatError(f"content must be a string or a list of text parts, not {type(content).__name__}", param)


# -- tools and tool_choice ---------------------------------------------------------------------


def chatglm3_tools(tools: Sequence[Any] | None) -> list[dict[str, Any]]:
    """OpenAI ``tools`` as ChatGLM3 schemas ``{"name", "description", "parameters"}``."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(tools or []):
        where = f"tools[{i}]"
        if (
            not isinstance(item, dict)
            or item.get("type", "function") != "function"
            or not isinstance(item.get("function"), dict)
        ):
            raise FormatError(
                f'{where} must be {{"type": "function", "function": {{"name": ..., "parameters": ...}}}}', where
            )
        fn = item["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise FormatError(
                f"{where}.function.name must be a non-empty name without spaces", f"{where}.function.name"
            )
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise FormatError(
                f"{where}.function.parameters must be a JSON Schema object", f"{where}.function.parameters"
            )
        out.append({"name": name, "description": fn.get("description") or "", "parameters": params})
    names = [t["name"] for t in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FormatError(f"tools are named twice: {', '.join(dupes)}", "tools")
    return out


class ToolChoice:
    """What a request's ``tool_choice`` means here.

    ``tools``: the schemas put in the prompt (None: no tools in the prompt); ``calls_enabled``:
    whether calls come back as ``tool_calls`` (else as text); ``required``: ``"*"`` for any call,
    a name for that function, None when a call is optional. ChatGLM3 has no constrained decoding,
    so ``required`` restricts the prompt's tools but cannot force a call.
    """

    def __init__(self, tools: list[dict[str, Any]] | None, calls_enabled: bool, required: str | None) -> None:
        self.tools = tools
        self.calls_enabled = calls_enabled
        self.required = required

    @property
    def names(self) -> set[str]:
        return {t["name"] for t in self.tools or []}


def resolve_tool_choice(tools: list[dict[str, Any]], tool_choice: Any) -> ToolChoice:
    """``auto`` (default) | ``none`` | ``required`` | ``{"type": "function", "function": {"name": N}}``."""
    if tool_choice is None or tool_choice == "auto":
        return ToolChoice(tools or None, bool(tools), None)
    if tool_choice == "none":
        return ToolChoice(None, False, None)
    if tool_choice == "required":
        if not tools:
            raise FormatError('tool_choice "required" needs tools; send tools or use "auto"', "tool_choice")
        return ToolChoice(tools, True, "*")
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if tool_choice.get("type", "function") != "function" or not isinstance(name, str):
            raise FormatError(
                'tool_choice must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}',
                "tool_choice",
            )
        chosen = [t for t in tools if t["name"] == name]
        if not chosen:
            raise FormatError(f"tool_choice names {name!r}, which is not among the request's tools", "tool_choice")
        return ToolChoice(chosen, True, name)
    raise FormatError(
        'tool_choice must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}',
        "tool_choice",
    )


# -- OpenAI request → ChatGLM3 messages --------------------------------------------------------


def openai_to_chatglm3(messages: Sequence[Any], tools: list[dict[str, Any]] | None) -> list[Message]:
    """An OpenAI ``messages`` list as ChatGLM3 messages; ``tools`` (ChatGLM3 schemas) join the system message."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise FormatError("messages must be a non-empty list", "messages")
    out: list[Message] = []
    system_done = False
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise FormatError(f"{where} must be an object with a role", where)
        role = msg.get("role")
        if role in ("system", "developer"):
            content = text_content(msg.get("content"), f"{where}.content")
            if tools and not system_done:
                out.append(SystemMessage(content=content, tools=tools))
            else:
                out.append(SystemMessage(content=content))
            system_done = True
        elif role == "user":
            out.append(UserMessage(content=text_content(msg.get("content"), f"{where}.content")))
        elif role == "assistant":
            out.extend(_assistant_segments(msg, where))
        elif role in ("tool", "function"):
            out.append(ObservationMessage(content=text_content(msg.get("content"), f"{where}.content")))
        else:
            raise FormatError(f"{where}.role is {role!r}; expected system, user, assistant or tool", f"{where}.role")
    if tools and not system_done:
        out.insert(0, SystemMessage(content=TOOLS_SYSTEM, tools=tools))
    return out


def _assistant_segments(msg: dict[str, Any], where: str) -> list[AssistantMessage]:
    segments = []
    content = text_content(msg.get("content"), f"{where}.content")
    calls = msg.get("tool_calls") or []
    legacy = msg.get("function_call")
    if legacy:
        calls = [*calls, {"type": "function", "function": legacy}]
    if content or not calls:
        segments.append(AssistantMessage(metadata="", content=content))
    if not isinstance(calls, list):
        raise FormatError(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    for k, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        fn = fn if isinstance(fn, dict) else {}
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise FormatError(f"{where}.tool_calls[{k}] needs function.name", f"{where}.tool_calls[{k}]")
        arguments = parse_arguments(name, fn.get("arguments"), f"{where}.tool_calls[{k}].function.arguments")
        segments.append(AssistantMessage(metadata=name.strip(), content=call_block(name.strip(), arguments)))
    return segments


# -- ChatGLM3 replies → OpenAI -----------------------------------------------------------------


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def openai_call(call: ToolCall | CodeCall, call_id: str) -> dict[str, Any]:
    """One OpenAI ``tool_calls`` entry; a code call is the function ``interpreter`` with ``{"code"}``."""
    arguments = {"code": call.code} if isinstance(call, CodeCall) else call.arguments
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def raw_reply(content: str | None, tool_calls: Iterable[dict[str, Any]] | None) -> str:
    """A raw ChatGLM3 reply from an OpenAI assistant message (what a local model would have written)."""
    parts = []
    if content:
        parts.append("\n" + content)
    for k, call in enumerate(tool_calls or []):
        fn = call.get("function") if isinstance(call, dict) else None
        fn = fn if isinstance(fn, dict) else {}
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise FormatError(f"tool_calls[{k}] has no function name")
        parts.append(call_segment(name, parse_arguments(name, fn.get("arguments"))))
    return ASSISTANT_TOKEN.join(parts)


# -- ChatGLM3 history → OpenAI request (the client) --------------------------------------------


def chatglm3_to_openai(messages: Sequence[MessageLike]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The agent's history as OpenAI ``messages`` and ``tools`` (from the system message's tools).

    Consecutive assistant segments become one assistant message (text joined by newlines, calls as
    ``tool_calls``); each observation answers the oldest unanswered call before it. An observation
    that answers no call (after a malformed call, kept as text) is sent as a user message.
    """
    out: list[dict[str, Any]] = []
    tools: list[dict[str, Any]] | None = None
    pending: list[str] = []
    counter = 0
    current: dict[str, Any] | None = None
    for msg in to_messages(messages):
        if not isinstance(msg, AssistantMessage):
            current = None
        if isinstance(msg, SystemMessage):
            if msg.tools is not None and tools is None:
                tools = [{"type": "function", "function": dict(t)} for t in msg.tools]
            out.append({"role": "system", "content": msg.content})
        elif isinstance(msg, UserMessage):
            out.append({"role": "user", "content": msg.content})
        elif isinstance(msg, ObservationMessage):
            if pending:
                out.append({"role": "tool", "tool_call_id": pending.pop(0), "content": msg.content})
            else:
                out.append({"role": "user", "content": msg.content})
        else:
            if current is None:
                current = {"role": "assistant", "content": None}
                out.append(current)
                pending = []
            if msg.is_call:
                try:
                    call = parse_call(msg.metadata.strip(), msg.content)
                except ToolCallParseError:
                    _append_text(current, f"{msg.metadata}\n{msg.content}")
                    continue
                counter += 1
                call_id = f"call_{counter}"
                current.setdefault("tool_calls", []).append(openai_call(call, call_id))
                pending.append(call_id)
            elif msg.content:
                _append_text(current, msg.content)
    return out, tools


def _append_text(message: dict[str, Any], text: str) -> None:
    message["content"] = text if not message.get("content") else message["content"] + "\n" + text
