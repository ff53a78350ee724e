"""Fetch a web page as plain text, with limits on size, time and where it may connect.

HTML is turned into text with the standard library's ``html.parser`` (scripts and
styles dropped, block elements on their own lines). Only http(s) URLs are fetched;
by default hosts that resolve to loopback, private, link-local or other
non-public addresses are refused (the model must not reach the machine's own
services); ``make_fetch_tool(allow_private_networks=True)`` lifts that. Each host is
resolved once and the connection goes to the address that was checked, so a DNS
answer that changes between the check and the connection (DNS rebinding) cannot
reach a private network. Redirects are followed by hand so that every hop is checked.

One deadline covers the whole fetch (connect, TLS, headers and body, every redirect):
a server that sends a header line a second cannot keep it alive past ``timeout``.
Compressed bodies are refused (only ``identity`` is asked for), so nothing is ever
decompressed; an unknown charset falls back to UTF-8 with replacement characters.
"""

from __future__ import annotations

import codecs
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Annotated, Any

import httpcore
import httpx

from glm_agent import Tool, tool

__all__ = ["fetch_url", "make_fetch_tool", "html_to_text", "resolve_host"]

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


Resolver = Callable[[str, int], list[str]]


def resolve_host(host: str, port: int) -> list[str]:
    """The IP addresses ``host`` resolves to (the system resolver)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    return [str(info[4][0]).split("%", 1)[0] for info in infos]


def _checked_addresses(host: str, port: int, resolve: Resolver, allow_private_networks: bool) -> list[str]:
    addresses = resolve(host, port)
    if not addresses:
        raise ConnectionError(f"cannot resolve host {host!r}: no addresses")
    for text in addresses:
        address = ipaddress.ip_address(text)
        if not allow_private_networks and not address.is_global:
            raise PermissionError(
                f"{host!r} is a local or private address ({address}); only public web sites can be fetched"
            )
    return addresses


class _Deadline:
    """One deadline for a whole fetch: every connect, read and write gets at most the time that is left."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self, timeout: float | None) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the page took longer than {self.seconds:g} s to download")
        return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._deadline.left(timeout))
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _CheckedBackend(httpcore.NetworkBackend):
    """Resolves each host once, checks every address, and connects to a checked address (no second lookup)."""

    def __init__(
        self, resolve: Resolver, allow_private_networks: bool, deadline: _Deadline, tcp: httpcore.NetworkBackend
    ) -> None:
        self._resolve = resolve
        self._allow_private = allow_private_networks
        self._deadline = deadline
        self._tcp = tcp

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = _checked_addresses(host, port, self._resolve, self._allow_private)
        for index, address in enumerate(addresses):
            try:
                stream = self._tcp.connect_tcp(
                    address, port, self._deadline.left(timeout), local_address, socket_options
                )
            except httpcore.ConnectError:
                if index == len(addresses) - 1:
                    raise
                continue
            return _DeadlineStream(stream, self._deadline)
        raise ConnectionError(f"cannot connect to {host!r}")  # pragma: no cover (addresses is not empty)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise PermissionError("fetch_url does not connect to Unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(self._deadline.left(seconds))


@dataclass
class _Page:
    url: httpx.URL
    kind: str
    headers: httpx.Headers
    body: bytes


def _fetch_once(pool: httpcore.ConnectionPool, url: httpx.URL, max_bytes: int) -> _Page | httpx.URL:
    """One GET: the page, or the URL a redirect points to."""
    headers = [(b"Host", url.netloc), (b"User-Agent", b"glm-agent-fetch/0.1"), (b"Accept-Encoding", b"identity")]
    target = httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path)
    response = pool.handle_request(httpcore.Request("GET", target, headers=headers))
    try:
        status, head = response.status, httpx.Headers(response.headers)
        if 300 <= status < 400 and "location" in head:
            return url.join(head["location"])
        if status >= 400:
            raise RuntimeError(f"HTTP {status} {httpx.codes.get_reason_phrase(status)} for {url}")
        kind = head.get("content-type", "text/html").split(";")[0].strip().lower()
        if not (kind.startswith(_TEXT_TYPES) or kind.endswith(("+json", "+xml", "/xhtml"))):
            raise ValueError(f"{url} is {kind!r}, not a text or HTML page; this tool reads text only")
        encoding = head.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ValueError(
                f"{url} sent a {encoding!r}-compressed body although none was asked for; "
                "it is not decompressed (it could be a decompression bomb)"
            )
        body = bytearray()
        for chunk in response.iter_stream():
            body.extend(chunk)
            if len(body) > max_bytes:
                break
        return _Page(url, kind, head, bytes(body))
    finally:
        response.close()


def _charset(headers: httpx.Headers, head: bytes) -> str:
    declared = httpx.Response(200, headers=headers).charset_encoding
    if not declared:
        match = re.search(rb"<meta[^>]+charset=[\"']?([A-Za-z0-9_\-]+)", head[:4096], re.IGNORECASE)
        declared = match.group(1).decode("ascii") if match else None
    try:
        if declared and codecs.lookup(declared)._is_text_encoding:
            return declared
    except LookupError:
        pass
    return "utf-8"  # no charset, an unknown one, or a codec that is not a text encoding (rot13, hex)


def make_fetch_tool(
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT,
    allow_private_networks: bool = False,
    resolve: Resolver = resolve_host,
    network_backend: httpcore.NetworkBackend | None = None,
) -> Tool:
    """A ``fetch_url`` tool reading at most ``max_bytes`` within ``timeout`` seconds in total.

    ``resolve(host, port)`` returns a host's IP addresses (default: the system resolver); each host is
    resolved once per connection, every address is checked, and the connection goes to a checked address
    through ``network_backend`` (default: plain TCP sockets), which is only ever given IP addresses.
    """

    @tool(name="fetch_url", timeout=timeout + 5)
    def fetch_url(url: Annotated[str, "The http:// or https:// address of the page"]) -> str:
        """Fetch a web page and return its text (HTML converted to plain text)."""
        deadline = _Deadline(timeout)
        target = httpx.URL(url.strip())
        backend = _CheckedBackend(resolve, allow_private_networks, deadline, network_backend or httpcore.SyncBackend())
        ssl_context = httpx.create_ssl_context(trust_env=False)
        with httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=backend, retries=0) as pool:
            for _ in range(MAX_REDIRECTS + 1):
                if target.scheme not in ("http", "https") or not target.host:
                    raise ValueError(f"only http:// and https:// URLs can be fetched, not {str(target)!r}")
                try:
                    page = _fetch_once(pool, target, max_bytes)
                except httpcore.TimeoutException:
                    raise TimeoutError(f"the page took longer than {timeout:g} s to download") from None
                except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
                    raise ConnectionError(f"cannot fetch {target}: {exc or type(exc).__name__}") from None
                if isinstance(page, httpx.URL):
                    target = page
                    continue
                break
            else:
                raise RuntimeError(f"more than {MAX_REDIRECTS} redirects; stopped at {target}")
        cut = len(page.body) > max_bytes
        data = page.body[:max_bytes]
        text = data.decode(_charset(page.headers, data), errors="replace")
        title = ""
        if page.kind in ("text/html", "application/xhtml+xml"):
            title, text = html_to_text(text)
        head = f"URL: {page.url}\n" + (f"Title: {title}\n" if title else "")
        tail = f"\n[... stopped after {max_bytes} bytes ...]" if cut else ""
        return f"{head}\n{text}{tail}"

    return fetch_url


fetch_url = make_fetch_tool()
