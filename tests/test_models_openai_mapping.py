"""The OpenAI ↔ ChatGLM3 mapping, SSE reading and stop-string scanning (pure functions, no HTTP)."""

from __future__ import annotations

import json
import keyword

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from glm_agent.chatglm3 import TOOLS_SYSTEM, parse_reply, parse_tool_call
from glm_agent.chatglm3.openai_format import (
    FormatError,
    call_block,
    chatglm3_to_openai,
    chatglm3_tools,
    openai_to_chatglm3,
    python_literal,
    raw_reply,
    resolve_tool_choice,
)
from glm_agent.errors import ContextLengthError, ModelError
from glm_agent.messages import AssistantMessage, ObservationMessage, SystemMessage, UserMessage
from glm_agent.models._openai_stream import ChatAssembler, SSEDecoder
from glm_agent.server._stream import StopScanner

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object", "properties": {}}},
}


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True), json_values, max_size=4))
def test_json_arguments_render_as_literals_the_parser_reads_back(arguments):
    assume(not any(keyword.iskeyword(k) for k in arguments))
    block = call_block("f", arguments)
    assert parse_tool_call("f", block) == arguments


def test_literal_rendering():
    assert python_literal({"a": [True, None, 1.5, "it's"]}) == "{'a': [True, None, 1.5, \"it's\"]}"
    assert call_block("interpreter", {"code": "print(1)"}) == "```python\nprint(1)\n```"
    with pytest.raises(FormatError, match="not a Python identifier"):
        call_block("f", {"my-key": 1})
    for bad in ("None", "class", "as"):
        with pytest.raises(FormatError, match="not a Python identifier"):
            call_block("f", {bad: 1})
    assert parse_tool_call("f", call_block("f", {"md": "```python\nx\n```"})) == {"md": "```python\nx\n```"}
    with pytest.raises(FormatError, match="finite"):
        python_literal(float("nan"))


def test_request_messages_map_to_chatglm3():
    tools = chatglm3_tools([WEATHER])
    msgs = openai_to_chatglm3(
        [
            {"role": "user", "content": [{"type": "text", "text": "天气"}, {"type": "text", "text": "？"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "北京"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "a", "content": "晴"},
        ],
        tools,
    )
    assert msgs == [
        SystemMessage(
            content=TOOLS_SYSTEM,
            tools=[{"name": "get_weather", "description": "d", "parameters": {"type": "object", "properties": {}}}],
        ),
        UserMessage(content="天气？"),
        AssistantMessage(metadata="get_weather", content="```python\ntool_call(city='北京')\n```"),
        ObservationMessage(content="晴"),
    ]
    with pytest.raises(FormatError, match="role is 'robot'"):
        openai_to_chatglm3([{"role": "robot", "content": "x"}], None)
    with pytest.raises(FormatError, match="not valid JSON"):
        openai_to_chatglm3(
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}], None
        )
    with pytest.raises(FormatError, match="named twice"):
        chatglm3_tools([WEATHER, WEATHER])
    with pytest.raises(FormatError, match='"type": "function"'):
        chatglm3_tools([{"name": "bare"}])


def test_tool_choice_resolution():
    tools = chatglm3_tools([WEATHER])
    assert resolve_tool_choice(tools, None).calls_enabled and resolve_tool_choice(tools, "auto").tools == tools
    none = resolve_tool_choice(tools, "none")
    assert none.tools is None and not none.calls_enabled
    assert resolve_tool_choice(tools, "required").required == "*"
    assert (
        resolve_tool_choice(tools, {"type": "function", "function": {"name": "get_weather"}}).required == "get_weather"
    )
    with pytest.raises(FormatError, match="needs tools"):
        resolve_tool_choice([], "required")
    with pytest.raises(FormatError, match="tool_choice must be"):
        resolve_tool_choice(tools, "sometimes")


def test_agent_history_maps_to_openai_and_back():
    history = [
        SystemMessage(
            content=TOOLS_SYSTEM,
            tools=[{"name": "get_weather", "description": "d", "parameters": {"type": "object", "properties": {}}}],
        ),
        UserMessage(content="q"),
        AssistantMessage(metadata="", content="thinking"),
        AssistantMessage(metadata="get_weather", content="```python\ntool_call(city='A')\n```"),
        ObservationMessage(content="sunny"),
        AssistantMessage(metadata="interpreter", content="```python\nprint(2)\n```"),
        ObservationMessage(content="2"),
        AssistantMessage(
            metadata="get_weather", content="```python\ntool_call(city=A)\n```"
        ),  # malformed: kept as text
        ObservationMessage(content="could not read the call"),
        AssistantMessage(metadata="", content="done"),
    ]
    messages, tools = chatglm3_to_openai(history)
    assert tools == [WEATHER]
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    assert messages[2]["content"] == "thinking" and messages[2]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "A"}',
    }
    assert messages[3]["tool_call_id"] == messages[2]["tool_calls"][0]["id"]
    assert json.loads(messages[4]["tool_calls"][0]["function"]["arguments"]) == {"code": "print(2)"}
    assert messages[6]["content"].startswith("get_weather\n") and "tool_calls" not in messages[6]
    assert openai_to_chatglm3(messages, chatglm3_tools(tools))[:7] == history[:7]


def test_raw_reply_from_an_openai_message_parses_back():
    raw = raw_reply("Sure.", [{"function": {"name": "get_weather", "arguments": '{"city": "Paris", "n": [1, 2]}'}}])
    reply = parse_reply(raw)
    assert reply.text == "Sure." and reply.calls[0].arguments == {"city": "Paris", "n": [1, 2]}


def test_sse_decoder_and_errors():
    dec = SSEDecoder("srv")
    assert dec.feed(": comment") is None and dec.feed('data: {"a":') is None and dec.feed("data: 1}") is None
    assert dec.feed("") == {"a": 1}
    dec.feed("data: [DONE]")
    assert dec.feed("") is SSEDecoder.DONE and dec.done
    dec.feed('data: {"error": {"message": "too long", "code": "context_length_exceeded"}}')
    with pytest.raises(ContextLengthError, match="too long"):
        dec.feed("")
    dec.feed('data: {"error": {"message": "boom"}}')
    with pytest.raises(ModelError, match="boom"):
        dec.feed("")
    asm = ChatAssembler("srv")
    with pytest.raises(ModelError, match="without a function name"):
        asm.feed({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]})
        asm.finish(True)


def _scan(text: str, cuts: list[int], stops: list[str], remove: list[str]) -> tuple[str, bool]:
    scanner = StopScanner(stops, remove)
    out, pos = [], 0
    for n in cuts:
        out.append(scanner.feed(text[pos : pos + n]))
        pos += n
    out.append(scanner.feed(text[pos:]))
    out.append(scanner.flush())
    return "".join(out), scanner.stopped


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab<|>", max_size=30), st.lists(st.integers(0, 5), max_size=30))
def test_stop_scanner_does_not_depend_on_how_the_text_is_cut(text, cuts):
    stops, remove = ["ab|", "<|a", "b"], ["b>", "<|"]
    assert _scan(text, cuts, stops, remove) == _scan(text, [], stops, remove)
    # without removals the result is the text up to the first stop string
    first = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    assert _scan(text, cuts, stops, []) == ((text[:first], True) if first >= 0 else (text, False))


def test_stop_scanner_examples():
    assert _scan("\n 你好<|assistant|>x<|user|>y", [3, 1, 4], ["<|user|>"], ["<|assistant|>"]) == ("\n 你好x", True)
    assert _scan("one two three", [2, 2, 2], ["three", "thr"], []) == ("one two ", True)
    assert _scan("abc", [], [], []) == ("abc", False)
