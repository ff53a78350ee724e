"""The ready-made tools under attack: bounded work, no escapes through the file system, no stalls or
decompression bombs or DNS rebinding in ``fetch_url`` (against misbehaving servers on 127.0.0.1)."""

from __future__ import annotations

import gzip
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpcore
import pytest

from glm_agent import ToolRegistry
from glm_agent.tools import load_module_tools
from tests._data import TOOLS


def module_of(name: str) -> Any:
    tools = load_module_tools(TOOLS / f"{name}.py")
    return sys.modules[tools[0].function.__module__]


# -- calculator: bounded by construction --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("round(1, -10**9)", "round() takes between -1250 and 1250 digits"),
        ("round(1, -10**7)", "round() takes between -1250 and 1250 digits"),
        ("round(2.5, 10**9)", "round() takes between -1250 and 1250 digits"),
        ("round(1, 0.5)", "second argument is a whole number"),
        ("gcd(2**4000 * 2**4000, 3)", "too large"),
        ("-(2**4000) * 2**4000", "too large"),
        ("abs(2**4000 * 2**100)", "too large"),
        ("factorial(1000)", "too large"),
    ],
)
def test_calculator_refuses_unbounded_work(expression: str, message: str) -> None:
    registry = ToolRegistry(load_module_tools(TOOLS / "calculator.py"))
    result = registry.call("calculate", {"expression": expression})
    assert result.error == "exception" and message in result.observation, result.observation


def test_calculator_still_rounds_large_numbers() -> None:
    registry = ToolRegistry(load_module_tools(TOOLS / "calculator.py"))
    assert registry.call("calculate", {"expression": "round(123456, -3)"}).value == 123000
    assert registry.call("calculate", {"expression": "round(10**1000 + 7, -1000)"}).value == 10**1000
    assert registry.call("calculate", {"expression": "factorial(300) // factorial(299)"}).value == 300


def test_io_tools_have_a_default_timeout() -> None:
    for name in ("files", "web", "weather"):
        for tool in load_module_tools(TOOLS / f"{name}.py"):
            assert tool.timeout is not None and tool.timeout > 0, tool.name


# -- files: hard links, FIFOs, links swapped in, capped listing ----------------------------------------------------
@pytest.fixture
def workspace(tmp_path: Path) -> tuple[ToolRegistry, Path, Path]:
    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret", encoding="utf-8")
    return ToolRegistry(module_of("files").make_file_tools(root)), root, outside


def test_files_refuse_hard_links(workspace: tuple[ToolRegistry, Path, Path]) -> None:
    registry, root, outside = workspace
    os.link(outside / "secret.txt", root / "linked.txt")
    for tool_name, arguments in [
        ("read_file", {"path": "linked.txt"}),
        ("write_file", {"path": "linked.txt", "content": "pwned", "mode": "overwrite"}),
        ("write_file", {"path": "linked.txt", "content": "pwned", "mode": "append"}),
    ]:
        result = registry.call(tool_name, arguments)
        assert result.error == "exception" and "hard-linked file (it has 2 names" in result.observation, result
    assert (outside / "secret.txt").read_text(encoding="utf-8") == "top secret"


def test_files_refuse_fifos_without_blocking(workspace: tuple[ToolRegistry, Path, Path]) -> None:
    registry, root, _ = workspace
    os.mkfifo(root / "pipe")
    for tool_name, arguments in [
        ("write_file", {"path": "pipe", "content": "x", "mode": "overwrite"}),
        ("write_file", {"path": "pipe", "content": "x", "mode": "append"}),
        ("read_file", {"path": "pipe"}),
    ]:
        result = registry.call(tool_name, arguments)
        assert result.error == "exception" and "is not a regular file" in result.observation, result
    reader = os.open(root / "pipe", os.O_RDONLY | os.O_NONBLOCK)  # with a reader, the open succeeds: fstat refuses
    try:
        result = registry.call("write_file", {"path": "pipe", "content": "x", "mode": "overwrite"})
        assert result.error == "exception" and "a FIFO, socket or device" in result.observation, result
    finally:
        os.close(reader)
    listing = registry.call("list_files", {}).value["entries"]
    assert listing == [{"path": "pipe", "type": "other", "size": None}]


def test_files_open_refuses_a_link_swapped_in_after_the_check(workspace: tuple[ToolRegistry, Path, Path]) -> None:
    _, root, outside = workspace
    files = module_of("files")
    (root / "late.txt").symlink_to(outside / "secret.txt")  # as if swapped in after resolve_in_workspace
    with pytest.raises(PermissionError, match="replaced by a symbolic link"):
        files._open_regular(root / "late.txt", "late.txt", os.O_RDONLY)
    with pytest.raises(PermissionError, match="replaced by a symbolic link"):
        files._open_regular(root / "late.txt", "late.txt", os.O_WRONLY)
    assert (outside / "secret.txt").read_text(encoding="utf-8") == "top secret"


def test_files_listing_work_is_capped_before_sorting(
    workspace: tuple[ToolRegistry, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, root, _ = workspace
    files = module_of("files")
    registry = ToolRegistry(files.make_file_tools(root))
    folder = root / "many"
    folder.mkdir()
    for index in range(3 * files.MAX_LIST_ENTRIES):
        (folder / f"{index:05}.txt").touch()
    described: list[str] = []
    real_describe = files._describe

    def counting(entry: os.DirEntry[str], base: Path) -> dict[str, object]:
        described.append(entry.name)
        return real_describe(entry, base)  # type: ignore[no-any-return]

    monkeypatch.setattr(files, "_describe", counting)
    listing = registry.call("list_files", {"path": "many"}).value
    assert len(listing["entries"]) == files.MAX_LIST_ENTRIES and "listing stopped after 500" in listing["note"]
    paths = [entry["path"] for entry in listing["entries"]]
    assert paths == sorted(paths) and len(described) == files.MAX_LIST_ENTRIES
    assert len(list(files._walk(folder, False, 7))) == 7  # the walk itself stops at its limit
    recursive = registry.call("list_files", {"recursive": True}).value
    assert len(recursive["entries"]) == files.MAX_LIST_ENTRIES and "note" in recursive


# -- web: misbehaving servers on 127.0.0.1 ---------------------------------------------------------------------------
Behaviour = Callable[[socket.socket], None]


@pytest.fixture
def raw_server() -> Iterator[Callable[[Behaviour], str]]:
    """A TCP server on 127.0.0.1 that reads a request's head and then runs a behaviour on the socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    behaviour: list[Behaviour] = []
    threads: list[threading.Thread] = []
    requests: list[bytes] = []

    def serve_one(connection: socket.socket) -> None:
        with connection:
            head = b""
            while b"\r\n\r\n" not in head:
                part = connection.recv(4096)
                if not part:
                    return
                head += part
            requests.append(head)
            try:
                behaviour[0](connection)
            except OSError:  # the client went away: the point of most of these tests
                pass

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=serve_one, args=(connection,), daemon=True)
            threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()

    def start(what: Behaviour) -> str:
        behaviour.append(what)
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    start.requests = requests  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()
        for thread in threads:
            thread.join(5)


def _header_a_line_every(seconds: float, stop: threading.Event) -> Behaviour:
    def behave(connection: socket.socket) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n")
        index = 0
        while not stop.wait(seconds):
            connection.sendall(f"X-Slow-{index}: still coming\r\n".encode())
            index += 1

    return behave


def test_fetch_has_one_deadline_for_headers_that_never_end(raw_server: Callable[[Behaviour], str]) -> None:
    stop = threading.Event()
    url = raw_server(_header_a_line_every(0.1, stop))
    web = module_of("web")
    registry = ToolRegistry([web.make_fetch_tool(allow_private_networks=True, timeout=1.0)])
    try:
        result = registry.call("fetch_url", {"url": url})
    finally:
        stop.set()
    # the tool's own deadline fired (an exception), not the registry's backstop (timeout + 5 s: error "timeout")
    assert result.error == "exception" and "TimeoutError: the page took longer than 1 s" in result.observation


def test_fetch_has_one_deadline_for_a_body_that_drips(raw_server: Callable[[Behaviour], str]) -> None:
    stop = threading.Event()

    def behave(connection: socket.socket) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n")
        while not stop.wait(0.1):
            connection.sendall(b"a")

    url = raw_server(behave)
    registry = ToolRegistry([module_of("web").make_fetch_tool(allow_private_networks=True, timeout=1.0)])
    try:
        result = registry.call("fetch_url", {"url": url})
    finally:
        stop.set()
    assert result.error == "exception" and "TimeoutError: the page took longer than 1 s" in result.observation


def _respond(head: bytes, body: bytes) -> Behaviour:
    def behave(connection: socket.socket) -> None:
        connection.sendall(head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)

    return behave


def test_fetch_never_decompresses(raw_server: Callable[[Behaviour], str]) -> None:
    bomb = gzip.compress(b"\0" * 200_000_000, compresslevel=9)  # ~200 KB that would inflate to 200 MB
    url = raw_server(_respond(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n", bomb))
    registry = ToolRegistry([module_of("web").make_fetch_tool(allow_private_networks=True, timeout=5.0)])
    result = registry.call("fetch_url", {"url": url})
    assert result.error == "exception" and "sent a 'gzip'-compressed body although none was asked for" in (
        result.observation
    )
    assert b"accept-encoding: identity" in raw_server.requests[0].lower()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain; charset=x-klingon", "naïve 北京".encode()),
        ("text/plain; charset=rot13", "naïve 北京".encode()),
        ("text/html", b'<html><head><meta charset="no-such-codec"></head><body>na\xc3\xafve \xff</body></html>'),
    ],
)
def test_fetch_falls_back_on_unknown_charsets(
    raw_server: Callable[[Behaviour], str], content_type: str, body: bytes
) -> None:
    url = raw_server(_respond(f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n".encode(), body))
    registry = ToolRegistry([module_of("web").make_fetch_tool(allow_private_networks=True, timeout=5.0)])
    result = registry.call("fetch_url", {"url": url})
    assert result.ok, result.observation
    assert "naïve" in result.observation


def test_fetch_connects_to_the_address_it_checked(raw_server: Callable[[Behaviour], str]) -> None:
    """DNS rebinding: the first answer is public, every later one is 127.0.0.1; only the first is used."""
    url = raw_server(_respond(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n", b"the public page"))
    port = int(url.rsplit(":", 1)[1])
    public = "93.184.216.34"
    answers: list[str] = []

    def rebinding_resolver(host: str, _port: int) -> list[str]:
        answers.append(host)
        return [public] if len(answers) == 1 else ["127.0.0.1"]

    class SimulatedInternet(httpcore.NetworkBackend):
        """The public address is outside this machine: route it to the local server, and record every connect."""

        def __init__(self) -> None:
            self.connects: list[str] = []
            self.tcp = httpcore.SyncBackend()

        def connect_tcp(self, host: str, port: int, timeout: float | None = None, *args: Any) -> Any:
            self.connects.append(host)
            if host != public:
                raise httpcore.ConnectError(f"{host} is not on the simulated internet")
            return self.tcp.connect_tcp("127.0.0.1", port, timeout)

    internet = SimulatedInternet()
    web = module_of("web")
    tool = web.make_fetch_tool(timeout=5.0, resolve=rebinding_resolver, network_backend=internet)
    result = ToolRegistry([tool]).call("fetch_url", {"url": f"http://rebind.test:{port}/"})
    assert result.ok and result.observation.endswith("the public page"), result.observation
    assert answers == ["rebind.test"] and internet.connects == [public]
    # and once the answer is private, the check refuses it before anything connects
    refused = ToolRegistry([tool]).call("fetch_url", {"url": f"http://rebind.test:{port}/"})
    assert "is a local or private address (127.0.0.1)" in refused.observation
    assert internet.connects == [public]


def test_fetch_checks_every_redirect_hop(raw_server: Callable[[Behaviour], str]) -> None:
    url = raw_server(_respond(b"HTTP/1.1 302 Found\r\nLocation: http://internal.test/admin\r\n", b""))
    port = int(url.rsplit(":", 1)[1])

    def resolver(host: str, _port: int) -> list[str]:
        return {"public.test": ["93.184.216.34"], "internal.test": ["10.0.0.7"]}[host]

    class Internet(httpcore.NetworkBackend):
        def connect_tcp(self, host: str, port: int, timeout: float | None = None, *args: Any) -> Any:
            assert host == "93.184.216.34"
            return httpcore.SyncBackend().connect_tcp("127.0.0.1", port, timeout)

    tool = module_of("web").make_fetch_tool(timeout=5.0, resolve=resolver, network_backend=Internet())
    result = ToolRegistry([tool]).call("fetch_url", {"url": f"http://public.test:{port}/"})
    assert result.error == "exception" and "'internal.test' is a local or private address (10.0.0.7)" in (
        result.observation
    )
