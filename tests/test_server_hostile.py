"""The server under hostile input: no stalls, no 500s, no tracebacks, strict where OpenAI is strict.

Each finding of issue 16 is a regression test here, against a real server on 127.0.0.1 (raw HTTP
through ``httpx`` and raw sockets where a client must misbehave).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from glm_agent.models import ScriptedModel
from glm_agent.server import BackgroundServer, create_app
from tests._data import REPO, SHARED, needs_shared

pytestmark = needs_shared

USER = [{"role": "user", "content": "hi"}]


def _deep(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def deep_schema_tools(depth: int, count: int = 10) -> list[dict[str, Any]]:
    return [
        {"type": "function", "function": {"name": f"tool_{i}", "description": "deep", "parameters": _deep(depth)}}
        for i in range(count)
    ]


@pytest.fixture
def tracebacks(caplog: pytest.LogCaptureFixture) -> Any:
    """A function listing the log records so far that carry a traceback (bad input may cause none)."""
    caplog.set_level(logging.WARNING)
    return lambda: [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


@pytest.fixture
def serve(tokenizer: Any) -> Iterator[Any]:
    servers: list[BackgroundServer] = []

    def start(model: Any = None, head_timeout: float = 10.0, **options: Any) -> BackgroundServer:
        app = create_app(model or ScriptedModel(lambda messages: "\n ok"), tokenizer, **options)
        srv = BackgroundServer(app, head_timeout=head_timeout).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def post(srv: BackgroundServer, body: Any, path: str = "/v1/chat/completions", **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return httpx.post(srv.url + path, content=content, headers=headers, timeout=60, **kw)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]  # type: ignore[no-any-return]


# -- 1. the deep-schema request no longer freezes anything ---------------------------------------------------
def deep_schema_request(depth: int, count: int = 10) -> bytes:
    """The issue's request: ``count`` tools whose parameters nest ``depth`` deep (too deep for json.dumps)."""
    schema = '{"type": "object", "properties": {"a": ' * depth + '{"type": "string"}' + "}}" * depth
    tools = ", ".join(
        f'{{"type": "function", "function": {{"name": "tool_{i}", "parameters": {schema}}}}}' for i in range(count)
    )
    return f'{{"model": "scripted", "messages": {json.dumps(USER)}, "tools": [{tools}]}}'.encode()


def test_deep_tool_schemas_are_refused_at_parse(serve: Any, tracebacks: Any) -> None:
    srv = serve(context_length=8192)
    response = post(srv, deep_schema_request(900))
    error = error_of(response)
    assert response.status_code == 400 and "nests deeper than 64 levels" in error["message"]
    less_deep = post(srv, deep_schema_request(40))  # 80 levels: past the limit, named where it starts
    assert less_deep.status_code == 400 and error_of(less_deep)["param"] == "tools[0].function.parameters"
    assert not tracebacks()


def test_a_prompt_sure_to_exceed_the_context_is_refused_before_tokenizing(
    serve: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = tokenizer.apply_chat_template

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tokenizer, "apply_chat_template", counting)
    srv = serve(context_length=8192)
    tools = deep_schema_tools(28, count=80)  # within the depth limit, but indented JSON grows with depth
    response = post(srv, {"model": "scripted", "messages": USER, "tools": tools})
    error = error_of(response)
    assert response.status_code == 400 and error["code"] == "context_length_exceeded", error
    assert "a token covers at most" in error["message"] and calls == []
    fine = post(srv, {"model": "scripted", "messages": USER, "tools": deep_schema_tools(3, count=2)})
    assert fine.status_code == 200 and calls == [1]


def test_the_traceback_check_sees_a_real_failure(serve: Any, tracebacks: Any) -> None:
    """The check the tests above rely on: a backend that raises is a 500 with its traceback in the log."""

    def broken(messages: Any) -> str:
        raise RuntimeError("the backend fell over")

    srv = serve(ScriptedModel(broken))
    response = post(srv, {"model": "scripted", "messages": USER})
    assert response.status_code == 500 and error_of(response)["type"] == "server_error"
    assert tracebacks()


# -- 3 and 6: size and time limits ---------------------------------------------------------------------------------
def test_request_size_limit_is_a_413(serve: Any) -> None:
    srv = serve(max_request_bytes=10_000)
    big = {"model": "scripted", "messages": [{"role": "user", "content": "x" * 20_000}]}
    response = post(srv, big)
    assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies as the body arrives
        yield b'{"model": "scripted", "messages": [{"role": "user", "content": "'
        for _ in range(30):
            yield b"y" * 1000
        yield b'"}]}'

    streamed = httpx.post(srv.url + "/v1/chat/completions", content=chunks(), timeout=60)
    assert streamed.status_code == 413 and error_of(streamed)["code"] == "request_too_large"
    assert post(srv, {"model": "scripted", "messages": USER}).status_code == 200


def _raw_exchange(srv: BackgroundServer, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes (a safety bound of 30 s, not a timing assertion)."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while True:
            part = sock.recv(65536)
            if not part:
                return received
            received += part


def test_slow_heads_and_bodies_get_408_and_are_closed(serve: Any) -> None:
    srv = serve(head_timeout=0.5, body_timeout=0.5)
    partial_head = _raw_exchange(srv, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
    assert partial_head.startswith(b"HTTP/1.1 408") and b'"code": "request_timeout"' in partial_head
    silent = _raw_exchange(srv, b"")
    assert silent.startswith(b"HTTP/1.1 408")
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
    partial_body = _raw_exchange(srv, head + b'{"model": ')
    assert partial_body.startswith(b"HTTP/1.1 408") and b"the request body did not arrive within 0.5 s" in partial_body
    assert httpx.get(srv.url + "/health").status_code == 200


# -- 4: malformed input is a 400 with param, never a 500 or a traceback ------------------------------------------
@pytest.mark.parametrize(
    ("raw", "param", "message"),
    [
        (
            b'{"model": "scripted", "messages": [{"role": "user", "content": "\\ud800"}]}',
            "messages[0].content",
            "surrogate",
        ),
        (
            b'{"model": "scripted", "messages": [{"role": "user", "content": "x"}], "x": '
            + b"[" * 1000
            + b"]" * 1000
            + b"}",
            None,
            "nests deeper",
        ),
        (
            b'{"model": "scripted", "messages": [{"role": "user", "content": "x"}], "top_k": ' + b"9" * 5000 + b"}",
            None,
            "more than 40 digits",
        ),
        (
            b'{"model": "scripted", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
            None,
            "NaN is not valid JSON",
        ),
        (
            b'{"model": "scripted", "messages": [{"role": "user", "content": "x"}], "temperature": 1e999}',
            None,
            "too large for a float",
        ),
        (
            b'{"model": "scripted", "messages": [{"role": "user", "content": "x"}], "seed": 1180591620717411303424}',
            "seed",
            "less than 18446744073709551616",
        ),
        (
            b'{"model": "scripted", "messages": [{"role": "user", "content": "x"}], "max_tokens": true}',
            "max_tokens",
            "valid integer",
        ),
        (
            b'{"model": "scripted", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            "stream",
            "valid boolean",
        ),
        (
            b'{"model": "scripted", "messages": [{"role": "user", "content": "x"}], "temperature": "0.5"}',
            "temperature",
            "valid number",
        ),
        (b"\xff\xfe", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
    ],
)
def test_malformed_requests_are_400s_with_param(
    serve: Any, tracebacks: Any, raw: bytes, param: str | None, message: str
) -> None:
    srv = serve()
    for path in ("/v1/chat/completions", "/v1/completions"):
        body = (
            raw.replace(b'"messages": [{"role": "user", "content": "x"}]', b'"prompt": "x"')
            if path == "/v1/completions"
            else raw
        )
        response = post(srv, body, path=path)
        error = error_of(response)
        assert response.status_code == 400, (path, response.text)
        assert message in error["message"], error
        if path == "/v1/chat/completions" and param is not None:
            assert error["param"] == param, error
    assert not tracebacks()


def test_degenerate_sampling_values_never_500(serve: Any, tracebacks: Any) -> None:
    srv = serve()
    for extra in ({"temperature": 1e-300}, {"seed": 2**63}, {"seed": -(2**63)}, {"top_p": 1e-300}, {"top_k": 10**30}):
        response = post(srv, {"model": "scripted", "messages": USER, **extra})
        assert response.status_code == 200, (extra, response.text)
    assert post(srv, {"model": "scripted", "messages": USER, "seed": 2**70}).status_code == 400
    assert not tracebacks()


def test_method_and_route_errors_have_openai_shape(serve: Any) -> None:
    srv = serve()
    wrong_method = httpx.get(srv.url + "/v1/chat/completions")
    assert wrong_method.status_code == 405 and error_of(wrong_method)["message"] == "Method Not Allowed"
    missing = httpx.get(srv.url + "/v1/models/other")
    assert missing.status_code == 404 and error_of(missing)["code"] == "model_not_found"


# -- 8: strict where OpenAI is strict -------------------------------------------------------------------------------
def _tool(parameters: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"type": "banana"}, "is not a valid JSON Schema"),
        ({"type": "object", "properties": {"x": {"type": 3}}}, "is not a valid JSON Schema"),
        ({"type": "object", "required": "x"}, "is not a valid JSON Schema"),
        ({"type": "string"}, "must describe an object"),
        ("not a schema", "must be a JSON Schema object"),
    ],
)
def test_tool_schemas_must_be_valid_json_schema(serve: Any, parameters: Any, message: str) -> None:
    srv = serve()
    response = post(srv, {"model": "scripted", "messages": USER, "tools": [_tool(parameters)]})
    error = error_of(response)
    assert response.status_code == 400 and message in error["message"]
    assert error["param"] == "tools[0].function.parameters"
    assert error["code"] == ("invalid_schema" if isinstance(parameters, dict) else None)


def test_tool_messages_must_answer_an_earlier_call(serve: Any) -> None:
    srv = serve()
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    asked = [*USER, {"role": "assistant", "content": None, "tool_calls": [call]}]
    missing = post(srv, {"model": "scripted", "messages": [*asked, {"role": "tool", "content": "1"}]})
    assert missing.status_code == 400 and error_of(missing)["param"] == "messages[2].tool_call_id"
    unknown = post(
        srv, {"model": "scripted", "messages": [*asked, {"role": "tool", "tool_call_id": "call_9", "content": "1"}]}
    )
    assert unknown.status_code == 400 and "no earlier assistant message" in error_of(unknown)["message"]
    early = post(
        srv, {"model": "scripted", "messages": [{"role": "tool", "tool_call_id": "call_1", "content": "1"}, *asked]}
    )
    assert early.status_code == 400
    answered = post(
        srv, {"model": "scripted", "messages": [*asked, {"role": "tool", "tool_call_id": "call_1", "content": "1"}]}
    )
    assert answered.status_code == 200, answered.text


# -- 9: auth covers everything but /health; keys compare as UTF-8 bytes ----------------------------------------
def test_api_key_guards_everything_but_health(serve: Any) -> None:
    key = "schlüssel-密钥"
    srv = serve(api_key=key)
    good = {b"Authorization": b"Bearer " + key.encode("utf-8")}
    for path in ("/docs", "/redoc", "/openapi.json", "/v1/models", "/v1/anything"):
        response = httpx.get(srv.url + path)
        assert response.status_code == 401 and error_of(response)["code"] == "invalid_api_key", path
    assert httpx.get(srv.url + "/openapi.json", headers=good).status_code == 200
    assert httpx.get(srv.url + "/docs", headers=good).status_code == 200
    assert httpx.get(srv.url + "/health").status_code == 200
    assert post(srv, {"model": "scripted", "messages": USER}, headers=good).status_code == 200
    wrong = {b"Authorization": b"Bearer " + key.encode("latin-1", "replace")}
    assert post(srv, {"model": "scripted", "messages": USER}, headers=wrong).status_code == 401
    before_body = post(srv, b"x" * 100_000)  # refused on its head: the body is never read
    assert before_body.status_code == 401


# -- the stall test: /health and a small chat answer while another client's request is prepared ------------------
def test_health_and_small_requests_answer_while_a_big_one_is_prepared(serve: Any, tokenizer: Any) -> None:
    text = "天气预报 weather forecast, tool_call(city='北京') 1234567890\n" * 40_000  # ~2.6 MB of text
    raw = json.dumps({"model": "scripted", "messages": [{"role": "user", "content": text}]}).encode()
    srv = serve()
    small = {"model": "scripted", "messages": USER}
    started, release = threading.Event(), threading.Event()
    real = tokenizer.apply_chat_template

    def announce(*args: Any, **kwargs: Any) -> Any:
        if len(args[0][-1].content) > 1000:  # the big request: held in its preparation until the others answered
            started.set()
            release.wait(60)
        return real(*args, **kwargs)

    result: list[httpx.Response] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokenizer, "apply_chat_template", announce)
        sender = threading.Thread(target=lambda: result.append(post(srv, raw)))
        sender.start()
        try:
            assert started.wait(60)
            # a preparation on the event loop would block these until the held one goes on: they would time out
            health = httpx.get(srv.url + "/health", timeout=30)
            chat = post(srv, small)
            still_running = sender.is_alive()
        finally:
            release.set()
            sender.join(120)
    assert health.status_code == chat.status_code == 200
    assert still_running  # both answered while the big request was still being prepared
    assert result and result[0].status_code == 200


# -- 9: CLI errors are one line and a non-zero exit ---------------------------------------------------------------
def _serve_cli(tmp_path: Any, *args: str) -> subprocess.CompletedProcess[str]:
    replies = tmp_path / "replies.json"
    replies.write_text('["\\n ok"]', encoding="utf-8")
    command = [sys.executable, "-m", "glm_agent.cli", "serve", "--model", f"scripted:{replies}"]
    command += ["--tokenizer", str(SHARED / "tokenizer.model"), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path: Any) -> None:
    bad_port = _serve_cli(tmp_path, "--port", "99999")
    assert bad_port.returncode == 2 and bad_port.stderr.strip().splitlines() == [
        "glm-agent serve: --port 99999 is not a TCP port; give 0..65535 (0: any free port)"
    ]
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        taken = _serve_cli(tmp_path, "--port", str(port), "--log-level", "info")
    assert taken.returncode == 2 and "serving" not in taken.stderr + taken.stdout, taken.stderr
    assert taken.stderr.strip().splitlines()[-1].startswith(f"glm-agent serve: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in taken.stderr
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nsys.exit(3)\n", encoding="utf-8")
    quitter = _serve_cli(tmp_path, "--tools", str(exits), "--mcp-path", "/mcp")
    assert quitter.returncode == 2 and "called sys.exit(3) while being imported" in quitter.stderr
    assert len(quitter.stderr.strip().splitlines()) == 1
    negative = _serve_cli(tmp_path, "--max-request-bytes", "0")
    assert negative.returncode == 2 and "--max-request-bytes must be positive" in negative.stderr
