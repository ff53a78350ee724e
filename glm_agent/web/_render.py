"""Agent events -> the chat the browser shows (Gradio ``messages`` dicts of inert HTML). Pure: no Gradio, no threads.

A tool call is a collapsible card titled with the tool's name: its arguments as JSON, then its
observation, pending/done status and duration. A code call shows the code, its output as it
arrives, then the result (rendered from the :class:`~glm_agent.interpreter.ExecutionResult`, not
re-parsed from the observation) and images below. Parse errors, refused calls and errors are
cards/messages too. Every text is made HTML by :mod:`glm_agent._html`: nothing in it loads
anything; the only images are the session's own (``image_url``).
"""

from __future__ import annotations

import html
import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from glm_agent import _html
from glm_agent import events as ev
from glm_agent._transcript import cut
from glm_agent.messages import INTERPRETER, CodeCall

__all__ = ["ChatView", "MAX_LIVE_CHARS", "MAX_RESULT_CHARS"]

ChatMessage = dict[str, Any]
CardKind = Literal["tool", "code", "parse_error"]

#: characters of a cell's output shown while it runs (then a marker; the result follows at the end)
MAX_LIVE_CHARS = 200_000
#: characters of a finished cell's output shown in its card (head and tail)
MAX_RESULT_CHARS = 50_000

_TITLE_UNSAFE = re.compile(r"[<>&\"'`\x00-\x1f]")


def _title_text(name: str) -> str:
    """A name from the model as a title: no markup characters at all, whatever renders it."""
    return _TITLE_UNSAFE.sub("", name)[:80] or "?"


@dataclass
class _Card:
    """One call as the UI shows it."""

    index: int  # position in ChatView.messages
    name: str
    kind: CardKind = "tool"
    arguments: dict[str, Any] | None = None
    code: str | None = None
    live: list[str] = field(default_factory=list)  # escaped HTML pieces, appended in order
    live_chars: int = 0
    result_html: str | None = None
    note: str = ""  # "waiting for approval", "denied", ...
    ok: bool = True
    done: bool = False
    started: float = field(default_factory=time.monotonic)
    duration: float | None = None

    def title(self) -> str:
        name = _title_text(self.name)
        if self.kind == "parse_error":
            return f"{name}: the call could not be parsed"
        label = "Code interpreter" if self.kind == "code" else f"Tool: {name}"
        return f"{label}{'' if self.ok else ' (failed)'}"

    def add_live(self, text: str, limit: int) -> None:
        if self.live_chars >= limit:
            return
        room = limit - self.live_chars
        self.live_chars += len(text)
        if len(text) > room:
            self.live.append(html.escape(text[:room]))
            self.live.append(
                html.escape(f"\n[... live output stops after {limit:,} characters; the result follows ...]")
            )
        else:
            self.live.append(html.escape(text))

    def content(self) -> str:
        parts: list[str] = []
        if self.kind == "tool" and self.arguments is not None:
            parts.append(
                "<p><strong>Arguments</strong></p>"
                + _html.pre(json.dumps(self.arguments, ensure_ascii=False, indent=2), "json")
            )
        if self.kind == "code" and self.code is not None:
            parts.append(_html.pre(self.code, "python"))
        if self.result_html is not None:
            parts.append(self.result_html)
        if self.note:
            parts.append(f"<p><em>{html.escape(self.note)}</em></p>")
        if self.kind == "code" and self.result_html is None and self.live:
            # last, and never closed: new output only appends to the message
            parts.append("<p><strong>Output</strong> (running)</p>" + _html.pre_open() + "".join(self.live))
        return "".join(parts) or "…"

    def message(self) -> ChatMessage:
        metadata: dict[str, Any] = {"title": self.title()}
        if not self.done:
            metadata["status"] = "pending"  # a spinner, the card open
        elif self.kind != "code":
            metadata["status"] = "done"  # folded: the answer follows; code cards stay open on their output
        if self.duration is not None:
            metadata["duration"] = round(self.duration, 2)
        if self.note and not self.done:
            metadata["log"] = _title_text(self.note)
        return {"role": "assistant", "content": self.content(), "metadata": metadata}


def _code_result_html(e: ev.CodeFinished) -> str:
    """A finished cell's output and notices, from its result (the observation only when there is none)."""
    result = e.result
    body = getattr(result, "text", None)
    notices = getattr(result, "notices", None)
    if not isinstance(body, str) or not isinstance(notices, list):
        return "<p><strong>Output</strong></p>" + _html.pre(cut(e.observation, MAX_RESULT_CHARS))
    out = "<p><strong>Output</strong></p>" + _html.pre(cut(body.strip("\n"), MAX_RESULT_CHARS))
    if notices:
        out += "<p><em>" + "<br>".join(html.escape(str(n)) for n in notices) + "</em></p>"
    return out


class ChatView:
    """The conversation as chat messages of inert HTML, updated event by event.

    ``image_url(path)`` maps an image the code made (a path in the kernel's workspace) to a URL
    of the session's own, or None when it cannot be shown (then its name is shown instead).
    """

    def __init__(
        self, image_url: Callable[[Path], str | None] | None = None, max_live_chars: int = MAX_LIVE_CHARS
    ) -> None:
        self._messages: list[ChatMessage] = []
        self._image_url = image_url or (lambda _path: None)
        self.max_live_chars = max_live_chars
        self._text: int | None = None  # index of the assistant text being streamed
        self._raw: dict[int, str] = {}  # Markdown of streamed text messages, rendered when read
        self._dirty: set[int] = set()
        self._stale: dict[int, _Card] = {}  # cards changed since the messages were last read
        self._cards: deque[_Card] = deque()  # calls of this step waiting for their outcome
        self._turns: list[int] = []  # where each user turn starts in messages

    @property
    def messages(self) -> list[ChatMessage]:
        """The chat as Gradio ``messages`` (text rendered now if it changed)."""
        for index in self._dirty:
            if index < len(self._messages):
                self._messages[index]["content"] = _html.markdown(self._raw[index])
        self._dirty.clear()
        for index, card in self._stale.items():
            if index < len(self._messages):
                self._messages[index] = card.message()
        self._stale.clear()
        return self._messages

    # -- user side -------------------------------------------------------------------------------
    def user(self, text: str, files: list[str] | None = None) -> None:
        self._turns.append(len(self._messages))
        shown = _html.markdown(text) + "".join(
            f"<p>Attached: <code>{html.escape(name)}</code></p>" for name in files or []
        )
        self._messages.append({"role": "user", "content": shown})
        self._text = None
        self._cards.clear()

    def drop_last_turn(self) -> None:
        """Forget the last user turn and everything after it (regenerate)."""
        if self._turns:
            start = self._turns.pop()
            del self._messages[start:]
            self._raw = {i: t for i, t in self._raw.items() if i < start}
            self._dirty = {i for i in self._dirty if i < start}
            self._stale = {i: c for i, c in self._stale.items() if i < start}
        self._text = None
        self._cards.clear()

    def clear(self) -> None:
        self._messages.clear()
        self._turns.clear()
        self._raw.clear()
        self._dirty.clear()
        self._stale.clear()
        self._text = None
        self._cards.clear()

    def notice(self, text: str) -> None:
        """A line from the app (not the model), e.g. an error or "stopped"."""
        self._messages.append({"role": "assistant", "content": _html.text(text), "metadata": {"title": "glm-agent"}})
        self._text = None

    # -- agent side ------------------------------------------------------------------------------
    def event(self, event: ev.AgentEvent) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is None:  # a new event type still shows up, never silently dropped
            payload = json.dumps(event.to_dict(), ensure_ascii=False, indent=2)
            self._messages.append(
                {
                    "role": "assistant",
                    "content": _html.pre(payload, "json"),
                    "metadata": {"title": _title_text(event.type)},
                }
            )
            self._text = None
            return
        handler(self, event)

    def live_output(self, text: str) -> None:
        """More output of the code that is running now (shown up to ``max_live_chars``)."""
        card = self._running(kind="code")
        if card is not None and card.live_chars < self.max_live_chars:
            card.add_live(text, self.max_live_chars)
            self._refresh(card)

    def awaiting_approval(self, call: Any) -> None:
        card = self._cards[0] if self._cards else self._new_card(getattr(call, "name", "call"), call)
        card.note = "waiting for approval: Approve or Deny below"
        if isinstance(call, CodeCall):
            card.kind, card.code = "code", call.code
        else:
            card.arguments = dict(getattr(call, "arguments", {}) or {})
        self._refresh(card)

    # -- handlers --------------------------------------------------------------------------------
    def _on_text(self, e: ev.TextDelta) -> None:
        if self._text is None:
            self._text = len(self._messages)
            self._messages.append({"role": "assistant", "content": ""})
            self._raw[self._text] = ""
        self._raw[self._text] += e.text
        self._dirty.add(self._text)

    def _on_call_started(self, e: ev.CallStarted) -> None:
        self._new_card(e.name, None)

    def _on_tool_called(self, e: ev.ToolCalled) -> None:
        card = self._cards[0] if self._cards else self._new_card(e.call.name, e.call)
        card.kind, card.arguments, card.note, card.started = "tool", dict(e.call.arguments), "", time.monotonic()
        self._refresh(card)

    def _on_tool_returned(self, e: ev.ToolReturned) -> None:
        card = self._finish(
            e.call.name, "<p><strong>Observation</strong></p>" + _html.pre(cut(e.observation, MAX_RESULT_CHARS)), e.ok
        )
        if card.arguments is None:
            card.arguments = dict(e.call.arguments)
            self._refresh(card)

    def _on_code_started(self, e: ev.CodeStarted) -> None:
        card = self._cards[0] if self._cards else self._new_card(INTERPRETER, e.call)
        card.kind, card.code, card.note, card.started = "code", e.call.code, "", time.monotonic()
        self._refresh(card)

    def _on_code_finished(self, e: ev.CodeFinished) -> None:
        card = self._finish(INTERPRETER, _code_result_html(e), e.ok, kind="code")
        if card.code is None:
            card.code = e.call.code
            self._refresh(card)
        for image in e.images:
            path = Path(image)
            url = self._image_url(path)
            content = (
                _html.image(url, path.name)
                if url
                else f"<p><em>image {html.escape(path.name)} could not be shown</em></p>"
            )
            self._messages.append({"role": "assistant", "content": content})

    def _on_refused(self, e: ev.CallRefused) -> None:
        observation = "<p><strong>Observation</strong></p>" + _html.pre(e.observation)
        card = self._finish(e.call.name, observation, False, kind="code" if isinstance(e.call, CodeCall) else "tool")
        reason = getattr(e, "reason", None)
        card.note = f"not run: {reason}" if reason else "denied by the user"
        self._refresh(card)

    def _on_parse_failed(self, e: ev.ParseFailed) -> None:
        card = self._finish(e.name, _html.pre(e.observation), False)
        card.kind = "parse_error"
        self._refresh(card)

    def _on_final(self, e: ev.FinalAnswer) -> None:
        if self._text is None and e.text:
            self._messages.append({"role": "assistant", "content": _html.markdown(e.text)})
        self._text = None

    def _on_error(self, e: ev.RunError) -> None:
        if e.kind == "cancelled":
            self.notice("Stopped.")
        elif e.kind == "max_steps":
            self.notice(f"Stopped: {e.message}")
        else:
            self.notice(f"The model failed: {e.message}")

    # -- cards -----------------------------------------------------------------------------------
    def _new_card(self, name: str, call: Any) -> _Card:
        kind: CardKind = "code" if isinstance(call, CodeCall) or name == INTERPRETER else "tool"
        card = _Card(len(self._messages), name, kind)
        self._messages.append(card.message())
        self._cards.append(card)
        self._text = None  # text after a call starts a new bubble
        return card

    def _running(self, kind: CardKind) -> _Card | None:
        for card in self._cards:
            if card.kind == kind and not card.done:
                return card
        return None

    def _finish(self, name: str, result_html: str, ok: bool, kind: CardKind = "tool") -> _Card:
        card = self._cards.popleft() if self._cards else self._new_card(name, None)
        if card in self._cards:
            self._cards.remove(card)
        card.kind = kind if card.kind != "code" else "code"
        card.result_html, card.ok, card.done, card.note = result_html, ok, True, ""
        card.duration = time.monotonic() - card.started
        self._refresh(card)
        return card

    def _refresh(self, card: _Card) -> None:
        self._stale[card.index] = card  # rendered when the messages are read (once per snapshot)


_HANDLERS: dict[type, Callable[[ChatView, Any], None]] = {
    ev.TextDelta: ChatView._on_text,
    ev.CallStarted: ChatView._on_call_started,
    ev.ToolCalled: ChatView._on_tool_called,
    ev.ToolReturned: ChatView._on_tool_returned,
    ev.CodeStarted: ChatView._on_code_started,
    ev.CodeFinished: ChatView._on_code_finished,
    ev.CallRefused: ChatView._on_refused,
    ev.ParseFailed: ChatView._on_parse_failed,
    ev.FinalAnswer: ChatView._on_final,
    ev.RunError: ChatView._on_error,
}
