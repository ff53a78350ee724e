"""ChatView: agent events -> the chat the browser shows (pure; no Gradio, no kernel)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from glm_agent import events as ev
from glm_agent.messages import CodeCall, ToolCall
from glm_agent.web import ChatView
from glm_agent.web._render import fence, unfence_result


def test_a_tool_call_is_a_card_with_arguments_observation_status_and_duration():
    view = ChatView()
    view.user("Weather in Paris?")
    call = ToolCall(name="get_weather", arguments={"city": "Paris"})
    view.event(ev.TextDelta(1, "Let me check."))
    view.event(ev.CallStarted(1, "get_weather"))
    card = view.messages[-1]
    assert card["metadata"]["title"] == "Tool: get_weather" and card["metadata"]["status"] == "pending"
    view.event(ev.ToolCalled(1, call))
    assert '"city": "Paris"' in view.messages[-1]["content"]
    view.event(ev.ToolReturned(1, call, True, '{"temperature": 21}'))
    card = view.messages[-1]
    assert card["metadata"]["status"] == "done" and card["metadata"]["duration"] >= 0
    assert '{"temperature": 21}' in card["content"]
    view.event(ev.TextDelta(2, "It is 21."))
    view.event(ev.FinalAnswer(2, "It is 21."))
    assert [m["content"] for m in view.messages if "metadata" not in m] == [
        "Weather in Paris?",
        "Let me check.",
        "It is 21.",
    ]


def test_code_shows_live_output_then_the_clean_result_and_images(tmp_path):
    view = ChatView(image_url=lambda p: f"/copied/{p.name}")
    view.user("plot")
    call = CodeCall(code="print('a')")
    view.event(ev.CallStarted(1, "interpreter"))
    view.event(ev.CodeStarted(1, call))
    view.live_output("a\n")
    assert "(running)" in view.messages[-1]["content"] and "a\n" in view.messages[-1]["content"]
    view.event(ev.CodeFinished(1, call, True, "```result\na\n[Image]\n```", [tmp_path / "run001-1.png"]))
    card, image = view.messages[-2], view.messages[-1]
    assert "```result" not in card["content"] and "[Image]" in card["content"]
    assert "status" not in card["metadata"]  # done code cards stay open on their output
    assert image["content"] == {"path": "/copied/run001-1.png"}


def test_refused_and_unparsable_calls_are_visible():
    view = ChatView()
    view.user("go")
    call = ToolCall(name="delete_all", arguments={})
    view.event(ev.CallStarted(1, "delete_all"))
    view.awaiting_approval(call)
    assert "waiting for approval" in view.messages[-1]["metadata"]["log"]
    view.event(ev.CallRefused(1, call, "The user did not allow you to call delete_all."))
    refused = view.messages[-1]
    assert refused["metadata"]["title"] == "Tool: delete_all (failed)" and "denied by the user" in refused["content"]
    view.event(ev.CallStarted(1, "delete_all"))
    view.event(ev.CallRefused(1, call, "The request was not approved.", reason="approve raised RuntimeError: boom"))
    assert "not run: approve raised RuntimeError: boom" in view.messages[-1]["content"]  # a failing gate says why
    view.event(ev.CallStarted(1, "broken"))
    view.event(ev.ParseFailed(1, "broken", "could not parse the call: unbalanced brackets"))
    assert "could not be parsed" in view.messages[-1]["metadata"]["title"]
    assert "unbalanced" in view.messages[-1]["content"]


def test_an_unknown_event_type_is_shown_not_dropped():
    @dataclass(frozen=True)
    class Surprise(ev.AgentEvent):
        type: ClassVar[str] = "surprise"
        detail: str

    view = ChatView()
    view.event(Surprise(1, "new"))
    assert "surprise" in view.messages[-1]["content"] and '"detail": "new"' in view.messages[-1]["content"]


def test_regenerate_drops_the_last_turn_only():
    view = ChatView()
    view.user("one")
    view.event(ev.FinalAnswer(1, "1"))
    view.user("two")
    view.event(ev.FinalAnswer(1, "2"))
    view.drop_last_turn()
    assert [m["content"] for m in view.messages] == ["one", "1"]


def test_fences_survive_backticks_in_the_text():
    text = "```python\nx\n```"
    fenced = fence(text)
    assert fenced.startswith("````\n") and fenced.endswith("\n````")
    assert unfence_result("```result\n42\n```\n[Timed out after 5 s]") == ("42", "[Timed out after 5 s]")
    assert unfence_result("plain") == ("plain", "")
