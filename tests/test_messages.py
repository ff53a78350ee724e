from __future__ import annotations

import json

import pytest

from glm_agent.messages import (
    AssistantMessage,
    ObservationMessage,
    SystemMessage,
    UserMessage,
    dumps_jsonl,
    load_jsonl,
    loads_jsonl,
    save_jsonl,
    to_dict,
    to_message,
)
from tests._data import GOLDEN, needs_shared

CONVERSATION = [
    {
        "role": "system",
        "content": "Answer ...",
        "tools": [
            {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}, "required": []}}
        ],
    },
    {"role": "user", "content": "天气 <|user|> \n"},
    {"role": "assistant", "metadata": "", "content": "好的"},
    {"role": "assistant", "metadata": "f", "content": "```python\ntool_call()\n```"},
    {"role": "observation", "content": '{"t": 1}'},
    {"role": "assistant", "metadata": "", "content": "done"},
]


def test_dicts_become_typed_messages_and_back():
    msgs = [to_message(d) for d in CONVERSATION]
    assert [type(m) for m in msgs] == [
        SystemMessage,
        UserMessage,
        AssistantMessage,
        AssistantMessage,
        ObservationMessage,
        AssistantMessage,
    ]
    assert msgs[3].is_call and not msgs[2].is_call
    assert [to_dict(m) for m in msgs] == CONVERSATION


def test_official_shape_variants_are_accepted():
    # the official demos write metadata="" on user turns and omit it on assistants
    assert to_message({"role": "user", "content": "x", "metadata": ""}) == UserMessage(content="x")
    assert to_dict({"role": "assistant", "content": "x"}) == {"role": "assistant", "metadata": "", "content": "x"}
    assert "tools" not in to_dict({"role": "system", "content": "s"})


@pytest.mark.parametrize(
    "bad",
    [
        {"role": "robot", "content": "x"},
        {"role": "user"},
        {"role": "user", "content": 3},
        {"role": "user", "content": "x", "tools": []},
        "text",
    ],
)
def test_invalid_messages_are_clear_errors(bad):
    with pytest.raises((ValueError, TypeError)):
        to_message(bad)


def test_jsonl_round_trip_is_exact(tmp_path):
    path = save_jsonl(CONVERSATION, tmp_path / "c.jsonl")
    text = path.read_text(encoding="utf-8")
    assert "天气" in text  # UTF-8 kept, not \\u escapes
    assert [to_dict(m) for m in load_jsonl(path)] == CONVERSATION
    assert dumps_jsonl(load_jsonl(path)) == text


def test_jsonl_errors_name_the_line(tmp_path):
    with pytest.raises(ValueError, match="line 2"):
        loads_jsonl('{"role": "user", "content": "a"}\n{not json}\n')
    with pytest.raises(ValueError, match="line 1"):
        loads_jsonl('{"role": "nobody", "content": "a"}\n')
    with pytest.raises(FileNotFoundError, match="no conversation file"):
        load_jsonl(tmp_path / "missing.jsonl")


@needs_shared
def test_every_golden_conversation_round_trips():
    for case in json.loads((GOLDEN / "tokens.json").read_text(encoding="utf-8")):
        msgs = [to_message(m) for m in case["messages"]]
        assert loads_jsonl(dumps_jsonl(msgs)) == msgs


def test_every_role_may_carry_metadata_and_it_round_trips():
    rows = [
        {"role": "system", "metadata": "s", "content": "sys"},
        {"role": "user", "metadata": "m", "content": "hi"},
        {"role": "observation", "metadata": "get_weather", "content": "21"},
    ]
    msgs = [to_message(r) for r in rows]
    assert msgs[1] == UserMessage(metadata="m", content="hi") and msgs[0].metadata == "s"
    assert [to_dict(m) for m in msgs] == rows
    assert loads_jsonl(dumps_jsonl(msgs)) == msgs
    # unset metadata is not written for non-assistant roles (the official shape), None reads as ""
    assert to_dict(UserMessage(content="x")) == {"role": "user", "content": "x"}
    assert to_message({"role": "observation", "content": "x", "metadata": None}) == ObservationMessage(content="x")
