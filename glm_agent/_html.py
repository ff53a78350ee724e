"""Untrusted text as inert HTML: nothing the model, a tool or the kernel writes may load anything.

The web UI's chat and the notebook displays show HTML made here (Gradio's own Markdown is off): Markdown is rendered
by markdown-it (CommonMark, tables, strikethrough) with raw HTML **escaped** and the image rule
**off**, so ``<img>``, ``<form>``, ``<style>``, ``<iframe>`` arrive as text and ``![x](url)``
as a link, never a request. Links get ``rel="noopener noreferrer nofollow"``. Output and code go
in ``<pre>`` with every character escaped, so what the code prints cannot end its block. The
only images are the ones this module writes: the session's own files (:func:`image`) and image
bytes checked to be PNG or JPEG, inlined as ``data:`` URLs (:func:`inline_image`).
"""

from __future__ import annotations

import base64
import binascii
import html
from typing import Any

from markdown_it import MarkdownIt

__all__ = ["markdown", "pre", "pre_open", "text", "image", "inline_image", "image_bytes"]

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


_SIGNATURES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}


def image_bytes(mime: str, data: object) -> bytes | None:
    """The bytes of a PNG or JPEG from a mime bundle's value (base64 text) or raw bytes, or None when
    they are not one (a wrong signature, bad base64, another type: SVG can hold script, so it is never inlined)."""
    signature = _SIGNATURES.get(mime)
    if signature is None:
        return None
    if isinstance(data, str):
        try:
            data = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            return None
    if not isinstance(data, (bytes, bytearray)) or not bytes(data).startswith(signature):
        return None
    return bytes(data)


def inline_image(mime: str, data: bytes, alt: str = "image") -> str:
    """An ``<img>`` of checked image bytes (see :func:`image_bytes`) as a ``data:`` URL: nothing to fetch."""
    if image_bytes(mime, data) is None:
        raise ValueError(f"not a {mime} image")
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:{mime};base64,{encoded}" alt="{html.escape(alt, quote=True)}">'
