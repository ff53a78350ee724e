"""prompt_view: the turns ChatGLM3 reads, with token counts that add up to the real prompt."""

from __future__ import annotations

from glm_agent.chatglm3 import prompt_view
from glm_agent.messages import AssistantMessage, ObservationMessage, SystemMessage, UserMessage
from tests._data import needs_shared

CONVERSATION = [
    SystemMessage(content="Answer with tools:", tools=[{"name": "get_weather", "parameters": {}}]),
    UserMessage(content="Weather in Paris?"),
    AssistantMessage(metadata="get_weather", content="```python\ntool_call(city='Paris')\n```"),
    ObservationMessage(content='{"temperature": 21}'),
]


def test_turns_show_roles_metadata_and_observations_without_a_tokenizer():
    view = prompt_view(CONVERSATION)
    assert [t.role for t in view.turns] == ["system", "user", "assistant", "observation"]
    assert view.turns[2].header() == "<|assistant|>get_weather"
    assert view.turns[3].content == '{"temperature": 21}'
    assert '"name": "get_weather"' in view.turns[0].content  # the tools as the model reads them
    assert view.total_tokens is None and view.tokens_left is None


@needs_shared
def test_token_counts_add_up_to_the_chat_template(tokenizer):
    for add in (True, False):
        view = prompt_view(CONVERSATION, tokenizer, context_length=8192, add_generation_prompt=add)
        assert view.total_tokens == len(tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=add))
        assert all(t.tokens and t.tokens > 1 for t in view.turns)
        assert view.tokens_left == 8192 - view.total_tokens


def test_plain_dicts_are_accepted():
    view = prompt_view([{"role": "user", "content": "hi"}])
    assert view.turns[0].header() == "<|user|>" and view.turns[0].content == "hi"
