"""The web UI's door: every request for the UI passes here before Gradio sees it (plain ASGI, no Gradio import).

Gradio trusts its client more than a server on a shared machine can: a session is whatever
``session_hash`` a request names, its CORS lets any ``http://localhost:*`` page in with
credentials, and a mounted app skips its "was this file uploaded" check. So, in front of it:

- **Host and Origin.** The ``Host`` header must name the server (:func:`glm_agent._net.host_names`:
  DNS rebinding ends here, 421), and a request from a browser page of another origin is refused
  (403), whatever the method. Gradio's CORS headers never leave.
- **Only the routes the UI uses** (the page, its assets, login, the queue, uploads); Gradio's other
  routes (REST ``/call``, ``/run``, monitoring, streams, deep links...) are 404.
- **A client is a browser**, known by an unguessable ``HttpOnly`` cookie this door sets (never
  logged). The first request that names a ``session_hash`` binds it to that cookie; any other
  client naming it (taken from a log, guessed) is refused, so nobody else can join, read,
  approve, stop, download or close another's session. Requests that name a session need the cookie.
- **Bounded**: request bodies (``max_request_bytes``; uploads ``max_upload_request_bytes``, both
  counted as they stream, never buffered whole), Gradio's upload folder in all
  (``upload_budget_bytes``), queue joins in flight per session, per client and in all (429 before
  Gradio's queue gets them), and failed logins per address (429).
- **Responses** carry a Content-Security-Policy (images, connections and form targets only to this
  origin: a second line behind the rendering, which already lets nothing external in), ``nosniff``,
  ``no-referrer`` and ``SAMEORIGIN`` framing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from glm_agent._net import host_allowed, same_origin

__all__ = ["COOKIE", "Door", "UIGuard", "LoginThrottle", "UploadLedger", "CONTENT_SECURITY_POLICY"]

logger = logging.getLogger(__name__)

COOKIE = "glm_agent_client"
_COOKIE_VALUE = re.compile(r"^[A-Za-z0-9_-]{43}$")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "worker-src 'self' blob:; frame-src 'none'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'self'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"SAMEORIGIN"),
]

# (method, path under the UI's prefix): the routes Gradio's page and its Python client use.
_ROUTES: list[tuple[frozenset[str], re.Pattern[str]]] = [
    (
        frozenset({"GET", "HEAD"}),
        re.compile(
            r"/?|/config/?|/(assets|static|svelte)/[^?#]+|/favicon\.ico|/theme\.css|/robots\.txt|/manifest\.json|/logout"
        ),
    ),
    (frozenset({"POST"}), re.compile(r"/login/?")),
    (
        frozenset({"GET"}),
        re.compile(
            r"/gradio_api/(info/?|queue/data|heartbeat/[^/]+|upload_progress|startup-events|theme\.css"
            r"|login_check/?|user/?|token/?|app_id/?|file=[^?#]+)"
        ),
    ),
    (frozenset({"POST"}), re.compile(r"/gradio_api/(queue/join|upload|cancel|reset/?)")),
    (frozenset({"GET"}), re.compile(r"/glm-agent/files/[A-Za-z0-9_-]+/(workspace|session)/[^/]+")),
]
# routes anyone may reach (the page and the login form; Gradio checks /config and /info itself); with a
# login, every other route needs it here (Gradio's own heartbeat, cancel and upload progress do not ask)
_OPEN = re.compile(
    r"/?|/config/?|/(assets|static|svelte)/[^?#]+|/favicon\.ico|/theme\.css|/robots\.txt|/manifest\.json|/logout"
    r"|/login/?|/gradio_api/(info/?|login_check/?|user/?|token/?|app_id/?|theme\.css|startup-events)"
)
_HEARTBEAT = re.compile(r"/gradio_api/heartbeat/([^/]+)")
_JSON_SESSION_ROUTES = ("/gradio_api/queue/join", "/gradio_api/cancel")
_UPLOAD = "/gradio_api/upload"
_JOIN = "/gradio_api/queue/join"
_LOGIN = re.compile(r"/login/?")


class LoginThrottle:
    """Failed logins per client address: ``burst`` at once, then one more every ``every`` seconds."""

    def __init__(self, burst: int = 5, every: float = 10.0) -> None:
        self.burst = burst
        self.every = every
        self._failures: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)
        self._lock = threading.Lock()

    def _tokens(self, address: str, now: float) -> float:
        tokens, at = self._failures.get(address, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) / self.every)

    def retry_after(self, address: str) -> float:
        """0 if ``address`` may try now, else seconds until it may."""
        with self._lock:
            tokens = self._tokens(address, time.monotonic())
        return 0.0 if tokens >= 1 else (1 - tokens) * self.every

    def failed(self, address: str) -> None:
        with self._lock:
            now = time.monotonic()
            self._failures[address] = (max(0.0, self._tokens(address, now) - 1), now)
            if len(self._failures) > 10_000:  # forget the oldest addresses
                for stale in list(self._failures)[:1000]:
                    del self._failures[stale]


class UploadLedger:
    """Which client uploaded which file into Gradio's upload folder (a session takes only its client's)."""

    def __init__(self, limit: int = 10_000) -> None:
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def record(self, path: str, client: str) -> None:
        with self._lock:
            self._owners[os.path.normpath(path)] = client
            while len(self._owners) > self._limit:
                self._owners.popitem(last=False)

    def take(self, path: str, client: str) -> bool:
        """True (and forgotten) if ``client`` uploaded ``path``."""
        with self._lock:
            key = os.path.normpath(path)
            if self._owners.get(key) != client:
                return False
            del self._owners[key]
            return True

    def remove_all(self) -> None:
        """Delete the uploaded files no session took (at shutdown)."""
        with self._lock:
            paths = list(self._owners)
            self._owners.clear()
        for path in paths:
            try:
                os.unlink(path)
                os.rmdir(os.path.dirname(path))  # Gradio's folder per upload, if now empty
            except OSError:
                pass

    def uploaded_by(self, path: str, client: str) -> bool:
        """Whether ``client`` uploaded ``path`` (and no session has taken it yet)."""
        with self._lock:
            return self._owners.get(os.path.normpath(path)) == client

    def pending_bytes(self, client: str) -> int:
        """Bytes of files ``client`` uploaded that no session has taken yet (and still exist)."""
        with self._lock:
            paths = [p for p, c in self._owners.items() if c == client]
        total = 0
        for path in paths:
            try:
                total += os.stat(path, follow_symlinks=False).st_size
            except OSError:
                pass
        return total


def folder_bytes(root: str, max_entries: int = 100_000) -> int:
    """Bytes of the regular files under ``root`` (links not followed; at most ``max_entries`` looked at)."""
    total, seen, stack = 0, 0, [root]
    while stack and seen < max_entries:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    seen += 1
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


@dataclass
class Door:
    """What the UI's door knows and enforces; shared by the middleware and the session handlers.

    ``prefix``: where the UI is mounted (``""`` or ``"/ui"``). ``hosts``: the names a ``Host``
    header may carry. ``pending_events(session_hash)``: the queue events of a session not yet
    delivered (read from Gradio's queue). ``upload_folder``: Gradio's upload folder.
    ``login_user(headers)``: the logged-in user of a request (None: not logged in), when the UI
    has a login; then every route but the page and the login form needs one, and a session is
    bound to the client *and* its user.
    """

    prefix: str
    hosts: frozenset[str]
    max_request_bytes: int = 4 * 1024 * 1024
    max_upload_request_bytes: int = 512 * 1024 * 1024
    upload_budget_bytes: int = 2 * 1024 * 1024 * 1024
    upload_folder: str = ""
    events_per_session: int = 8
    events_per_client: int = 32
    max_events: int = 256
    pending_events: Callable[[str], int] = lambda _session: 0
    login_user: Callable[[list[tuple[bytes, bytes]]], str | None] | None = None
    bindings_per_client: int = 64
    max_bindings: int = 100_000
    logins: LoginThrottle = field(default_factory=LoginThrottle)
    uploads: UploadLedger = field(default_factory=UploadLedger)

    def __post_init__(self) -> None:
        self.prefix = self.prefix.rstrip("/")
        self._owners: dict[str, str] = {}  # session_hash -> owner (client cookie, and user)
        self._per_owner: dict[str, OrderedDict[str, None]] = {}  # owner -> its session hashes, oldest first
        self._lock = threading.Lock()

    def covers(self, path: str) -> bool:
        return not self.prefix or path == self.prefix or path.startswith(self.prefix + "/")

    def owner_of(self, session_hash: str) -> str | None:
        with self._lock:
            return self._owners.get(session_hash)

    def bind(self, session_hash: str, owner: str) -> bool | None:
        """Bind ``session_hash`` to ``owner`` on first sight: True if it is (now) the owner's, False if
        another owner holds it, None if it may not be bound (the server holds ``max_bindings``).

        A binding is never taken from its owner by others: an owner past ``bindings_per_client``
        forgets its own oldest binding, and a full server refuses new ones.
        """
        with self._lock:
            held = self._owners.get(session_hash)
            if held is not None:
                return secrets.compare_digest(held, owner)
            if len(self._owners) >= self.max_bindings:
                return None
            mine = self._per_owner.setdefault(owner, OrderedDict())
            if len(mine) >= self.bindings_per_client:
                oldest, _ = mine.popitem(last=False)
                del self._owners[oldest]
            mine[session_hash] = None
            self._owners[session_hash] = owner
            return True

    def client_events(self, owner: str) -> int:
        with self._lock:
            sessions = list(self._per_owner.get(owner, ()))
        return sum(self.pending_events(s) for s in sessions)

    def all_events(self) -> int:
        with self._lock:
            sessions = list(self._owners)
        return sum(self.pending_events(s) for s in sessions)


def client_cookie(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The client cookie this door set, if the request carries a well-formed one."""
    for name, value in headers:
        if name == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header is no client
                continue
            morsel = jar.get(COOKIE)
            if morsel is not None and _COOKIE_VALUE.match(morsel.value):
                return morsel.value
    return None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class UIGuard:
    """ASGI middleware enforcing a :class:`Door` on the paths under its prefix (others pass untouched)."""

    def __init__(self, app: Any, *, door: Door) -> None:
        self.app = app
        self.door = door

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        door = self.door
        if scope["type"] not in ("http", "websocket") or not door.covers(scope["path"]):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # the UI uses none
            await send({"type": "websocket.close", "code": 1008})
            return
        headers: list[tuple[bytes, bytes]] = [(k.lower(), v) for k, v in scope.get("headers", [])]
        client = client_cookie(headers)
        try:
            body = await self._check(scope, headers, client, receive)
        except _Refused as refused:
            await _send_refusal(send, refused, new_cookie=None if client else _new_cookie())
            return
        sub = scope["path"][len(door.prefix) :] or "/"
        limit = door.max_upload_request_bytes if sub == _UPLOAD else door.max_request_bytes
        await self._forward(scope, receive, send, body, client, sub, limit)

    async def _check(
        self, scope: dict[str, Any], headers: list[tuple[bytes, bytes]], client: str | None, receive: Any
    ) -> bytes | None:
        """Refuse what may not pass; return the body when it had to be read to find its session."""
        door = self.door
        host = _header(headers, b"host")
        if not host_allowed(host, door.hosts):
            raise _Refused(421, f"this server does not answer to the host {host!r}")
        origin = _header(headers, b"origin")
        if origin is not None and not same_origin(origin, host or "", scope.get("scheme", "http")):
            raise _Refused(403, "cross-origin requests are refused")
        if _header(headers, b"sec-fetch-site") == "cross-site" and scope["method"] not in ("GET", "HEAD"):
            raise _Refused(403, "cross-site requests are refused")
        method = scope["method"]
        sub = scope["path"][len(door.prefix) :] or "/"
        if not any(method in methods and pattern.fullmatch(sub) for methods, pattern in _ROUTES):
            raise _Refused(404, "not found")
        user = door.login_user(headers) if door.login_user is not None else None
        if door.login_user is not None and user is None and not _OPEN.fullmatch(sub):
            raise _Refused(401, "log in first")
        if method == "POST" and _LOGIN.fullmatch(sub):
            wait = door.logins.retry_after(_address(scope))
            if wait > 0:
                raise _Refused(
                    429, f"too many failed logins; try again in {wait:.0f} s", [(b"retry-after", b"%d" % (wait + 1))]
                )
        declared = _content_length(headers)
        limit = door.max_upload_request_bytes if sub == _UPLOAD else door.max_request_bytes
        if declared is not None and declared > limit:
            raise _Refused(413, f"the request body is larger than {limit:,} bytes")
        if sub == _UPLOAD:
            if client is None:
                raise _Refused(403, "uploads come from the page: load it first")
            pending = door.uploads.pending_bytes(client)
            if pending + (declared or 0) > door.max_upload_request_bytes:
                raise _Refused(413, "too many uploaded files wait for a message; send it or reload the page")
            if await asyncio.to_thread(folder_bytes, door.upload_folder) + (declared or 0) > door.upload_budget_bytes:
                raise _Refused(507, "the server's upload space is full; try again later")
        body: bytes | None = None
        session = _session_in_path_or_query(sub, scope)
        if session is None and method == "POST" and sub in _JSON_SESSION_ROUTES:
            body = await _read_body(receive, door.max_request_bytes)
            session = _session_in_json(body)
        if session is not None:
            if client is None:
                raise _Refused(403, "this request names a session but carries no client cookie: load the page first")
            owner = client if user is None else f"{client}\0{user}"
            bound = door.bind(session, owner)
            if bound is None:
                raise _Refused(503, "the server holds too many sessions; try again later", [(b"retry-after", b"30")])
            if not bound:
                logger.warning("refused a request for a session of another client (from %s)", _address(scope))
                raise _Refused(403, "this session belongs to another client")
            if sub == _JOIN:
                if door.pending_events(session) >= door.events_per_session:
                    raise _Refused(429, "too many events of this session are waiting; wait for them")
                if door.client_events(owner) >= door.events_per_client:
                    raise _Refused(429, "too many events of this client are waiting; wait for them")
                if door.all_events() >= door.max_events:
                    raise _Refused(429, "the server is busy; try again shortly", [(b"retry-after", b"5")])
                for path in _named_files(_json_data(body)):
                    if not door.uploads.uploaded_by(path, client):
                        logger.warning(
                            "refused an event naming a file this client did not upload (from %s)", _address(scope)
                        )
                        raise _Refused(403, "an event may name only files this page uploaded")
        return body

    async def _forward(
        self,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        body: bytes | None,
        client: str | None,
        sub: str,
        limit: int,
    ) -> None:
        door = self.door
        started = False
        refused = False
        received = 0
        new_cookie = None if client else _new_cookie()
        captured: list[bytes] | None = [] if sub == _UPLOAD else None
        status = 0
        replayed = body is None

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, refused, replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        await _send_refusal(send, _Refused(413, f"the request body is larger than {limit:,} bytes"))
                    return {"type": "http.disconnect"}  # the app stops reading and cleans up
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started, status
            if refused and not started:
                return  # the 413 went out instead
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                kept = [(k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-")]
                kept += _SECURITY_HEADERS
                if new_cookie is not None:
                    kept.append((b"set-cookie", new_cookie))
                message = {**message, "headers": kept}
            elif message["type"] == "http.response.body" and captured is not None and status == 200:
                if sum(map(len, captured)) < 1 << 20:
                    captured.append(message.get("body", b""))
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if scope["method"] == "POST" and _LOGIN.fullmatch(sub) and status >= 400:
            door.logins.failed(_address(scope))
        if captured is not None and status == 200 and client is not None:
            try:
                paths = json.loads(b"".join(captured))
            except ValueError:
                paths = []
            for path in paths if isinstance(paths, list) else []:
                if isinstance(path, str):
                    door.uploads.record(path, client)


def _new_cookie() -> bytes:
    value = secrets.token_urlsafe(32)
    return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax".encode()


def _address(scope: dict[str, Any]) -> str:
    peer = scope.get("client")
    return str(peer[0]) if peer else "unknown"


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    value = _header(headers, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _session_in_path_or_query(sub: str, scope: dict[str, Any]) -> str | None:
    match = _HEARTBEAT.fullmatch(sub)
    if match:
        return str(match.group(1))
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    if "session_hash" in query:
        values = parse_qs(query).get("session_hash")
        if values:
            return str(values[0])
    return None


def _json_data(body: bytes | None) -> Any:
    try:
        data = json.loads(body or b"null")
    except ValueError:
        return None
    return data.get("data") if isinstance(data, dict) else None


def _named_files(value: Any, depth: int = 0) -> list[str]:
    """Every ``path`` an object in an event's data names: Gradio copies each file into its cache before any
    handler runs, wherever it points (a host file, a URL it would fetch). Past a depth of 8, refused whole."""
    if depth > 8:
        return ["<nested too deep>"]
    if isinstance(value, dict):
        found = [str(value["path"])] if "path" in value else []  # (a FileData's url is not read on input)
        for item in value.values():
            found += _named_files(item, depth + 1)
        return found
    if isinstance(value, list):
        return [path for item in value for path in _named_files(item, depth + 1)]
    return []


def _session_in_json(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    value = data.get("session_hash") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


async def _read_body(receive: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Refused(400, "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _Refused(413, f"the request body is larger than {limit:,} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_refusal(send: Any, refused: _Refused, new_cookie: bytes | None = None) -> None:
    body = json.dumps({"error": refused.message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *_SECURITY_HEADERS,
        *refused.headers,
    ]
    if new_cookie is not None:
        headers.append((b"set-cookie", new_cookie))
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
