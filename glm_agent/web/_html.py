"""Untrusted text as inert HTML for the chat: nothing the model, a tool or the kernel writes may load anything.

The chat shows HTML made here (Gradio's own Markdown is off): Markdown is rendered on the server
by markdown-it (CommonMark, tables, strikethrough) with raw HTML **escaped** and the image rule
**off**, so ``<img>``, ``<form>``, ``<style>``, ``<iframe>`` arrive as text and ``![x](url)``
as a link, never a request. Links get ``rel="noopener noreferrer nofollow"``. Output and code go
in ``<pre>`` with every character escaped, so what the code prints cannot end its block. The
only images are the ones this module writes for the session's own files (:func:`image`).
"""

from __future__ import annotations

import html
from typing import Any

from markdown_it import MarkdownIt

__all__ = ["markdown", "pre", "pre_open", "text", "image"]

_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
_MD.enable(["table", "strikethrough"]).disable("image")


def _link_open(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    token.attrSet("rel", "noopener noreferrer nofollow")
    token.attrSet("target", "_blank")
    return str(renderer.renderToken(tokens, idx, options, env))


_MD.add_render_rule("link_open", _link_open)


def markdown(source: str) -> str:
    """Markdown (a reply, a user's message) as HTML without raw HTML or images."""
    return str(_MD.render(source))


def text(source: str) -> str:
    """Plain text as HTML (escaped; line breaks kept)."""
    return html.escape(source).replace("\n", "<br>")


def pre(source: str, lang: str = "") -> str:
    """A block of code or output, every character escaped."""
    cls = f' class="language-{html.escape(lang, quote=True)}"' if lang else ""
    return f"<pre><code{cls}>{html.escape(source)}</code></pre>"


def pre_open() -> str:
    """The start of a block that grows as output arrives: append :func:`html.escape`'d text, never close it.

    The browser closes the block at the end of the message, and escaped text cannot end it early,
    so each update only appends (Gradio then sends the new text, not the whole message).
    """
    return "<pre><code>"


def image(url: str, alt: str) -> str:
    """An image of the session's own (``url`` is made by the session, never taken from model text)."""
    return f'<img src="{html.escape(url, quote=True)}" alt="{html.escape(alt, quote=True)}">'
