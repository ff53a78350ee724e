"""Agent events -> the chat the browser shows (Gradio ``messages`` dicts). Pure: no Gradio, no threads.

A tool call is a collapsible card titled with the tool's name: its arguments as JSON, then its
observation, pending/done status and duration. A code call shows the code, its output as it
arrives, then images below. Parse errors, refused calls and errors are cards/messages too.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glm_agent import events as ev
from glm_agent.messages import INTERPRETER, CodeCall

__all__ = ["ChatView", "fence", "unfence_result"]

ChatMessage = dict[str, Any]

_BACKTICKS = re.compile(r"`{3,}")


def fence(text: str, lang: str = "") -> str:
    """``text`` in a Markdown code fence longer than any backtick run inside it."""
    longest = max((len(m) for m in _BACKTICKS.findall(text)), default=2) if "```" in text else 2  # the scan is the cost
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip(chr(10))}\n{ticks}"


_RESULT = re.compile(r"\A```result\n(.*?)\n```(?:\n(.*))?\Z", re.S)


def unfence_result(observation: str) -> tuple[str, str]:
    """An interpreter observation's output and its notices (timeouts, restarts), without the ```result fence."""
    match = _RESULT.match(observation)
    if match is None:
        return observation, ""
    return match.group(1), (match.group(2) or "").strip()


@dataclass
class _Card:
    """One call as the UI shows it."""

    index: int  # position in ChatView.messages
    name: str
    kind: str = "tool"  # "tool" | "code" | "parse_error"
    arguments: dict[str, Any] | None = None
    code: str | None = None
    live: str = ""
    observation: str | None = None
    note: str = ""  # "waiting for approval", "denied", ...
    ok: bool = True
    done: bool = False
    started: float = field(default_factory=time.monotonic)
    duration: float | None = None

    def title(self) -> str:
        if self.kind == "parse_error":
            return f"{self.name}: the call could not be parsed"
        label = "Code interpreter" if self.kind == "code" else f"Tool: {self.name}"
        mark = "" if self.ok else " (failed)"
        return f"{label}{mark}"

    def content(self) -> str:
        parts: list[str] = []
        if self.kind == "tool" and self.arguments is not None:
            parts.append("**Arguments**\n" + fence(json.dumps(self.arguments, ensure_ascii=False, indent=2), "json"))
        if self.kind == "code" and self.code is not None:
            parts.append(fence(self.code, "python"))
        if self.kind == "code" and self.observation is None and self.live:
            parts.append("**Output** (running)\n" + fence(self.live))
        if self.observation is not None:
            if self.kind == "code":
                body, notices = unfence_result(self.observation)
                parts.append("**Output**\n" + fence(body) + (f"\n\n*{notices}*" if notices else ""))
            else:
                parts.append("**Observation**\n" + fence(self.observation))
        if self.note:
            parts.append(f"*{self.note}*")
        return "\n\n".join(parts) or "…"

    def message(self) -> ChatMessage:
        metadata: dict[str, Any] = {"title": self.title()}
        if not self.done:
            metadata["status"] = "pending"  # a spinner, the card open
        elif self.kind != "code":
            metadata["status"] = "done"  # folded: the answer follows; code cards stay open on their output
        if self.duration is not None:
            metadata["duration"] = round(self.duration, 2)
        if self.note and not self.done:
            metadata["log"] = self.note
        return {"role": "assistant", "content": self.content(), "metadata": metadata}


class ChatView:
    """The conversation as chat messages, updated event by event.

    ``image_url(path)`` maps an image the code made to a path the browser may fetch (the
    session copies it out of the kernel's workspace).
    """

    def __init__(self, image_url: Callable[[Path], str] | None = None) -> None:
        self.messages: list[ChatMessage] = []
        self._image_url = image_url or str
        self._text: int | None = None  # index of the assistant text being streamed
        self._cards: deque[_Card] = deque()  # calls of this step waiting for their outcome
        self._turns: list[int] = []  # where each user turn starts in messages

    # -- user side -------------------------------------------------------------------------------
    def user(self, text: str, files: list[str] | None = None) -> None:
        self._turns.append(len(self.messages))
        shown = text + "".join(f"\n\nAttached: `{name}`" for name in files or [])
        self.messages.append({"role": "user", "content": shown})
        self._text = None
        self._cards.clear()

    def drop_last_turn(self) -> None:
        """Forget the last user turn and everything after it (regenerate)."""
        if self._turns:
            del self.messages[self._turns.pop() :]
        self._text = None
        self._cards.clear()

    def clear(self) -> None:
        self.messages.clear()
        self._turns.clear()
        self._text = None
        self._cards.clear()

    def notice(self, text: str) -> None:
        """A line from the app (not the model), e.g. an error or "stopped"."""
        self.messages.append({"role": "assistant", "content": text, "metadata": {"title": "glm-agent"}})
        self._text = None

    # -- agent side ------------------------------------------------------------------------------
    def event(self, event: ev.AgentEvent) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is None:  # a new event type still shows up, never silently dropped
            self.notice(f"`{event.type}`: {fence(json.dumps(event.to_dict(), ensure_ascii=False, indent=2), 'json')}")
            return
        handler(self, event)

    def live_output(self, text: str) -> None:
        """More output of the code that is running now."""
        card = self._running(kind="code")
        if card is not None:
            card.live += text
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
            self._text = len(self.messages)
            self.messages.append({"role": "assistant", "content": ""})
        self.messages[self._text]["content"] += e.text

    def _on_call_started(self, e: ev.CallStarted) -> None:
        self._new_card(e.name, None)

    def _on_tool_called(self, e: ev.ToolCalled) -> None:
        card = self._cards[0] if self._cards else self._new_card(e.call.name, e.call)
        card.kind, card.arguments, card.note, card.started = "tool", dict(e.call.arguments), "", time.monotonic()
        self._refresh(card)

    def _on_tool_returned(self, e: ev.ToolReturned) -> None:
        card = self._finish(e.call.name, e.observation, e.ok)
        if card.arguments is None:
            card.arguments = dict(e.call.arguments)
            self._refresh(card)

    def _on_code_started(self, e: ev.CodeStarted) -> None:
        card = self._cards[0] if self._cards else self._new_card(INTERPRETER, e.call)
        card.kind, card.code, card.note, card.started = "code", e.call.code, "", time.monotonic()
        self._refresh(card)

    def _on_code_finished(self, e: ev.CodeFinished) -> None:
        card = self._finish(INTERPRETER, e.observation, e.ok, kind="code")
        if card.code is None:
            card.code = e.call.code
            self._refresh(card)
        for image in e.images:
            self.messages.append({"role": "assistant", "content": {"path": self._image_url(Path(image))}})

    def _on_refused(self, e: ev.CallRefused) -> None:
        card = self._finish(e.call.name, e.observation, False, kind="code" if isinstance(e.call, CodeCall) else "tool")
        reason = getattr(e, "reason", None)
        card.note = f"not run: {reason}" if reason else "denied by the user"
        self._refresh(card)

    def _on_parse_failed(self, e: ev.ParseFailed) -> None:
        card = self._finish(e.name, e.observation, False)
        card.kind = "parse_error"
        self._refresh(card)

    def _on_final(self, e: ev.FinalAnswer) -> None:
        if self._text is None and e.text:
            self.messages.append({"role": "assistant", "content": e.text})
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
        kind = "code" if isinstance(call, CodeCall) or name == INTERPRETER else "tool"
        card = _Card(len(self.messages), name, kind)
        self.messages.append(card.message())
        self._cards.append(card)
        self._text = None  # text after a call starts a new bubble
        return card

    def _running(self, kind: str) -> _Card | None:
        for card in self._cards:
            if card.kind == kind and not card.done:
                return card
        return None

    def _finish(self, name: str, observation: str, ok: bool, kind: str = "tool") -> _Card:
        card = self._cards.popleft() if self._cards else self._new_card(name, None)
        if card in self._cards:
            self._cards.remove(card)
        card.kind = kind if card.kind != "code" else "code"
        card.observation, card.ok, card.done, card.note = observation, ok, True, ""
        card.duration = time.monotonic() - card.started
        self._refresh(card)
        return card

    def _refresh(self, card: _Card) -> None:
        self.messages[card.index] = card.message()


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
