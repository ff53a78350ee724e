from __future__ import annotations

import asyncio
import json

import pytest

from glm_agent.errors import ModelError
from glm_agent.messages import UserMessage
from glm_agent.models import ChatModel, GenerationParams, ScriptedModel

REPLY = "get_weather\n ```python\ntool_call(city='Paris')\n```"


def test_replays_in_order_in_chunks_and_records_prompts():
    model = ScriptedModel([REPLY, "\n done"], chunk_size=4)
    assert isinstance(model, ChatModel)
    chunks = list(model.stream([{"role": "user", "content": "hi"}]))
    assert "".join(chunks) == REPLY and all(len(c) <= 4 for c in chunks) and len(chunks) > 1
    assert model.generate([UserMessage(content="again")]) == "\n done"
    assert model.prompts[0] == [UserMessage(content="hi")]
    assert model.remaining == 0
    with pytest.raises(ModelError, match="ran out of replies: all 2 were used"):
        model.generate([])


def test_reply_function_and_async_stream():
    model = ScriptedModel(lambda msgs: f"\n you said {msgs[-1].content}")

    async def go():
        return [d async for d in model.astream([{"role": "user", "content": "x"}])]

    assert "".join(asyncio.run(go())) == "\n you said x"
    assert asyncio.run(model.agenerate([{"role": "user", "content": "y"}])) == "\n you said y"


def test_raw_token_prompts():
    model = ScriptedModel(["\n ok"])
    assert "".join(model.stream_ids([64790, 64792])) == "\n ok"
    assert model.prompt_ids == [[64790, 64792]]


def test_from_file_and_its_errors(tmp_path):
    good = tmp_path / "replies.json"
    good.write_text(json.dumps([REPLY]), encoding="utf-8")
    model = ScriptedModel.from_file(good)
    assert model.name == "scripted:replies.json" and "scripted" in repr(model)
    with pytest.raises(ModelError, match="not found"):
        ScriptedModel.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(ModelError, match="not JSON"):
        ScriptedModel.from_file(tmp_path / "bad.json")
    (tmp_path / "shape.json").write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(ModelError, match="JSON list of raw reply strings"):
        ScriptedModel.from_file(tmp_path / "shape.json")
    with pytest.raises(TypeError):
        ScriptedModel([1])  # type: ignore[list-item]


def test_generation_params():
    p = GenerationParams.of({"temperature": 0}, max_new_tokens=8, top_p=None)
    assert p.temperature == 0 and p.max_new_tokens == 8 and p.top_p == 0.8
    with pytest.raises(ValueError):
        GenerationParams(max_new_tokens=0)
    with pytest.raises(ValueError):
        GenerationParams(bogus=1)  # type: ignore[call-arg]
