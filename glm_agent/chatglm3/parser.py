"""Parse ChatGLM3 replies into answer text, tool calls and code calls, without executing anything.

A reply is the decoded text after the generation prompt. It holds one or more segments joined
by ``<|assistant|>``; each segment is ``METADATA\\n CONTENT``. Empty metadata is answer text, a
name is a tool call (a fenced ``tool_call(k=literal, ...)``), ``interpreter`` is code for the kernel.

Tool-call arguments are read from the syntax tree (``ast.parse``) and only literal nodes are
accepted; nothing is evaluated, imported or called.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

from glm_agent.errors import ToolCallParseError
from glm_agent.messages import INTERPRETER, AssistantMessage, CodeCall, ToolCall

__all__ = [
    "ASSISTANT_TOKEN",
    "Segment",
    "Reply",
    "parse_reply",
    "parse_tool_call",
    "extract_code",
    "ReplyStreamParser",
    "ReplyText",
    "CallNamed",
    "CallFinished",
    "StreamEvent",
]

ASSISTANT_TOKEN = "<|assistant|>"

# A metadata line is a tool name: no whitespace, quotes, brackets or sentence punctuation.
_NAME_RE = re.compile(r"[^\s`'\"()\[\]{}<>,;!?，。！？；：、]{1,64}")
_FENCE_RE = re.compile(r"```[^\n`]*\n(.*?)```", re.S)
_MAX_DEPTH = 64
_CALL_EXAMPLE = "```python\ntool_call(name='value', count=3)\n```"


class Segment(NamedTuple):
    """One assistant segment, stripped: ``metadata`` is "" for text, else the call's name."""

    metadata: str
    content: str


@dataclass
class Reply:
    """A parsed reply. ``text`` is the visible answer (None when the reply is only calls)."""

    raw: str
    segments: list[Segment]
    text: str | None
    calls: list[ToolCall | CodeCall]
    errors: list[ToolCallParseError] = field(default_factory=list)

    def __eq__(self, other: object) -> bool:  # exceptions compare by message, not identity
        if not isinstance(other, Reply):
            return NotImplemented
        return (self.raw, self.segments, self.text, self.calls, [str(e) for e in self.errors]) == (
            other.raw,
            other.segments,
            other.text,
            other.calls,
            [str(e) for e in other.errors],
        )

    @property
    def is_final(self) -> bool:
        """True when the reply calls nothing (an answer for the user)."""
        return not self.calls and not self.errors

    def messages(self) -> list[AssistantMessage]:
        """The history entries for this reply: one assistant message per segment, metadata kept."""
        return [AssistantMessage(metadata=s.metadata, content=s.content) for s in self.segments]


def _is_name(line: str) -> bool:
    return bool(_NAME_RE.fullmatch(line)) and not line.endswith(".")


def _can_become_name(prefix: str) -> bool:
    """Whether a metadata line still being streamed may turn out to be a tool name."""
    stripped = prefix.strip()
    return not stripped or (_NAME_RE.fullmatch(stripped) is not None)


def split_segment(segment: str) -> tuple[Segment, bool]:
    """Classify one segment: ``(Segment(metadata, content), is_call)``.

    Like the official ``process_response``, the first line is the metadata when the segment has
    a newline. A first line that cannot be a tool name ("Sure, here it is") is answer text.
    """
    if "\n" in segment:
        meta, content = segment.split("\n", 1)
        name = meta.strip()
        if not name:
            return Segment("", content.strip()), False
        if _is_name(name):
            return Segment(name, content.strip()), True
    return Segment("", segment.strip()), False


def parse_reply(text: str, *, raise_errors: bool = True) -> Reply:
    """Parse a decoded reply. A malformed tool call raises :class:`ToolCallParseError`.

    With ``raise_errors=False`` malformed calls are collected in ``reply.errors`` instead, so a
    caller (the agent loop) keeps the segments for history and tells the model what to fix.
    """
    segments: list[Segment] = []
    answers: list[str] = []
    calls: list[ToolCall | CodeCall] = []
    errors: list[ToolCallParseError] = []
    for part in text.split(ASSISTANT_TOKEN):
        seg, is_call = split_segment(part)
        if not is_call and not seg.content and segments and part.strip() == "":
            continue  # an empty trailing/duplicate separator is not a segment
        segments.append(seg)
        if not is_call:
            answers.append(seg.content)
            continue
        try:
            calls.append(parse_call(seg.metadata, seg.content))
        except ToolCallParseError as exc:
            errors.append(exc)
    answer = "\n".join(a for a in answers if a) if answers else None
    reply = Reply(raw=text, segments=segments, text=answer, calls=calls, errors=errors)
    if errors and raise_errors:
        for error in errors:
            error.reply = reply
        raise errors[0]
    return reply


def parse_call(name: str, content: str) -> ToolCall | CodeCall:
    """The call in one segment: code for ``interpreter``, else a tool call."""
    if name == INTERPRETER:
        return CodeCall(code=extract_code(content))
    return ToolCall(name=name, arguments=parse_tool_call(name, content))


def extract_code(content: str) -> str:
    """The code of an interpreter segment: the last fenced block (as the official demo),
    the rest of an unclosed block (generation cut short), or the bare text."""
    body = content.strip()
    blocks: list[str] = _FENCE_RE.findall(body)
    if blocks:
        code = blocks[-1]
    elif body.startswith("```"):
        code = body.split("\n", 1)[1] if "\n" in body else ""
    else:
        code = body
    code = code.strip("\n")
    if not code.strip():
        raise ToolCallParseError(
            "the interpreter call holds no code; write the code in a ```python block",
            name=INTERPRETER,
            content=content,
        )
    return code


def _fail(name: str, content: str, problem: str) -> ToolCallParseError:
    return ToolCallParseError(
        f"could not read the call to {name!r}: {problem}. Write exactly one call with keyword "
        f"arguments and literal values:\n{_CALL_EXAMPLE}",
        name=name,
        content=content,
    )


def parse_tool_call(name: str, content: str) -> dict[str, Any]:
    """The keyword arguments of ``tool_call(...)`` in a fenced block, as plain Python literals.

    Tuples and sets become lists (JSON-friendly; tools coerce them back by type hint).
    """
    body = content.strip()
    if "```" not in body:
        raise _fail(name, content, "the call is not inside a ``` fenced block")
    blocks = _FENCE_RE.findall(body)
    if not blocks:
        raise _fail(name, content, "the ``` fence is not closed")
    if len(blocks) > 1:
        raise _fail(name, content, f"found {len(blocks)} fenced blocks; make one call per segment")
    source = blocks[0].strip()
    if not source:
        raise _fail(name, content, "the fenced block is empty")
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as exc:
        raise _fail(name, content, f"it is not valid call syntax ({exc.msg}, line {exc.lineno})") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise _fail(name, content, f"it cannot be read ({type(exc).__name__})") from None
    if len(tree.body) != 1:
        raise _fail(name, content, f"found {len(tree.body)} statements; write a single tool_call(...)")
    stmt = tree.body[0]
    if not isinstance(stmt, ast.Expr) or not isinstance(stmt.value, ast.Call):
        raise _fail(name, content, "the block is not a call like tool_call(...)")
    call = stmt.value
    if not isinstance(call.func, ast.Name) or call.func.id not in ("tool_call", name):
        raise _fail(name, content, f"call tool_call(...), not {_snippet(call.func)}(...)")
    if call.args:
        raise _fail(name, content, "positional arguments are not allowed; pass every argument by name (key=value)")
    arguments: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise _fail(name, content, "**unpacking is not allowed; pass every argument by name (key=value)")
        if kw.arg in arguments:
            raise _fail(name, content, f"argument {kw.arg!r} is given twice")
        arguments[kw.arg] = _literal(kw.value, name, content, kw.arg, 0)
    return arguments


def _snippet(node: ast.AST, limit: int = 60) -> str:
    try:
        text = ast.unparse(node)  # renders the tree back to source; runs nothing
    except Exception:  # pragma: no cover - unparse of a parsed tree does not fail in practice
        text = type(node).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _literal(node: ast.AST, name: str, content: str, where: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise _fail(name, content, f"argument {where!r} is nested too deeply")
    if isinstance(node, ast.Constant):
        if node.value is None or isinstance(node.value, (str, bool, int, float)):
            return node.value
        raise _fail(name, content, f"argument {where!r}: {type(node.value).__name__} values are not allowed")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = node.operand
        number = operand.value if isinstance(operand, ast.Constant) else None
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            return -number if isinstance(node.op, ast.USub) else number
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e, name, content, where, depth + 1) for e in node.elts]
    if isinstance(node, ast.Set):
        items = [_literal(e, name, content, where, depth + 1) for e in node.elts]
        return list(dict.fromkeys(items)) if all(_hashable(i) for i in items) else items
    if isinstance(node, ast.Dict):
        out: dict[Any, Any] = {}
        for key, value in zip(node.keys, node.values, strict=False):
            if key is None:
                raise _fail(name, content, f"argument {where!r}: ** inside a dict is not allowed")
            k = _literal(key, name, content, where, depth + 1)
            if not _hashable(k):
                raise _fail(name, content, f"argument {where!r}: dict keys must be strings or numbers")
            out[k] = _literal(value, name, content, where, depth + 1)
        return out
    snippet = _snippet(node)
    if isinstance(node, ast.Name):
        hint = {"true": "True", "false": "False", "null": "None", "none": "None"}.get(node.id.lower())
        extra = f" (write {hint})" if hint else " (put text in quotes)"
        raise _fail(name, content, f"argument {where!r} is the name `{snippet}`, not a value{extra}")
    raise _fail(name, content, f"argument {where!r} is the expression `{snippet}`; only literal values are allowed")


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


# -- streaming ---------------------------------------------------------------------------------


# The parser's stream events carry no step; the agent's own (glm_agent.events.TextDelta,
# CallStarted) add one. Distinct names keep the two layers apart.
@dataclass(frozen=True)
class ReplyText:
    """More answer text, in order; the pieces concatenate to ``reply.text``."""

    text: str


@dataclass(frozen=True)
class CallNamed:
    """A call segment's metadata line is complete: its name is known, its body is not."""

    name: str
    index: int


@dataclass(frozen=True)
class CallFinished:
    """A call segment ended: ``call`` is set, or ``error`` says what was malformed."""

    name: str
    index: int
    call: ToolCall | CodeCall | None
    error: ToolCallParseError | None = None


StreamEvent = Union[ReplyText, CallNamed, CallFinished]


class ReplyStreamParser:
    """Incremental :func:`parse_reply`: feed text deltas, get events as soon as they are certain.

    Answer text streams as it arrives (surrounding whitespace withheld until it is known to be
    inside the text); a call is announced once its metadata line is complete and parsed when its
    segment ends. Call bodies never appear as text. ``close()`` returns the final events and
    sets ``reply``, which equals ``parse_reply(all_text, raise_errors=False)``.
    """

    def __init__(self) -> None:
        self._done = ""  # text of finished segments, separators included
        self._seg = ""  # the current segment's text so far
        self._mode = "head"  # head | answer | call
        self._content_start = 0
        self._emitted = ""  # answer text emitted for the current segment
        self._any_text = False
        self._call_name = ""
        self._calls = 0
        self.reply: Reply | None = None

    def feed(self, delta: str) -> list[StreamEvent]:
        if self.reply is not None:
            raise RuntimeError("the parser is closed")
        events: list[StreamEvent] = []
        self._seg += delta
        while ASSISTANT_TOKEN in self._seg:
            head, rest = self._seg.split(ASSISTANT_TOKEN, 1)
            self._seg = head
            self._advance(len(head), events)
            self._end_segment(events)
            self._done += head + ASSISTANT_TOKEN
            self._seg = rest
        self._advance(self._safe_end(), events)
        return events

    def close(self) -> list[StreamEvent]:
        """Flush everything; afterwards ``reply`` holds the parse of the whole text."""
        if self.reply is not None:
            return []
        events: list[StreamEvent] = []
        self._advance(len(self._seg), events, final=True)
        self._end_segment(events)
        self.reply = parse_reply(self._done + self._seg, raise_errors=False)
        return events

    def _safe_end(self) -> int:
        """End of the text that cannot be the start of an ``<|assistant|>`` separator."""
        for k in range(min(len(ASSISTANT_TOKEN) - 1, len(self._seg)), 0, -1):
            if self._seg.endswith(ASSISTANT_TOKEN[:k]):
                return len(self._seg) - k
        return len(self._seg)

    def _advance(self, end: int, events: list[StreamEvent], final: bool = False) -> None:
        seg = self._seg[:end]
        if self._mode == "head":
            if "\n" in seg:
                meta = seg.split("\n", 1)[0]
                name = meta.strip()
                if not name:
                    self._mode, self._content_start = "answer", len(meta) + 1
                elif _is_name(name):
                    self._mode, self._call_name = "call", name
                    events.append(CallNamed(name=name, index=self._calls))
                else:
                    self._mode, self._content_start = "answer", 0
            elif final or not _can_become_name(seg):
                self._mode, self._content_start = "answer", 0
        if self._mode == "answer":
            visible = seg[self._content_start :].strip()
            new = visible[len(self._emitted) :]
            if new:
                if not self._emitted and self._any_text:
                    events.append(ReplyText("\n"))
                self._emitted = visible
                self._any_text = True
                events.append(ReplyText(new))

    def _end_segment(self, events: list[StreamEvent]) -> None:
        if self._mode == "head":  # a segment without a newline is answer text
            self._advance(len(self._seg), events, final=True)
        if self._mode == "call":
            seg, _ = split_segment(self._seg)
            try:
                call = parse_call(seg.metadata, seg.content)
                events.append(CallFinished(name=self._call_name, index=self._calls, call=call))
            except ToolCallParseError as exc:
                events.append(CallFinished(name=self._call_name, index=self._calls, call=None, error=exc))
            self._calls += 1
        self._mode, self._content_start, self._emitted, self._call_name = "head", 0, "", ""


#: Old names of the stream events (they clashed with the agent events of the same name).
_RENAMED = {"TextDelta": "ReplyText", "CallStarted": "CallNamed"}


def __getattr__(name: str) -> Any:
    new = _RENAMED.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"glm_agent.chatglm3.parser.{name} is now {new} (glm_agent.events.{name} is the agent's event)",
        DeprecationWarning,
        stacklevel=2,
    )
    return globals()[new]
