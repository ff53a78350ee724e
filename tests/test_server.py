"""The OpenAI-compatible server, driven by the official ``openai`` client over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from glm_agent.chatglm3 import parse_reply
from glm_agent.messages import AssistantMessage, ObservationMessage, SystemMessage, UserMessage
from glm_agent.models import ScriptedModel
from glm_agent.server import BackgroundServer, create_app
from tests._data import needs_shared
from tests._helpers import wait_until

pytestmark = needs_shared

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
CALL = "get_weather\n ```python\ntool_call(city='北京', days=3, metric=True, note=None)\n```"
THOUGHT_AND_CALL = "\n 我来查一下。<|assistant|>" + CALL


class SlowModel(ScriptedModel):
    """Replays replies slowly (one chunk every ``delay`` s) and records when its generator is closed."""

    def __init__(self, replies, delay: float = 0.05, **kw) -> None:
        super().__init__(replies, chunk_size=1, **kw)
        self.delay = delay
        self.closed = threading.Event()
        self.chunks_sent = 0

    def _chunks(self, reply):
        try:
            for piece in super()._chunks(reply):
                time.sleep(self.delay)
                self.chunks_sent += 1
                yield piece
        finally:
            self.closed.set()


@pytest.fixture
def serve(tokenizer):
    """Start servers for a test (each on an ephemeral port); all are stopped afterwards."""
    servers = []

    def start(model, **options):
        srv = BackgroundServer(create_app(model, tokenizer, **options)).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def client(srv, key: str = "unused", retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=retries, timeout=30)


def test_plain_chat_with_usage(serve, tokenizer):
    model = ScriptedModel(["\n 你好！我是 ChatGLM3。"])
    srv = serve(model)
    c = client(srv)
    assert [m.id for m in c.models.list()] == ["scripted"]
    r = c.chat.completions.create(
        model="scripted", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"}]
    )
    msg = r.choices[0].message
    assert msg.content == "你好！我是 ChatGLM3。" and msg.tool_calls is None and r.choices[0].finish_reason == "stop"
    expected_prompt = tokenizer.apply_chat_template([SystemMessage(content="Be brief."), UserMessage(content="你好")])
    assert r.usage.prompt_tokens == len(expected_prompt)
    assert r.usage.completion_tokens == len(tokenizer.encode("\n 你好！我是 ChatGLM3。"))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert model.prompts[0] == [SystemMessage(content="Be brief."), UserMessage(content="你好")]


def test_tool_calls_come_back_with_json_arguments(serve):
    model = ScriptedModel([THOUGHT_AND_CALL])
    srv = serve(model)
    r = client(srv).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "北京天气"}], tools=[WEATHER_TOOL]
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "我来查一下。"
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "北京", "days": 3, "metric": True, "note": None}
    system = model.prompts[0][0]
    assert isinstance(system, SystemMessage) and system.tools[0]["name"] == "get_weather"
    assert set(system.tools[0]) == {"name", "description", "parameters"}


def test_streamed_tool_call_is_reassembled_by_the_client(serve):
    model = ScriptedModel([THOUGHT_AND_CALL, THOUGHT_AND_CALL])
    srv = serve(model)
    c = client(srv)
    chunks = list(
        c.chat.completions.create(
            model="scripted",
            messages=[{"role": "user", "content": "天气"}],
            tools=[WEATHER_TOOL],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "我来查一下。"
    call_deltas = [d for ch in chunks if ch.choices for d in ch.choices[0].delta.tool_calls or []]
    assert (
        call_deltas[0].id and call_deltas[0].function.name == "get_weather" and call_deltas[0].function.arguments == ""
    )
    assert call_deltas[1].function.name is None and json.loads(call_deltas[1].function.arguments)["city"] == "北京"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == [
        "tool_calls"
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens > 0
    assert [ch for ch in chunks if ch.usage] == [chunks[-1]]  # usage once, as OpenAI sends it (not summed twice)
    # the official helper reassembles the stream into a message
    with c.chat.completions.stream(
        model="scripted", messages=[{"role": "user", "content": "天气"}], tools=[WEATHER_TOOL]
    ) as s:
        final = s.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["days"] == 3
    assert final.choices[0].message.content == "我来查一下。"


def test_full_loop_sends_tool_results_back(serve):
    model = ScriptedModel([CALL, "\n 北京晴，25°C。"])
    srv = serve(model)
    c = client(srv)
    messages = [{"role": "user", "content": "北京天气？"}]
    first = c.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER_TOOL])
    call = first.choices[0].message.tool_calls[0]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append(
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 25, "sky": "晴"}, ensure_ascii=False)}
    )
    second = c.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "北京晴，25°C。"
    history = model.prompts[1]
    assert history[2] == AssistantMessage(
        metadata="get_weather", content="```python\ntool_call(city='北京', days=3, metric=True, note=None)\n```"
    )
    assert history[3] == ObservationMessage(content='{"temp": 25, "sky": "晴"}')
    # the call segment re-parses to the same call, so the model sees what it wrote
    assert (
        parse_reply(CALL).calls[0].arguments
        == parse_reply(f"{history[2].metadata}\n{history[2].content}").calls[0].arguments
    )


def test_tool_choice_semantics(serve):
    model = ScriptedModel([CALL, CALL, CALL, "\n no call"])
    srv = serve(model)
    c = client(srv)
    other = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
    # none: no tools in the prompt, the call comes back as text
    r = c.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content.startswith(
        "get_weather\n```python\ntool_call("
    )
    assert model.prompts[0] == [UserMessage(content="x")]
    # a named function: only that tool is offered
    r = c.chat.completions.create(
        model="scripted",
        messages=[{"role": "user", "content": "x"}],
        tools=[WEATHER_TOOL, other],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert [t["name"] for t in model.prompts[1][0].tools] == ["get_weather"]
    # required: every tool offered
    c.chat.completions.create(
        model="scripted",
        messages=[{"role": "user", "content": "x"}],
        tools=[WEATHER_TOOL, other],
        tool_choice="required",
    )
    assert [t["name"] for t in model.prompts[2][0].tools] == ["get_weather", "get_time"]
    # required cannot force a call (no constrained decoding): the text comes back as is
    r = c.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL], tool_choice="required"
    )
    assert r.choices[0].message.content == "no call" and r.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError, match="not among the request's tools"):
        c.chat.completions.create(
            model="scripted",
            messages=[{"role": "user", "content": "x"}],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )


def test_malformed_call_and_code_call_come_back_as_text(serve):
    bad = "get_weather\n ```python\ntool_call(city=os.system('ls'))\n```"
    code = "interpreter\n ```python\nprint(1 + 1)\n```"
    model = ScriptedModel([bad, code, code])
    srv = serve(model)
    c = client(srv)
    r = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL])
    assert r.choices[0].message.tool_calls is None and "os.system('ls')" in r.choices[0].message.content
    r = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content == "interpreter\n```python\nprint(1 + 1)\n```"
    interpreter = {
        "type": "function",
        "function": {
            "name": "interpreter",
            "parameters": {"type": "object", "properties": {"code": {"type": "string"}}},
        },
    }
    r = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}], tools=[interpreter])
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"code": "print(1 + 1)"}


def test_stop_strings_and_server_tools(serve, tokenizer):
    model = ScriptedModel(["\n one two three", "\n one two three"])
    srv = serve(model, tools=[WEATHER_TOOL])
    c = client(srv)
    r = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}], stop=["three"])
    assert r.choices[0].message.content == "one two" and r.choices[0].finish_reason == "stop"
    assert not any(getattr(m, "tools", None) for m in model.prompts[0])  # the server's tools are never offered on /v1
    chunks = list(
        c.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "x"}], stop="two", stream=True
        )
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "one"


def test_completions_with_token_ids_and_text(serve, tokenizer):
    model = ScriptedModel(["\n 你好<|assistant|>more", "\n 你好<|user|>ignored", " world", "get_weather\n x"])
    srv = serve(model)
    c = client(srv)
    ids = tokenizer.apply_chat_template([UserMessage(content="你好")])
    r = c.completions.create(model="scripted", prompt=ids, max_tokens=64, extra_body={"skip_special_tokens": False})
    assert r.choices[0].text == "\n 你好<|assistant|>more" and model.prompt_ids[0] == ids
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens > 0
    chunks = list(
        c.completions.create(
            model="scripted",
            prompt=ids,
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"stop_token_ids": list(tokenizer.stop_ids), "skip_special_tokens": False},
        )
    )
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "\n 你好"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert [ch for ch in chunks if ch.usage] == [chunks[-1]] and chunks[-1].usage.prompt_tokens == len(ids)
    r = c.completions.create(model="scripted", prompt="Hello", max_tokens=8)
    assert r.choices[0].text == " world"
    assert model.prompt_ids[2] == [tokenizer.gmask_id, tokenizer.sop_id, *tokenizer.encode("Hello")]
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        c.completions.create(model="scripted", prompt=[tokenizer.vocab_size + 5], max_tokens=8)


def test_error_shapes(serve, tokenizer):
    srv = serve(ScriptedModel(["\n ok"] * 3), api_key="s3cret", context_length=64)
    good = client(srv, key="s3cret")
    with pytest.raises(openai.AuthenticationError) as bad_key:
        client(srv, key="wrong").chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}])
    assert bad_key.value.status_code == 401 and bad_key.value.code == "invalid_api_key"
    missing = httpx.post(
        srv.url + "/v1/chat/completions", json={"model": "scripted", "messages": [{"role": "user", "content": "x"}]}
    )
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
    headers = {"Authorization": "Bearer s3cret", "Content-Type": "application/json"}
    malformed = httpx.post(
        srv.url + "/v1/chat/completions", content=b'{"model": "scripted", "messages": [', headers=headers
    )
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "invalid_json"
    invalid = httpx.post(
        srv.url + "/v1/chat/completions", json={"model": "scripted", "messages": [], "temperature": 9}, headers=headers
    )
    assert invalid.status_code == 400 and "messages" in invalid.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError) as unknown:
        good.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        good.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "很长的问题 " * 100}])
    assert too_long.value.code == "context_length_exceeded" and "context holds 64" in str(too_long.value)
    with pytest.raises(openai.BadRequestError, match="context"):
        good.completions.create(model="scripted", prompt=[tokenizer.gmask_id] * 60, max_tokens=10)
    with pytest.raises(openai.BadRequestError, match="n=1"):
        good.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}], n=2)
    with pytest.raises(openai.BadRequestError, match="only text parts"):
        good.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
        )
    assert httpx.get(srv.url + "/v1/nothing-here").status_code == 401  # with a key, nothing but /health is open
    route = httpx.get(srv.url + "/v1/nothing-here", headers=headers)
    assert route.status_code == 404 and "error" in route.json()
    assert httpx.get(srv.url + "/health").json()["status"] == "ok"  # no key needed
    assert (
        good.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}])
        .choices[0]
        .message.content
        == "ok"
    )


def test_backend_errors_become_500_or_400(serve):
    from glm_agent.errors import ContextLengthError

    def reply(messages):
        if messages[-1].content == "long":
            raise ContextLengthError("prompt of 9000 tokens does not fit 8192")
        raise RuntimeError("CUDA fell over")

    srv = serve(ScriptedModel(reply))
    c = client(srv)
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "long"}])
    assert exc.value.code == "context_length_exceeded"
    with pytest.raises(openai.InternalServerError, match="CUDA fell over"):
        c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.InternalServerError, match="CUDA fell over"):
        list(c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}], stream=True))


@pytest.mark.slow
def test_queue_full_health_while_generating_and_release(serve):
    model = SlowModel(["\n" + "x" * 40, "\n ok"], delay=0.05)
    srv = serve(model, max_concurrency=1, max_queue=0)
    c = client(srv)
    done = {}
    worker = threading.Thread(
        target=lambda: done.setdefault(
            "r", c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "a"}])
        )
    )
    worker.start()
    wait_until(lambda: httpx.get(srv.url + "/health").json()["active"] == 1, what="the first request to start")
    health = httpx.get(srv.url + "/health", timeout=2)  # answers while the backend generates
    assert health.json() == {"status": "ok", "model": "scripted", "active": 1, "waiting": 0}
    with pytest.raises(openai.RateLimitError) as full:
        c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "b"}])
    assert full.value.status_code == 429 and full.value.code == "queue_full"
    worker.join(15)
    assert done["r"].choices[0].message.content == "x" * 40
    assert (
        c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "c"}])
        .choices[0]
        .message.content
        == "ok"
    )


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_stops_generation(serve, stream):
    model = SlowModel(["\n" + "y" * 400], delay=0.02)
    srv = serve(model)
    body = {"model": "scripted", "messages": [{"role": "user", "content": "x"}], "stream": stream}
    with httpx.Client(timeout=10) as h:
        if stream:
            with h.stream("POST", srv.url + "/v1/chat/completions", json=body) as response:
                lines = response.iter_lines()
                assert next(lines).startswith("data: ")
        else:
            with pytest.raises(httpx.ReadTimeout):
                h.post(srv.url + "/v1/chat/completions", json=body, timeout=0.3)
    assert model.closed.wait(5), "the backend generator was not closed after the client left"
    assert model.chunks_sent < 200
    wait_until(lambda: not httpx.get(srv.url + "/health").json()["active"], what="the generation slot to be given back")


def test_completions_need_a_backend_that_continues_token_ids(serve):
    from glm_agent.models.base import BaseChatModel

    class ChatOnly(BaseChatModel):
        name = "chat-only"

        def stream(self, messages, **params):
            yield "\n ok"

    srv = serve(ChatOnly())
    c = client(srv)
    assert (
        c.chat.completions.create(model="chat-only", messages=[{"role": "user", "content": "x"}])
        .choices[0]
        .message.content
        == "ok"
    )
    with pytest.raises(openai.BadRequestError, match="cannot continue raw prompts"):
        c.completions.create(model="chat-only", prompt=[1, 2, 3], max_tokens=4)


def test_a_call_of_a_tool_the_request_did_not_declare_comes_back_as_text(serve):
    model = ScriptedModel(["rm_everything\n ```python\ntool_call(path='/')\n```"])
    srv = serve(model)
    r = client(srv).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL]
    )
    message = r.choices[0].message
    assert not message.tool_calls and "rm_everything" in message.content
