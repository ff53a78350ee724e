"""The terminal renderer shows every kind of agent event (a new kind without a case fails mypy and this test)."""

from __future__ import annotations

import io
import typing
from pathlib import Path

import pytest
from rich.console import Console

from glm_agent import events as ev
from glm_agent.messages import CodeCall, ToolCall
from glm_agent.render import EventRenderer

WEATHER = ToolCall(name="get_weather", arguments={"city": "北京"})
CODE = CodeCall(code="print(1 + 1)")

# one event of each kind, with what the terminal must show for it
SAMPLES: list[tuple[ev.AgentEvent, list[str]]] = [
    (ev.TextDelta(step=0, text="北京今天晴"), ["北京今天晴"]),
    (ev.CallStarted(step=0, name="get_weather"), ["calling get_weather"]),
    (ev.ToolCalled(step=0, call=WEATHER), ["tool get_weather", '"city": "北京"']),
    (
        ev.ToolReturned(step=0, call=WEATHER, ok=True, observation='{"sky": "晴"}', files=[Path("out/map.png")]),
        ["get_weather: ok", '{"sky": "晴"}', "saved out/map.png"],
    ),
    (ev.CodeStarted(step=1, call=CODE), ["print(1 + 1)"]),
    (
        ev.CodeFinished(step=1, call=CODE, ok=False, observation="```result\nZeroDivisionError\n```"),
        ["output: error", "ZeroDivisionError"],
    ),
    (
        ev.CallRefused(step=1, call=WEATHER, observation="refused", reason="the approver raised OSError"),
        ["refused: get_weather", "the approver raised OSError"],
    ),
    (ev.ParseFailed(step=1, name="get_weather", observation="tool_call(city="), ["unreadable call get_weather"]),
    (ev.FinalAnswer(step=2, text="北京今天晴"), []),
    (ev.RunError(step=2, kind="max_steps", message="stopped after [3] steps"), ["stopped:", "[3] steps"]),
]


def test_the_samples_cover_every_member_of_the_event_union() -> None:
    assert {type(e) for e, _ in SAMPLES} == set(typing.get_args(ev.Event))


@pytest.mark.parametrize(("event", "shown"), SAMPLES, ids=[type(e).__name__ for e, _ in SAMPLES])
def test_every_event_renders(event: ev.Event, shown: list[str]) -> None:
    out = io.StringIO()
    renderer = EventRenderer(Console(file=out, width=100, color_system=None))
    renderer.render(event)
    renderer.stop_waiting()
    text = out.getvalue()
    for words in shown:
        assert words in text


def test_an_unknown_event_is_an_error_not_silence() -> None:
    class Surprise(ev.AgentEvent):
        pass

    renderer = EventRenderer(Console(file=io.StringIO()))
    with pytest.raises(AssertionError):
        renderer.render(Surprise(step=0))  # type: ignore[arg-type]


def test_a_call_shown_for_approval_is_not_shown_twice() -> None:
    out = io.StringIO()
    renderer = EventRenderer(Console(file=out, width=100, color_system=None))
    renderer.show_call(WEATHER)
    renderer.render(ev.ToolCalled(step=0, call=WEATHER))
    renderer.stop_waiting()
    assert out.getvalue().count("tool get_weather") == 1
