"""End to end: Agent(OpenAIModel) against the real server, and the server over the tiny real checkpoint."""

from __future__ import annotations

import asyncio
import json

import pytest

from glm_agent import Agent, tool
from glm_agent.chatglm3 import parse_reply
from glm_agent.messages import AssistantMessage, ObservationMessage, UserMessage
from glm_agent.models import OpenAIModel, ScriptedModel
from glm_agent.server import BackgroundServer, create_app
from tests._data import SHARED, TINY_CHECKPOINT, needs_shared

pytestmark = needs_shared

CALL = "get_weather\n ```python\ntool_call(city='北京')\n```"
ANSWER = "\n 北京今天晴，25°C。"


@tool
def get_weather(city: str) -> dict:
    """Current weather in a city.

    Args:
        city: the city name
    """
    return {"city": city, "temp": 25, "sky": "晴"}


@pytest.mark.parametrize("mode", ["chat", "completion"])
@pytest.mark.parametrize("use_async", [False, True])
def test_agent_runs_tools_through_the_server(tokenizer, mode, use_async):
    backend = ScriptedModel(["\n 我查一下。<|assistant|>" + CALL, ANSWER])
    with BackgroundServer(create_app(backend, tokenizer)) as srv:
        model = OpenAIModel(srv.url + "/v1", "scripted", mode=mode, tokenizer=tokenizer)
        agent = Agent(model, tools=[get_weather])
        result = asyncio.run(agent.arun("北京天气？")) if use_async else agent.run("北京天气？")
    assert result.stopped == "answer" and result.answer == "北京今天晴，25°C。"
    assert [c.name for c in result.calls] == ["get_weather"]
    # the second turn carried the call and its real result back to the model
    second = backend.prompts[1] if mode == "chat" else None
    if mode == "chat":
        assert second[-2] == AssistantMessage(metadata="get_weather", content="```python\ntool_call(city='北京')\n```")
        assert isinstance(second[-1], ObservationMessage) and json.loads(second[-1].content)["sky"] == "晴"
        assert second[0].tools[0]["name"] == "get_weather"
    else:  # completion mode: the server saw the exact template ids of the agent's history
        assert backend.prompt_ids[1] == tokenizer.apply_chat_template(agent.messages[:-1])


@pytest.mark.skipif(not TINY_CHECKPOINT.is_dir(), reason=f"the tiny checkpoint {TINY_CHECKPOINT} is absent")
def test_local_model_served_matches_in_process_generation():
    pytest.importorskip("torch")
    from glm_agent.models import LocalModel

    local = LocalModel.from_pretrained(TINY_CHECKPOINT, dtype="float32", device="cpu")
    messages = [UserMessage(content="你好，介绍一下北京。")]
    greedy = {"temperature": 0, "max_new_tokens": 12}
    direct = local.generate(messages, **greedy)
    with BackgroundServer(create_app(local, local.tokenizer)) as srv:
        chat = OpenAIModel(srv.url, local.name)
        by_ids = OpenAIModel(srv.url, local.name, mode="completion", tokenizer=SHARED / "tokenizer.model")
        assert by_ids.generate(messages, **greedy) == direct  # exact prompt ids, special tokens kept
        assert parse_reply(chat.generate(messages, **greedy)).text == parse_reply(direct).text
        assert by_ids.last_usage["prompt_tokens"] == len(local.tokenizer.apply_chat_template(messages))
