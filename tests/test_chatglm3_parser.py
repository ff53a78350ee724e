from __future__ import annotations

import ast
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glm_agent.chatglm3 import (
    CallFinished,
    CallNamed,
    ReplyStreamParser,
    ReplyText,
    Segment,
    parse_reply,
)
from glm_agent.errors import ToolCallParseError
from glm_agent.messages import CodeCall, ToolCall
from tests._data import GOLDEN, load_golden

RESPONSES = load_golden("responses.json") if (GOLDEN / "responses.json").is_file() else []


def _official_extract_code(text: str) -> str:
    # what the official demo does with an interpreter segment (re.findall(...)[-1])
    import re

    return re.findall(r"```([^\n]*)\n(.*?)```", text, re.DOTALL)[-1][1]


@pytest.mark.parametrize("case", RESPONSES, ids=lambda c: c["id"])
def test_parse_agrees_with_official_process_response(case):
    reply = parse_reply(case["output"])
    official = case["content"]
    if isinstance(official, str):
        assert reply.text == official and reply.calls == []
    elif "parameters" in official:
        assert reply.calls[-1] == ToolCall(name=official["name"], arguments=official["parameters"])
    else:
        assert official["name"] == "interpreter"
        assert reply.calls[-1] == CodeCall(code=_official_extract_code(official["content"]).strip("\n"))
    appended = case["new_history"][len(case["history"]) :]
    assert reply.segments == [Segment(m["metadata"].strip(), m["content"].strip()) for m in appended]


@pytest.mark.parametrize("case", RESPONSES, ids=lambda c: c["id"])
def test_reencoding_a_reply_continues_the_prompt(tokenizer, case):
    history = case["history"]
    prompt = tokenizer.apply_chat_template(history)
    reply = parse_reply(case["output"])
    full = tokenizer.apply_chat_template(history + [m.to_dict() for m in reply.messages()], add_generation_prompt=False)
    assert full[: len(prompt)] == prompt
    continuation = full[len(prompt) :]
    again = parse_reply(tokenizer.decode(continuation))
    assert again.segments == reply.segments and again.calls == reply.calls and again.text == reply.text


def test_model_token_stream_round_trips_through_history(tokenizer):
    # the ids a model writes for "thought, then call" decode, parse, and re-encode to the same ids
    segments = [("", "好的，让我查一下。"), ("get_weather", "```python\ntool_call(city='北京')\n```")]
    generated: list[int] = []
    for i, (meta, content) in enumerate(segments):
        if i:
            generated.append(tokenizer.assistant_id)
        generated += tokenizer.encode(meta + "\n") + tokenizer.encode(content)
    text = tokenizer.decode(generated)
    assert text.startswith("\n 好的")  # the answer's dummy-prefix space, as FORMAT.md says
    reply = parse_reply(text)
    history = [{"role": "user", "content": "北京天气"}]
    prompt = tokenizer.apply_chat_template(history)
    full = tokenizer.apply_chat_template(history + reply.messages(), add_generation_prompt=False)
    assert full == prompt + generated
    assert reply.calls == [ToolCall(name="get_weather", arguments={"city": "北京"})]
    assert reply.text == "好的，让我查一下。"


@pytest.mark.parametrize(
    "text, arguments",
    [
        ("f\n ```python\ntool_call(a='x', b=\"y\")\n```", {"a": "x", "b": "y"}),
        (
            "f\n```\ntool_call(n=-3, x=+2.5, t=(1, 2), s={1}, e=[], d={'k': {'n': [None, True, False]}})\n```  \n",
            {"n": -3, "x": 2.5, "t": [1, 2], "s": [1], "e": [], "d": {"k": {"n": [None, True, False]}}},
        ),
        ("  f  \n  ```python\n\ntool_call(\n    city='北京',\n)\n\n```", {"city": "北京"}),
        ("f\n```py\nf(q='call by its own name')\n```", {"q": "call by its own name"}),
        ("f\n```python\ntool_call()\n```", {}),
    ],
)
def test_tolerates_real_model_formatting(text, arguments):
    assert parse_reply(text).calls == [ToolCall(name="f", arguments=arguments)]


@pytest.mark.parametrize(
    "body, words",
    [
        ("tool_call(city=beijing)", "name `beijing`"),
        ("tool_call(ok=true)", "write True"),
        ("tool_call(x=__import__('os').system('touch PWNED'))", "only literal values"),
        ("tool_call(x=os.environ)", "os.environ"),
        ("tool_call(x=1+2)", "only literal values"),
        ("tool_call(x=f'{a}')", "only literal values"),
        ("tool_call('Beijing')", "positional arguments"),
        ("tool_call(**{'a': 1})", "unpacking"),
        ("tool_call(a=1)\ntool_call(a=2)", "2 statements"),
        ("get_weather.run(a=1)", "call tool_call"),
        ("tool_call(a=1", "not valid call syntax"),
        ("x = 1", "not a call"),
        ("tool_call(a=b'bytes')", "bytes values"),
        ("tool_call(a={**x})", "** inside a dict"),
        ("tool_call(a={[1]: 2})", "dict keys must be strings or numbers"),
    ],
)
def test_malformed_calls_raise_a_message_the_model_can_act_on(body, words):
    with pytest.raises(ToolCallParseError) as info:
        parse_reply(f"get_weather\n ```python\n{body}\n```")
    assert words in str(info.value)
    assert "tool_call(" in str(info.value)  # shows the expected form
    assert info.value.name == "get_weather"
    assert info.value.reply is not None and info.value.reply.segments[0].metadata == "get_weather"


@pytest.mark.parametrize(
    "text, words",
    [
        ("get_weather\ntool_call(city='x')", "not inside a ``` fenced block"),
        ("get_weather\n```python\ntool_call(city='x')", "fence is not closed"),
        ("get_weather\n```python\ntool_call(a=1)\n```\n```python\ntool_call(a=2)\n```", "2 fenced blocks"),
        ("get_weather\n```python\n\n```", "empty"),
    ],
)
def test_fence_problems(text, words):
    with pytest.raises(ToolCallParseError, match=words):
        parse_reply(text)


def test_errors_can_be_collected_instead_of_raised():
    reply = parse_reply(
        "ok<|assistant|>f\n```\ntool_call(a=b)\n```<|assistant|>g\n```\ntool_call(a=1)\n```", raise_errors=False
    )
    assert reply.text == "ok"
    assert reply.calls == [ToolCall(name="g", arguments={"a": 1})]
    assert len(reply.errors) == 1 and reply.errors[0].name == "f"
    assert not reply.is_final


def test_code_calls():
    assert parse_reply("interpreter\n ```python\nprint(1)\n```").calls == [CodeCall(code="print(1)")]
    # cut short by max_new_tokens: the open block is still code
    assert parse_reply("interpreter\n```python\nx = 1\nprint(x)").calls == [CodeCall(code="x = 1\nprint(x)")]
    assert parse_reply("interpreter\nprint(2)").calls == [CodeCall(code="print(2)")]
    with pytest.raises(ToolCallParseError, match="no code"):
        parse_reply("interpreter\n```python\n```")


def test_answers_and_segments():
    assert parse_reply("\n 你好").text == "你好"
    assert parse_reply("\n 你好").segments == [Segment("", "你好")]
    assert parse_reply("no newline at all").text == "no newline at all"
    # a first line that cannot be a tool name is answer text, not a call
    reply = parse_reply("Sure, here it is:\nline two")
    assert reply.calls == [] and reply.text == "Sure, here it is:\nline two"
    two = parse_reply("\n first<|assistant|>\n second")
    assert two.text == "first\nsecond" and len(two.segments) == 2
    calls_only = parse_reply("f\n```\ntool_call()\n```")
    assert calls_only.text is None and calls_only.messages()[0].metadata == "f"


def test_nothing_in_a_reply_is_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payloads = [
        "tool_call(x=__import__('os').system('touch PWNED'))",
        "__import__('os').system('touch PWNED')",
        "tool_call(x=open('PWNED', 'w'))",
        "tool_call(x=[c for c in ().__class__.__base__.__subclasses__()])",
        "tool_call(x=(lambda: open('PWNED','w'))())",
    ]
    for body in payloads:
        with pytest.raises(ToolCallParseError):
            parse_reply(f"f\n```python\n{body}\n```")
    assert not os.path.exists("PWNED")


_pieces = st.sampled_from(
    [
        "<|assistant|>",
        "\n",
        " ",
        "```",
        "```python\n",
        "tool_call(",
        ")",
        "=",
        "'",
        '"',
        "x",
        "1",
        "-",
        "[",
        "]",
        "{",
        "}",
        ":",
        ",",
        "interpreter",
        "get_weather",
        "__import__('os').system('touch PWNED')",
        "None",
        "True",
        "你好",
        "\\",
        "#",
        "**",
        "((",
    ]
)
_adversarial = st.lists(st.one_of(_pieces, st.text(max_size=8)), max_size=40).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200), _adversarial))
def test_parser_returns_or_raises_parse_error_only(tmp_path_factory, text):
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.getbasetemp())
    try:
        try:
            reply = parse_reply(text)
        except ToolCallParseError as exc:
            assert str(exc)
        else:
            assert all(isinstance(c, (ToolCall, CodeCall)) for c in reply.calls)
        assert not os.path.exists("PWNED")
    finally:
        os.chdir(cwd)


def _deep(n: int) -> str:
    return "f\n```\ntool_call(a=" + "[" * n + "]" * n + ")\n```"


def test_pathological_nesting_is_a_parse_error_not_a_crash():
    for n in (70, 300, 5000):
        with pytest.raises(ToolCallParseError):
            parse_reply(_deep(n))


# -- streaming ---------------------------------------------------------------------------------


def _stream(text: str, rng: random.Random) -> tuple[list, object]:
    parser = ReplyStreamParser()
    events, i = [], 0
    while i < len(text):
        n = rng.randint(1, 7)
        events += parser.feed(text[i : i + n])
        i += n
    events += parser.close()
    return events, parser.reply


STREAM_CASES = [c["output"] for c in RESPONSES] + [
    "\n 好的，让我查一下。<|assistant|>get_weather\n ```python\ntool_call(city='北京')\n```",
    "\n first<|assistant|>\n second <|assistant|>interpreter\n```python\nprint('<|assist')\n```",
    "f\n```\ntool_call(a=b)\n```",
    "Sure, here:\n<not a call>",
    "  \n   <|assistant|>\n x",
    "get_weather",
    "",
]


@pytest.mark.parametrize("text", STREAM_CASES)
def test_streaming_equals_parse_reply_for_any_chunking(text):
    expected = parse_reply(text, raise_errors=False)
    for seed in range(25):
        events, reply = _stream(text, random.Random(seed))
        assert reply == expected
        streamed = "".join(e.text for e in events if isinstance(e, ReplyText))
        assert streamed == (expected.text or "")
        finished = [e for e in events if isinstance(e, CallFinished)]
        assert [e.call for e in finished if e.call] == expected.calls
        assert [str(e.error) for e in finished if e.error] == [str(e) for e in expected.errors]
        started = [e.name for e in events if isinstance(e, CallNamed)]
        assert started == [e.name for e in finished]


def test_call_is_announced_as_soon_as_its_name_line_is_complete():
    parser = ReplyStreamParser()
    assert parser.feed("get_wea") == []
    assert parser.feed("ther\n ```py") == [CallNamed(name="get_weather", index=0)]
    assert parser.feed("thon\ntool_call(city='x')\n") == []  # call code never shows as text
    events = parser.feed("```") + parser.close()
    assert events == [
        CallFinished(name="get_weather", index=0, call=ToolCall(name="get_weather", arguments={"city": "x"}))
    ]


def test_answer_text_streams_before_the_reply_ends():
    parser = ReplyStreamParser()
    assert parser.feed("\n 你") == [ReplyText("你")]
    assert parser.feed("好  ") == [ReplyText("好")]  # trailing spaces held back
    assert parser.feed(" 世界<|assi") == [ReplyText("   世界")]
    assert parser.feed("stant|>interpreter\n") == [CallNamed(name="interpreter", index=0)]


@settings(max_examples=200, deadline=None)
@given(text=_adversarial, seed=st.integers(0, 2**16))
def test_streaming_property(text, seed):
    expected = parse_reply(text, raise_errors=False)
    events, reply = _stream(text, random.Random(seed))
    assert reply == expected
    assert "".join(e.text for e in events if isinstance(e, ReplyText)) == (expected.text or "")


def test_no_eval_in_the_parser_source():
    import glm_agent.chatglm3.parser as mod

    tree = ast.parse(Path(mod.__file__).read_text(encoding="utf-8"))
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__"}
