"""Fetch a web page as plain text, with limits on size, time and where it may connect.

HTML is turned into text with the standard library's ``html.parser`` (scripts and
styles dropped, block elements on their own lines). Only http(s) URLs are fetched;
by default hosts that resolve to loopback, private, link-local or other
non-public addresses are refused (the model must not reach the machine's own
services); ``make_fetch_tool(allow_private_networks=True)`` lifts that. Redirects
are followed by hand so that every hop is checked. (A host whose DNS answer
changes between the check and the connection is not guarded against.)
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from html.parser import HTMLParser
from typing import Annotated
from urllib.parse import urljoin

import httpx

from glm_agent import Tool, tool

__all__ = ["fetch_url", "make_fetch_tool", "html_to_text"]

DEFAULT_MAX_BYTES = 1_000_000
DEFAULT_TIMEOUT = 15.0
MAX_REDIRECTS = 5
_SKIP = {"script", "style", "noscript", "template", "svg", "head"}
_BLOCK = {
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "tr",
    "table",
    "section",
    "article",
    "header",
    "footer",
    "nav",
    "main",
    "aside",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "blockquote",
    "hr",
    "dt",
    "dd",
    "figure",
    "form",
    "title",
}
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP:
            self._skip += 1
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP and self._skip:
            self._skip -= 1
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """(title, text) of an HTML document; whitespace collapsed, one block per line."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v\u00a0]+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    title = re.sub(r"\s+", " ", "".join(parser.title)).strip()
    return title, text


def _check_public(url: httpx.URL) -> None:
    host = url.host
    try:
        infos = socket.getaddrinfo(host, url.port or (443 if url.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not address.is_global:
            raise PermissionError(
                f"{host!r} is a local or private address ({address}); only public web sites can be fetched"
            )


def _charset(response: httpx.Response, head: bytes) -> str:
    if response.charset_encoding:
        return response.charset_encoding
    match = re.search(rb"<meta[^>]+charset=[\"']?([A-Za-z0-9_\-]+)", head[:4096], re.IGNORECASE)
    return match.group(1).decode("ascii") if match else "utf-8"


def make_fetch_tool(
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT,
    allow_private_networks: bool = False,
    transport: httpx.BaseTransport | None = None,
) -> Tool:
    """A ``fetch_url`` tool reading at most ``max_bytes`` within ``timeout`` seconds in total."""

    @tool(name="fetch_url", timeout=timeout + 5)
    def fetch_url(url: Annotated[str, "The http:// or https:// address of the page"]) -> str:
        """Fetch a web page and return its text (HTML converted to plain text)."""
        deadline = time.monotonic() + timeout
        target = httpx.URL(url.strip())
        headers = {"User-Agent": "glm-agent-fetch/0.1", "Accept-Encoding": "identity"}
        with httpx.Client(transport=transport, timeout=timeout, headers=headers) as client:
            for _ in range(MAX_REDIRECTS + 1):
                if target.scheme not in ("http", "https") or not target.host:
                    raise ValueError(f"only http:// and https:// URLs can be fetched, not {str(target)!r}")
                if not allow_private_networks:
                    _check_public(target)
                with client.stream("GET", target) as response:
                    if response.is_redirect and "location" in response.headers:
                        target = httpx.URL(urljoin(str(target), response.headers["location"]))
                        continue
                    if response.status_code >= 400:
                        raise RuntimeError(f"HTTP {response.status_code} {response.reason_phrase} for {target}")
                    kind = response.headers.get("content-type", "text/html").split(";")[0].strip().lower()
                    if not (kind.startswith(_TEXT_TYPES) or kind.endswith(("+json", "+xml", "/xhtml"))):
                        raise ValueError(f"{target} is {kind!r}, not a text or HTML page; this tool reads text only")
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body.extend(chunk)
                        if len(body) >= max_bytes:
                            break
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"the page took longer than {timeout:g} s to download")
                    cut = len(body) >= max_bytes
                    data = bytes(body[:max_bytes])
                    text = data.decode(_charset(response, data), errors="replace")
                    break
            else:
                raise RuntimeError(f"more than {MAX_REDIRECTS} redirects; stopped at {target}")
        title = ""
        if kind in ("text/html", "application/xhtml+xml"):
            title, text = html_to_text(text)
        head = f"URL: {target}\n" + (f"Title: {title}\n" if title else "")
        tail = f"\n[... stopped after {max_bytes} bytes ...]" if cut else ""
        return f"{head}\n{text}{tail}"

    return fetch_url


fetch_url = make_fetch_tool()
