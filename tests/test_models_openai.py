"""OpenAIModel against real HTTP servers on 127.0.0.1: ours (chat and completion modes) and small misbehaving ones."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from glm_agent.chatglm3 import TOOLS_SYSTEM, parse_reply
from glm_agent.errors import ContextLengthError, ModelError
from glm_agent.messages import AssistantMessage, ObservationMessage, SystemMessage, ToolCall, UserMessage
from glm_agent.models import OpenAIModel, ScriptedModel
from glm_agent.server import BackgroundServer, create_app
from tests._data import REPO, SHARED, needs_shared
from tests._helpers import free_port

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CALL = "get_weather\n ```python\ntool_call(city='北京', days=[1, 2], exact=False)\n```"
HISTORY = [
    SystemMessage(content=TOOLS_SYSTEM, tools=[WEATHER]),
    UserMessage(content="北京天气？"),
    AssistantMessage(metadata="", content="我来查一下。"),
    AssistantMessage(metadata="get_weather", content="```python\ntool_call(city='北京')\n```"),
    ObservationMessage(content='{"temp": 25}'),
]


@pytest.fixture
def servers():
    started = []

    def start(app):
        srv = BackgroundServer(app).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@needs_shared
def test_chat_mode_maps_history_exactly_and_returns_raw_replies(servers, tokenizer):
    backend = ScriptedModel(["\n 我来查一下。<|assistant|>" + CALL, "\n 北京晴。", "\n 好"])
    srv = servers(create_app(backend, tokenizer))
    with OpenAIModel(srv.url, mode="chat") as model:
        raw = "".join(model.stream(HISTORY))
        reply = parse_reply(raw)
        assert reply.text == "我来查一下。" and reply.calls == [
            ToolCall(name="get_weather", arguments={"city": "北京", "days": [1, 2], "exact": False})
        ]
        assert backend.prompts[0] == HISTORY  # agent history → OpenAI → server → the very same ChatGLM3 messages
        assert model.model == "scripted" and model.last_usage["prompt_tokens"] == len(
            tokenizer.apply_chat_template(HISTORY)
        )
        assert model.generate([UserMessage(content="hi")], temperature=0, max_new_tokens=16) == "\n北京晴。"
        assert parse_reply(asyncio.run(model.agenerate([UserMessage(content="hi")]))).text == "好"


@needs_shared
def test_completion_mode_sends_exact_prompt_ids(servers, tokenizer):
    backend = ScriptedModel(["\n 我来查一下。<|assistant|>" + CALL + "<|observation|>", "\n 北京晴。"])
    srv = servers(create_app(backend, tokenizer))
    model = OpenAIModel(srv.url + "/v1", "scripted", mode="completion", tokenizer=SHARED / "tokenizer.model")
    raw = "".join(model.stream(HISTORY))
    assert backend.prompt_ids[0] == tokenizer.apply_chat_template(HISTORY)
    assert raw == "\n 我来查一下。<|assistant|>" + CALL  # special tokens kept, cut at the stop id <|observation|>
    assert parse_reply(raw).calls[0].name == "get_weather"

    async def run():
        return [piece async for piece in model.astream(HISTORY, max_new_tokens=32)]

    assert "".join(asyncio.run(run())) == "\n 北京晴。"
    with pytest.raises(ValueError, match="tokenizer"):
        OpenAIModel(srv.url, mode="completion")


@needs_shared
def test_retries_on_a_full_queue_then_succeeds(servers, tokenizer, caplog):
    from tests.test_server import SlowModel

    backend = SlowModel(["\n" + "z" * 15, "\n second"], delay=0.02)
    srv = servers(create_app(backend, tokenizer, max_concurrency=1, max_queue=0))
    first = OpenAIModel(srv.url, "scripted")
    second = OpenAIModel(srv.url, "scripted", max_retries=8, backoff=0.1, max_backoff=0.2)

    async def both():
        a = asyncio.create_task(first.agenerate([UserMessage(content="a")]))
        while backend.chunks_sent == 0:
            await asyncio.sleep(0.01)
        b = await second.agenerate([UserMessage(content="b")])  # 429 until the first one is done
        return await a, b

    with caplog.at_level("WARNING", logger="glm_agent.models.openai"):
        assert asyncio.run(both()) == ("\n" + "z" * 15, "\nsecond")
    assert any("after HTTP 429" in r.getMessage() for r in caplog.records)
    backend2 = SlowModel(["\n" + "w" * 30], delay=0.02)
    srv2 = servers(create_app(backend2, tokenizer, max_concurrency=1, max_queue=0))
    busy = OpenAIModel(srv2.url, "scripted")

    async def full():
        a = asyncio.create_task(busy.agenerate([UserMessage(content="a")]))
        while backend2.chunks_sent == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(ModelError, match="429.*busy"):
            await OpenAIModel(srv2.url, "scripted", max_retries=0).agenerate([UserMessage(content="b")])
        await a

    asyncio.run(full())


@needs_shared
def test_server_errors_are_clear(servers, tokenizer):
    srv = servers(create_app(ScriptedModel(["\n ok"]), tokenizer, api_key="k", context_length=32))
    with pytest.raises(ModelError, match="401.*check api_key"):
        OpenAIModel(srv.url, "scripted", api_key="wrong").generate([UserMessage(content="x")])
    with pytest.raises(ModelError, match="404.*model name"):
        OpenAIModel(srv.url, "llama", api_key="k").generate([UserMessage(content="x")])
    with pytest.raises(ContextLengthError, match="context holds 32"):
        OpenAIModel(srv.url, "scripted", api_key="k").generate([UserMessage(content="长" * 100)])


def test_connection_refused_is_retried_then_a_clear_error():
    port = free_port()
    model = OpenAIModel(f"http://127.0.0.1:{port}", "m", max_retries=2, backoff=0.01)
    with pytest.raises(ModelError, match=r"cannot reach .* after 3 tries"):
        model.generate([UserMessage(content="x")])
    with pytest.raises(ModelError, match=r"cannot reach .* after 3 tries"):
        asyncio.run(model.agenerate([UserMessage(content="x")]))


def _misbehaving_app(hits: dict[str, int]) -> Starlette:
    """A real HTTP server that answers in the ways a broken or foreign provider might."""

    def sse(*events: str) -> StreamingResponse:
        async def body():
            for e in events:
                yield e

        return StreamingResponse(body(), media_type="text/event-stream")

    def chunk(delta: dict, reason: str | None = None) -> str:
        return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}) + "\n\n"

    async def handle(request: Request):
        body = await request.json()
        model = body["model"]
        hits[model] = hits.get(model, 0) + 1
        if model == "flaky" and hits[model] < 3:
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, status_code=503)
        if model == "flaky":
            return sse(chunk({"content": "fine"}), chunk({}, "stop"), "data: [DONE]\n\n")
        if model == "bad-request":
            return JSONResponse(
                {"error": {"message": "temperature too high", "type": "invalid_request_error"}}, status_code=400
            )
        if model == "html-500":
            return PlainTextResponse("<html>Bad Gateway</html>", status_code=502)
        if model == "not-json":
            return sse("data: {oops\n\n")
        if model == "no-choices":
            return sse('data: {"id": "x"}\n\n')
        if model == "bad-arguments":
            call = {
                "index": 0,
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": "{city: Paris"},
            }
            return sse(chunk({"tool_calls": [call]}), chunk({}, "tool_calls"), "data: [DONE]\n\n")
        if model == "cut-short":
            return sse(chunk({"content": "half"}))
        if model == "tools":  # vLLM-style: name first, arguments in pieces, a comment line, keep-alive
            first = {"index": 0, "id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            return sse(
                ": keep-alive\n\n",
                chunk({"role": "assistant", "content": "Sure."}),
                chunk({"tool_calls": [first]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris", "n": null}'}}]}),
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 1,
                                "id": "c2",
                                "type": "function",
                                "function": {"name": "interpreter", "arguments": '{"code": "print(1)"}'},
                            }
                        ]
                    }
                ),
                chunk({}, "tool_calls"),
                "data: [DONE]\n\n",
            )
        if model == "plain-json":
            return JSONResponse(
                {
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}
                    ]
                }
            )
        return JSONResponse({"error": {"message": "unknown"}}, status_code=404)

    return Starlette(routes=[Route("/v1/chat/completions", handle, methods=["POST"])])


def test_malformed_and_foreign_responses(servers):
    hits: dict[str, int] = {}
    srv = servers(_misbehaving_app(hits))

    def gen(name: str, **kw) -> str:
        return OpenAIModel(srv.url, name, backoff=0.01, **kw).generate([UserMessage(content="x")])

    assert gen("flaky") == "\nfine" and hits["flaky"] == 3  # two 503s retried
    with pytest.raises(ModelError, match="400: temperature too high"):
        gen("bad-request")
    assert hits["bad-request"] == 1  # 4xx is not retried
    with pytest.raises(ModelError, match="502.*Bad Gateway"):
        gen("html-500", max_retries=1)
    assert hits["html-500"] == 2
    with pytest.raises(ModelError, match="not JSON"):
        gen("not-json")
    with pytest.raises(ModelError, match="without a choices list"):
        gen("no-choices")
    with pytest.raises(ModelError, match="not valid JSON"):
        gen("bad-arguments")
    with pytest.raises(ModelError, match="before the reply was complete"):
        gen("cut-short")
    raw = gen("tools")
    reply = parse_reply(raw)
    assert reply.text == "Sure." and [c.name for c in reply.calls] == ["get_weather", "interpreter"]
    assert reply.calls[0].arguments == {"city": "Paris", "n": None} and reply.calls[1].code == "print(1)"
    assert gen("plain-json") == "\nwhole"
    with pytest.raises(ModelError, match="not valid JSON"):
        asyncio.run(OpenAIModel(srv.url, "bad-arguments").agenerate([UserMessage(content="x")]))


_SLOW_SERVER = textwrap.dedent(
    """
    import sys, time
    from glm_agent.chatglm3 import ChatGLM3Tokenizer
    from glm_agent.models import ScriptedModel
    from glm_agent.server import serve

    class Slow(ScriptedModel):
        def _chunks(self, reply):
            for piece in super()._chunks(reply):
                time.sleep(0.05)
                yield piece

    serve(Slow(["\\n" + "x" * 2000], chunk_size=1), ChatGLM3Tokenizer.from_pretrained(sys.argv[1]),
          port=int(sys.argv[2]), log_level="warning")
    """
)


@needs_shared
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.slow
def test_server_killed_mid_stream_raises_a_clear_error(tmp_path, mode):
    script = tmp_path / "slow_server.py"
    script.write_text(_SLOW_SERVER, encoding="utf-8")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(SHARED / "tokenizer.model"), str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        model = OpenAIModel(f"http://127.0.0.1:{port}", "scripted", max_retries=30, backoff=0.2, max_backoff=0.2)
        got: list[str] = []

        def kill_after_first_pieces() -> None:
            if len(got) == 3:
                os.killpg(proc.pid, signal.SIGKILL)

        with pytest.raises(ModelError, match="mid-stream|before the reply was complete"):
            if mode == "sync":
                for piece in model.stream([UserMessage(content="x")]):
                    got.append(piece)
                    kill_after_first_pieces()
            else:

                async def consume():
                    async for piece in model.astream([UserMessage(content="x")]):
                        got.append(piece)
                        kill_after_first_pieces()

                asyncio.run(consume())
        assert 3 <= len(got) < 2000
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stderr.close()


# -- the retry decision both clients use: a pure function of (attempt, response or error) -----------
def _decide(attempt, outcome, max_retries=2):
    from glm_agent.models.openai import retry_decision

    return retry_decision(attempt, outcome, url="http://h/v1/x", max_retries=max_retries, backoff=0.5, max_backoff=3)


def _response(status, body=b'{"error": {"message": "busy"}}', **headers):
    import httpx

    return httpx.Response(status, content=body, headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_retry_decision_backs_off_exponentially_on_429_and_5xx_up_to_the_cap(status):
    assert [_decide(a, _response(status), max_retries=9) for a in range(5)] == [0.5, 1.0, 2.0, 3, 3]
    assert _decide(0, _response(status, **{"retry-after": "7"})) == 7.0  # the server's word wins
    assert _decide(0, _response(status, **{"retry-after": "3600"})) == 60.0  # but not for an hour
    assert _decide(1, _response(status, **{"retry-after": "soon"})) == 1.0  # unreadable: our backoff
    last = _decide(2, _response(status))
    assert isinstance(last, ModelError) and "busy" in str(last) and str(status) in str(last)


@pytest.mark.parametrize(
    "status, words", [(400, "busy"), (401, "check api_key"), (404, "check base_url"), (422, "busy")]
)
def test_retry_decision_never_retries_other_4xx(status, words):
    error = _decide(0, _response(status))
    assert isinstance(error, ModelError) and words in str(error)
    context = _decide(0, _response(400, b'{"error": {"code": "context_length_exceeded", "message": "too long"}}'))
    assert isinstance(context, ContextLengthError)
    html = _decide(0, _response(403, b"<html>nope</html>"))
    assert isinstance(html, ModelError) and "nope" in str(html)


def test_retry_decision_on_transport_errors():
    import httpx

    refused = httpx.ConnectError("connection refused")
    assert _decide(0, refused) == 0.5 and _decide(1, refused) == 1.0
    gave_up = _decide(2, refused)
    assert isinstance(gave_up, ModelError) and "after 3 tries" in str(gave_up) and gave_up.__cause__ is refused
    slow = httpx.ReadTimeout("read timed out")
    timeout = _decide(0, slow)  # a read timeout is not retried: the server may still be generating
    assert isinstance(timeout, ModelError) and "raise timeout=" in str(timeout) and timeout.__cause__ is slow
