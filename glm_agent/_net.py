"""Which names reach a server bound to an address: loopback checks, Host and Origin checks (web UI, MCP, API).

A browser on the user's machine can be made to send requests to ``127.0.0.1`` from any web page
(DNS rebinding: ``evil.example`` resolves to 127.0.0.1 and the page talks to the server with
``Host: evil.example``). So every server here answers only requests whose ``Host`` names it by
a name it was bound to, and refuses cross-origin requests from browsers.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["is_loopback", "is_wildcard", "host_names", "host_of", "host_allowed", "same_origin"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve only to them (``localhost``)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def is_wildcard(host: str) -> bool:
    """``0.0.0.0``, ``::`` or an empty host: every address of this machine."""
    return host.strip("[]") in ("", "0.0.0.0", "::")


def _interface_addresses() -> set[str]:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with jupyter_client's stack
        return set()
    found = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                found.add(address.address.split("%")[0])
    return found


def host_names(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The names a ``Host`` header may carry for a server bound to ``bind_host`` (lower case, no port).

    The bound address itself; for a loopback bind, ``localhost``, ``127.0.0.1`` and ``::1``; for a
    wildcard bind, every interface address and this machine's host names; plus ``extra`` (the names
    a reverse proxy or DNS gives the server, e.g. ``--allowed-host chat.example.org``).
    """
    names = {bind_host.strip("[]").lower()}
    if is_wildcard(bind_host):
        names |= _interface_addresses()
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        names |= set(LOOPBACK_NAMES)
    elif is_loopback(bind_host):
        names |= set(LOOPBACK_NAMES)
    names |= {name.strip().strip("[]").lower() for name in extra if name.strip()}
    names.discard("")
    return frozenset(names)


def host_of(header: str) -> str | None:
    """The host name of a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``), lower case; None if malformed."""
    value = header.strip()
    if not value or any(c in value for c in "/@?#\\ \t"):
        return None
    try:
        parts = urlsplit(f"//{value}")
        hostname = parts.hostname
        _ = parts.port  # a bad port raises ValueError
    except ValueError:
        return None
    return hostname.lower() if hostname else None


def host_allowed(header: str | None, names: frozenset[str]) -> bool:
    """Whether a request's ``Host`` header names this server (a missing header is refused)."""
    if header is None:
        return False
    hostname = host_of(header)
    return hostname is not None and hostname in names


def same_origin(origin: str, host_header: str, scheme: str) -> bool:
    """Whether an ``Origin`` header is this server's own origin (the scheme and ``Host`` it was reached by)."""
    try:
        parts = urlsplit(origin.strip())
        origin_host = parts.netloc.lower()
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/"):
        return False
    own = host_header.strip().lower()
    default_port = {"http": ":80", "https": ":443"}[parts.scheme]
    return parts.scheme == scheme and (
        origin_host == own or origin_host == own.removesuffix(default_port) or origin_host + default_port == own
    )
