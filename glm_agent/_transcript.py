"""A run, a cell's outputs or a conversation as inert HTML, safe Markdown and plain text (sans-IO).

:class:`Transcript` takes an agent's events one by one (and a running cell's outputs as they
arrive) and renders the run at any moment: answer text, a collapsible card per call (arguments,
observation, status, duration; code with its live output, then its result and images inline),
refused calls, parse errors, the reason a run stopped. The notebook display, the rich reprs of
``RunResult``, events, ``ExecutionResult`` and ``Agent`` all render through it.

Nothing here imports the rooms whose objects it shows: events, outputs and messages are read by
their ``type`` / ``kind`` / ``role`` names, so the event and result classes can use it for their
own reprs (it sits below them, above ``messages``). Every text from the model, a tool or the kernel goes through :mod:`glm_agent._html`
(escaped, no images but checked PNG/JPEG bytes as ``data:`` URLs) or :func:`safe_markdown`.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from glm_agent import _html
from glm_agent.messages import INTERPRETER

__all__ = [
    "Transcript",
    "outputs_html",
    "outputs_text",
    "conversation_html",
    "conversation_markdown",
    "safe_markdown",
    "fence",
    "cut",
    "unfenced",
    "MAX_LIVE_CHARS",
    "MAX_RESULT_CHARS",
]

#: characters of a running cell's output kept in its card (then a marker; the result follows)
MAX_LIVE_CHARS = 100_000
#: characters of an observation or a finished cell's text shown in a card (head and tail)
MAX_RESULT_CHARS = 20_000
#: the largest image file a tool returned that is inlined (bigger ones are named)
MAX_INLINE_IMAGE_BYTES = 8 * 1024 * 1024

_TITLE_UNSAFE = re.compile(r"[<>&\"'`\x00-\x1f\[\]()!*#|\\]")
_CARD = 'style="border:1px solid #8884;border-radius:6px;padding:2px 10px;margin:6px 0"'
_IMAGE_MIMES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def _title(name: str) -> str:
    """A name from the model as a title: no markup characters of HTML or Markdown at all."""
    return _TITLE_UNSAFE.sub("", name)[:80] or "?"


def cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters: its head and tail, with how much was left out between."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half:,} characters not shown ...]\n{text[-half:]}"


def unfenced(observation: str) -> str:
    """An observation without the ```result fence the model needs and a person does not."""
    text = observation.strip()
    if text.startswith("```") and text.endswith("```") and "\n" in text:
        return text[text.index("\n") + 1 : -3].rstrip("\n")
    return observation


def safe_markdown(text: str) -> str:
    """Model text as Markdown that no renderer turns into a request: raw HTML escaped, images made links."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("![", "!\\[")


def fence(text: str, lang: str = "") -> str:
    """``text`` in a Markdown code block that the text cannot end (a longer fence than any inside)."""
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


# -- a cell's outputs -------------------------------------------------------------------------------
def _output_images(output: Any) -> list[tuple[str, bytes]]:
    data = getattr(output, "data", None) or {}
    found = []
    for mime in ("image/png", "image/jpeg"):
        raw = _html.image_bytes(mime, data.get(mime))
        if raw is not None:
            found.append((mime, raw))
    return found[:1]


def outputs_html(outputs: Iterable[Any], notices: Sequence[str] = (), limit: int = MAX_RESULT_CHARS) -> str:
    """A cell's outputs in order: text in escaped blocks, errors as tracebacks, PNG/JPEG images inline.

    A value the kernel displays as HTML or SVG is shown by its plain-text form: the kernel runs
    the model's code, so its markup is never rendered.
    """
    parts: list[str] = []
    stream: list[str] = []

    def flush() -> None:
        if stream:
            parts.append(_html.pre(cut("".join(stream).rstrip("\n"), limit)))
            stream.clear()

    for output in outputs:
        kind = getattr(output, "kind", None)
        if kind == "stream":
            stream.append(output.text)
            continue
        flush()
        if kind == "error" or kind == "omitted":
            parts.append(_html.pre(cut(output.text.strip("\n"), limit)))
        elif kind in ("display_data", "execute_result"):
            images = _output_images(output)
            if images:
                parts.extend(_html.inline_image(mime, raw, "output image") for mime, raw in images)
            else:
                plain = (getattr(output, "data", None) or {}).get("text/plain")
                if isinstance(plain, str):
                    parts.append(_html.pre(cut(plain, limit)))
    flush()
    if notices:
        parts.append("<p><em>" + "<br>".join(html.escape(str(n)) for n in notices) + "</em></p>")
    return "".join(parts)


def outputs_text(outputs: Iterable[Any], limit: int = MAX_RESULT_CHARS) -> str:
    """A cell's outputs as plain text (images as ``[image]``)."""
    pieces: list[str] = []
    for output in outputs:
        kind = getattr(output, "kind", None)
        if kind in ("stream", "error", "omitted"):
            pieces.append(output.text if kind == "stream" else output.text.strip("\n") + "\n")
        elif kind in ("display_data", "execute_result"):
            if _output_images(output):
                pieces.append("[image]\n")
            else:
                plain = (getattr(output, "data", None) or {}).get("text/plain")
                if isinstance(plain, str):
                    pieces.append(plain + "\n")
    return cut("".join(pieces).rstrip("\n"), limit)


# -- a run ----------------------------------------------------------------------------------------
CardKind = Literal["tool", "code", "parse_error"]


@dataclass
class _Text:
    step: int
    text: str = ""


@dataclass
class _Notice:
    text: str


@dataclass
class _Card:
    step: int
    name: str
    kind: CardKind = "tool"
    call: Any = None
    state: Literal["generating", "running", "done", "failed", "refused", "unreadable"] = "generating"
    arguments: dict[str, Any] | None = None
    code: str | None = None
    observation: str | None = None
    note: str = ""
    result: Any = None
    images: list[tuple[str, bytes]] = field(default_factory=list)
    image_names: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)
    live_chars: int = 0
    started: float = field(default_factory=time.monotonic)
    duration: float | None = None

    @property
    def open(self) -> bool:
        return self.state in ("generating", "running")

    def finish(self, state: Any) -> None:
        self.state = state
        self.duration = time.monotonic() - self.started

    def heading(self) -> str:
        name = _title(self.name)
        if self.kind == "parse_error":
            label = f"{name}: the call could not be parsed"
        else:
            label = "Code interpreter" if self.kind == "code" else f"Tool: {name}"
        status = {"generating": "writing the call…", "running": "running…", "done": "ok", "failed": "failed"}.get(
            self.state, self.state
        )
        took = f" · {self.duration:.2f} s" if self.duration is not None and self.kind != "parse_error" else ""
        return f"{label} · {status}{took}"

    def body_html(self, limit: int) -> str:
        parts: list[str] = []
        if self.arguments is not None:
            arguments = json.dumps(self.arguments, ensure_ascii=False, indent=2, default=repr)
            parts.append("<div><strong>Arguments</strong></div>" + _html.pre(arguments, "json"))
        if self.code is not None:
            parts.append(_html.pre(self.code, "python"))
        if self.kind == "code" and self.state == "running" and self.live:
            parts.append(
                "<div><strong>Output</strong> (running)</div>" + _html.pre_open() + "".join(self.live) + "</code></pre>"
            )
        result_outputs = getattr(self.result, "outputs", None)
        if self.kind == "code" and isinstance(result_outputs, list) and not self.open:
            notices = getattr(self.result, "notices", None) or []
            shown = outputs_html(result_outputs, notices, limit)
            parts.append("<div><strong>Output</strong></div>" + (shown or "<p><em>(no output)</em></p>"))
        elif self.observation is not None:
            text = unfenced(self.observation) if self.kind == "code" else self.observation
            parts.append(f"<div><strong>{'Output' if self.kind == 'code' else 'Observation'}</strong></div>")
            parts.append(_html.pre(cut(text, limit)))
        parts.extend(_html.inline_image(mime, raw, "image") for mime, raw in self.images)
        parts.extend(f"<p>Image: <code>{html.escape(name)}</code></p>" for name in self.image_names)
        if self.note:
            parts.append(f"<p><em>{html.escape(self.note)}</em></p>")
        return "".join(parts) or "<p>…</p>"

    def html(self, limit: int) -> str:
        # tool cards fold once done (the answer follows); code cards stay open on their output
        expanded = " open" if self.open or self.kind == "code" else ""
        return (
            f'<details class="glm-agent-card"{expanded} {_CARD}><summary>{html.escape(self.heading())}</summary>'
            f"{self.body_html(limit)}</details>"
        )

    def text(self, limit: int) -> str:
        lines = [f"[{self.heading()}]"]
        if self.arguments is not None:
            lines.append(json.dumps(self.arguments, ensure_ascii=False, default=repr))
        if self.code is not None:
            lines.append(self.code)
        if self.kind == "code" and self.state == "running" and self.live:
            lines.append(html.unescape("".join(self.live)).rstrip("\n"))
        outputs = getattr(self.result, "outputs", None)
        if self.kind == "code" and isinstance(outputs, list) and not self.open:
            lines.append(outputs_text(outputs, limit))
        elif self.observation is not None:
            lines.append(cut(unfenced(self.observation), limit))
        if self.note:
            lines.append(self.note)
        return "\n".join(line for line in lines if line)

    def markdown(self, limit: int) -> str:
        lines = [f"**{self.heading()}**"]
        if self.arguments is not None:
            lines.append(fence(json.dumps(self.arguments, ensure_ascii=False, indent=2, default=repr), "json"))
        if self.code is not None:
            lines.append(fence(self.code, "python"))
        outputs = getattr(self.result, "outputs", None)
        if self.kind == "code" and isinstance(outputs, list) and not self.open:
            lines.append(fence(outputs_text(outputs, limit)))
        elif self.observation is not None:
            lines.append(fence(cut(unfenced(self.observation), limit)))
        if self.note:
            lines.append(f"*{safe_markdown(self.note)}*")
        return "\n\n".join(lines)


Block = _Text | _Notice | _Card


class Transcript:
    """One or more runs as they happen: :meth:`add` each event (``output`` for a cell's live output),
    then :meth:`html`, :meth:`markdown` or :meth:`text` at any moment. ``version`` counts changes."""

    def __init__(self, *, max_live_chars: int = MAX_LIVE_CHARS, max_result_chars: int = MAX_RESULT_CHARS) -> None:
        self.blocks: list[Block] = []
        self.max_live_chars = max_live_chars
        self.max_result_chars = max_result_chars
        self.version = 0
        self._open: list[_Card] = []  # calls of the current step waiting for their outcome

    @classmethod
    def of(cls, events: Iterable[Any]) -> Transcript:
        transcript = cls()
        for event in events:
            transcript.add(event)
        return transcript

    # -- input ------------------------------------------------------------------------------------
    def add(self, event: Any) -> None:
        """One agent event (any of ``glm_agent.events``)."""
        self.version += 1
        kind = getattr(event, "type", None)
        step = int(getattr(event, "step", 0))
        if kind == "text_delta":
            last = self.blocks[-1] if self.blocks else None
            if isinstance(last, _Text) and last.step == step:
                last.text += event.text
            else:
                self.blocks.append(_Text(step, event.text))
        elif kind == "call_started":
            self._new_card(step, event.name)
        elif kind == "tool_called":
            card = self._card_for(step, event.call.name, None)
            card.call, card.arguments, card.state = event.call, dict(event.call.arguments), "running"
        elif kind == "code_started":
            card = self._card_for(step, INTERPRETER, None)
            card.call, card.kind, card.code, card.state = event.call, "code", event.call.code, "running"
        elif kind == "tool_returned":
            card = self._card_for(step, event.call.name, event.call)
            card.observation = event.observation
            card.finish("done" if event.ok else "failed")
            for path in getattr(event, "files", None) or []:
                self._attach_file(card, Path(path))
        elif kind == "code_finished":
            card = self._card_for(step, INTERPRETER, event.call)
            card.observation, card.result = event.observation, event.result
            card.finish("done" if event.ok else "failed")
            if card.result is None:
                card.image_names += [Path(p).name for p in getattr(event, "images", None) or []]
        elif kind == "call_refused":
            card = self._card_for(step, event.call.name, event.call)
            if getattr(event.call, "code", None) is not None:
                card.kind, card.code = "code", event.call.code
            elif card.arguments is None:
                card.arguments = dict(getattr(event.call, "arguments", {}) or {})
            card.observation = event.observation
            card.note = f"Not run: {event.reason}" if event.reason else "Not run: the call was not approved."
            card.finish("refused")
        elif kind == "parse_failed":
            card = self._card_for(step, event.name, None)
            card.kind, card.observation = "parse_error", event.observation
            card.finish("unreadable")
        elif kind == "final_answer":
            self._open.clear()
            if not any(isinstance(b, _Text) and b.step == step and b.text.strip() for b in self.blocks):
                self.blocks.append(_Text(step, event.text))
        elif kind == "run_error":
            for card in self._open:
                card.finish("failed")
            self._open.clear()
            self.blocks.append(_Notice(f"Stopped ({event.kind}): {event.message}"))

    def output(self, output: Any) -> None:
        """A running cell's output as it arrives (stream text, an error, a display)."""
        card = next((c for c in reversed(self._open) if c.kind == "code" and c.state == "running"), None)
        if card is None or card.live_chars >= self.max_live_chars:
            return
        kind = getattr(output, "kind", None)
        if kind == "stream" or kind == "error":
            text = output.text if kind == "stream" else output.text.strip("\n") + "\n"
        elif kind in ("display_data", "execute_result"):
            text = "[image]\n" if _output_images(output) else str((output.data or {}).get("text/plain", "")) + "\n"
        else:
            return
        self.version += 1
        room = self.max_live_chars - card.live_chars
        card.live_chars += len(text)
        card.live.append(html.escape(text[:room]))
        if len(text) > room:
            card.live.append(html.escape(f"\n[... live output stops after {self.max_live_chars:,} characters ...]"))

    def notice(self, text: str) -> None:
        """A line from the host, not the model (e.g. "interrupted")."""
        self.version += 1
        self.blocks.append(_Notice(text))

    def _new_card(self, step: int, name: str) -> _Card:
        if step not in {c.step for c in self._open}:
            self._open.clear()
        card = _Card(step, name, kind="code" if name == INTERPRETER else "tool")
        self.blocks.append(card)
        self._open.append(card)
        return card

    def _card_for(self, step: int, name: str, call: Any) -> _Card:
        """The open card of this call (``call`` None: the first one still generating with this name)."""
        for card in self._open:
            if card.step != step or card.name != name:
                continue
            if (call is None and card.call is None) or (call is not None and card.call == call and card.open):
                if call is not None:
                    self._open.remove(card)
                return card
        card = self._new_card(step, name)
        if call is not None:
            self._open.remove(card)
            card.call = call
        return card

    def _attach_file(self, card: _Card, path: Path) -> None:
        mime = _IMAGE_MIMES.get(path.suffix.lower())
        if mime is None:
            card.note = (card.note + "\n" if card.note else "") + f"Saved {path.name}"
            return
        try:
            if path.stat().st_size <= MAX_INLINE_IMAGE_BYTES:
                raw = _html.image_bytes(mime, path.read_bytes())
                if raw is not None:
                    card.images.append((mime, raw))
                    return
        except OSError:
            pass
        card.image_names.append(path.name)

    # -- output -----------------------------------------------------------------------------------
    def html(self) -> str:
        parts = []
        for block in self.blocks:
            if isinstance(block, _Text):
                if block.text.strip():
                    parts.append(f'<div class="glm-agent-text">{_html.markdown(block.text)}</div>')
            elif isinstance(block, _Notice):
                parts.append(f'<p class="glm-agent-notice"><em>{html.escape(block.text)}</em></p>')
            else:
                parts.append(block.html(self.max_result_chars))
        return f'<div class="glm-agent-run">{"".join(parts)}</div>'

    def markdown(self) -> str:
        parts = []
        for block in self.blocks:
            if isinstance(block, _Text):
                if block.text.strip():
                    parts.append(safe_markdown(block.text.strip()))
            elif isinstance(block, _Notice):
                parts.append(f"*{safe_markdown(block.text)}*")
            else:
                parts.append(block.markdown(self.max_result_chars))
        return "\n\n".join(parts)

    def text(self) -> str:
        parts = []
        for block in self.blocks:
            if isinstance(block, _Text):
                if block.text.strip():
                    parts.append(block.text.strip())
            elif isinstance(block, _Notice):
                parts.append(block.text)
            else:
                parts.append(block.text(self.max_result_chars))
        return "\n".join(parts)


# -- a conversation -------------------------------------------------------------------------------
def _turns(messages: Iterable[Any]) -> list[tuple[str, str, str]]:
    """(who, metadata, content) per message, the system prompt left out."""
    out = []
    for message in messages:
        role = getattr(message, "role", None) or (message.get("role") if isinstance(message, dict) else None)
        if role == "system" or role is None:
            continue
        get = message.get if isinstance(message, dict) else lambda key, m=message: getattr(m, key, None)
        out.append((str(role), str(get("metadata") or ""), str(get("content") or "")))
    return out


def conversation_html(messages: Iterable[Any], limit: int = MAX_RESULT_CHARS) -> str:
    """A conversation (messages or their dicts): questions, answers, calls and observations, inert."""
    parts = []
    for role, metadata, content in _turns(messages):
        if role == "user":
            parts.append(f"<div><strong>User</strong>{_html.markdown(content)}</div>")
        elif role == "assistant" and not metadata:
            parts.append(f"<div><strong>Assistant</strong>{_html.markdown(content)}</div>")
        elif role == "assistant":
            label = "Code interpreter" if metadata == INTERPRETER else f"Tool: {_title(metadata)}"
            parts.append(
                f'<details class="glm-agent-card" {_CARD}><summary>{html.escape(label)} · call</summary>'
                f"{_html.pre(cut(content, limit))}</details>"
            )
        else:
            parts.append(
                f'<details class="glm-agent-card" {_CARD}><summary>Observation</summary>'
                f"{_html.pre(cut(unfenced(content), limit))}</details>"
            )
    return f'<div class="glm-agent-conversation">{"".join(parts)}</div>'


def conversation_markdown(messages: Iterable[Any], limit: int = MAX_RESULT_CHARS) -> str:
    parts = []
    for role, metadata, content in _turns(messages):
        if role in ("user", "assistant") and not metadata:
            parts.append(f"**{role.title()}:** {safe_markdown(content)}")
        elif role == "assistant":
            label = "Code interpreter" if metadata == INTERPRETER else f"Tool: {_title(metadata)}"
            parts.append(f"**{label}:**\n\n{fence(cut(content, limit))}")
        else:
            parts.append(f"**Observation:**\n\n{fence(cut(unfenced(content), limit))}")
    return "\n\n".join(parts)
