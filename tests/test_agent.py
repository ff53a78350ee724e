"""The agent loop with the scripted model and real tools (the kernel parts live in test_agent_code.py)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import nbformat
import pytest

from glm_agent import Agent, tool
from glm_agent import events as ev
from glm_agent.chatglm3.prompts import CHAT_SYSTEM, CODE_SYSTEM_EN, CODE_SYSTEM_ZH, TOOLS_SYSTEM
from glm_agent.errors import ContextLengthError, GlmAgentError, ModelError
from glm_agent.messages import AssistantMessage, ObservationMessage, ToolCall, UserMessage, load_jsonl
from glm_agent.models import ScriptedModel


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Get the current weather in a city.

    Args:
        city: the city name
        unit: temperature unit
    """
    return {"city": city, "temperature": 21, "unit": unit}


@tool
def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(f"boom: {reason}")


@tool(timeout=0.3)
def slow(seconds: float) -> str:
    """Sleeps."""
    time.sleep(seconds)
    return "done"


def call(name: str, args: str = "") -> str:
    return f"{name}\n ```python\ntool_call({args})\n```"


WEATHER = call("get_weather", "city='Paris'")


def test_tool_episode_events_history_and_result():
    model = ScriptedModel(["\n Let me check.<|assistant|>" + WEATHER, "\n It is 21 degrees in Paris."])
    agent = Agent(model, tools=[get_weather])
    events = list(agent.stream("Weather in Paris?"))
    kinds = [e.type for e in events]
    assert (
        kinds.index("text_delta")
        < kinds.index("call_started")
        < kinds.index("tool_called")
        < kinds.index("tool_returned")
    )
    assert kinds[-1] == "final_answer" and events[-1].text == "It is 21 degrees in Paris."
    assert "".join(e.text for e in events if isinstance(e, ev.TextDelta) and e.step == 1) == "Let me check."
    result = next(e for e in events if isinstance(e, ev.ToolReturned))
    assert result.ok and result.call == ToolCall(name="get_weather", arguments={"city": "Paris"})
    assert result.observation == '{"city": "Paris", "temperature": 21, "unit": "celsius"}'
    # metadata is kept in history: the second prompt holds the call segment as the model wrote it
    second_prompt = model.prompts[1]
    assert second_prompt[-3:] == [
        AssistantMessage(content="Let me check."),
        AssistantMessage(metadata="get_weather", content="```python\ntool_call(city='Paris')\n```"),
        ObservationMessage(content=result.observation),
    ]
    assert second_prompt[0].tools[0]["name"] == "get_weather" and second_prompt[0].content == TOOLS_SYSTEM


def test_run_result():
    agent = Agent(ScriptedModel([WEATHER, "\n 21."]), tools=[get_weather])
    result = agent.run("Weather?")
    assert result.answer == "21." and result.stopped == "answer" and result.steps == 2
    assert [(c.name, c.ok) for c in result.calls] == [("get_weather", True)]
    assert isinstance(result.messages[0], UserMessage) and result.messages[-1] == AssistantMessage(content="21.")


def test_history_reencodes_as_a_continuation_of_each_prompt(tokenizer):
    model = ScriptedModel(
        ["\n ok<|assistant|>" + WEATHER, call("get_weather", "city='Rome', unit='fahrenheit'"), "\n done"]
    )
    agent = Agent(model, tools=[get_weather])
    agent.run("two cities")
    prompts = [tokenizer.apply_chat_template(p) for p in model.prompts]
    for before, after in itertools.pairwise(prompts):
        assert after[: len(before)] == before  # each turn extends the last: what the prefix cache relies on
    final = tokenizer.apply_chat_template(agent.messages, add_generation_prompt=False)
    assert final[: len(prompts[-1])] == prompts[-1]


@pytest.mark.parametrize(
    "reply, kind, words",
    [
        (call("get_weather", "city=Paris"), "parse_failed", "the name `Paris`"),
        (call("get_wether", "city='Paris'"), "tool_returned", "no tool named 'get_wether'"),
        (call("get_weather", "town='Paris'"), "tool_returned", "town"),
        (call("get_weather", "city='Paris', unit='kelvin'"), "tool_returned", "unit"),
        (call("explode", "reason='test'"), "tool_returned", "boom: test"),
        (call("slow", "seconds=5"), "tool_returned", "0.3"),
        ("interpreter\n ```python\nprint(1)\n```", "code_finished", "code execution is not enabled"),
    ],
)
def test_each_failure_becomes_an_observation_and_the_run_recovers(reply, kind, words):
    model = ScriptedModel([reply, "\n recovered"])
    agent = Agent(model, tools=[get_weather, explode, slow])
    result = agent.run("go")
    assert result.answer == "recovered" and result.steps == 2
    failed = next(e for e in result.events if e.type == kind)
    assert failed.ok is False if hasattr(failed, "ok") else True
    assert words in failed.observation
    assert agent.messages[-2] == ObservationMessage(content=failed.observation)
    assert not result.calls[0].ok


def test_max_steps_ends_cleanly():
    agent = Agent(ScriptedModel([WEATHER] * 5), tools=[get_weather], max_steps=3)
    result = agent.run("loop forever")
    assert result.stopped == "max_steps" and result.answer is None and result.steps == 3
    assert "3 steps" in result.error and result.events[-1].type == "run_error"
    assert isinstance(agent.messages[-1], ObservationMessage)  # the conversation is well formed


def test_two_calls_in_one_reply_run_in_order_with_one_observation_each():
    reply = WEATHER + "<|assistant|>" + call("get_weather", "city='Rome'")
    agent = Agent(ScriptedModel([reply, "\n both done"]), tools=[get_weather])
    result = agent.run("Paris and Rome")
    assert [c.call.arguments["city"] for c in result.calls] == ["Paris", "Rome"]
    tail = agent.messages[-5:-1]
    assert [m.role for m in tail] == ["assistant", "assistant", "observation", "observation"]
    assert "Paris" in tail[2].content and "Rome" in tail[3].content


def test_approval_hook_can_refuse():
    seen = []

    def approve(c):
        seen.append(c)
        return c.arguments.get("city") != "Secret"

    model = ScriptedModel([call("get_weather", "city='Secret'"), WEATHER, "\n ok"])
    result = Agent(model, tools=[get_weather], approve=approve).run("x")
    refused = next(e for e in result.events if isinstance(e, ev.CallRefused))
    assert "did not allow" in refused.observation and len(seen) == 2
    assert [c.ok for c in result.calls] == [False, True]


def test_a_model_failure_raises_from_run_with_the_partial_result_and_is_an_event_in_stream():
    agent = Agent(ScriptedModel([WEATHER]), tools=[get_weather])
    with pytest.raises(ModelError, match="ran out of replies") as failed:
        agent.run("x")
    result = failed.value.result
    assert result.stopped == "model_error" and "ran out of replies" in result.error
    assert [c.name for c in result.calls] == ["get_weather"]  # the partial run: the call it made
    assert isinstance(agent.messages[-1], ObservationMessage)  # answered after the tool: kept, well formed
    events = list(Agent(ScriptedModel([]), tools=[get_weather]).stream("x"))
    assert events[-1].type == "run_error" and events[-1].kind == "model_error"


class TooLong(ScriptedModel):
    """A model whose context holds 10 words (a stand-in for ContextLengthError from a real backend)."""

    def stream(self, messages, **params):
        words = sum(len(str(m.content if hasattr(m, "content") else m["content"]).split()) for m in messages)
        if words > 10:
            raise ContextLengthError(f"the prompt has {words} words, the context holds 10")
        return super().stream(messages, **params)


def test_a_turn_the_model_never_answered_is_rolled_back_so_the_next_run_works():
    agent = Agent(TooLong(["\n fine"]), system="s")
    before = list(agent.messages)
    with pytest.raises(ContextLengthError) as failed:  # the backend's own error, as it is
        agent.run("this question is far too long for the tiny context of this model")
    assert "taken out of the conversation" in failed.value.result.error
    assert agent.messages == before  # not poisoned
    assert agent.run("short").answer == "fine"


def test_conversation_persists_reset_save_load(tmp_path):
    model = ScriptedModel(["\n one", "\n two", "\n three"])
    agent = Agent(model, system="You are terse.")
    agent.run("first")
    agent.run("second")
    assert [m.content for m in model.prompts[1]] == ["You are terse.", "first", "one", "second"]
    path = agent.save(tmp_path / "session.jsonl")
    restored = Agent(ScriptedModel(["\n x"]))
    restored.load(path)
    assert restored.messages == agent.messages == load_jsonl(path)
    agent.reset()
    assert [m.role for m in agent.messages] == ["system"] and agent.messages[0].content == "You are terse."


def test_system_prompt_defaults_per_mode():
    model = ScriptedModel([])
    assert Agent(model).messages[0].content == CHAT_SYSTEM
    assert Agent(model, tools=[get_weather]).messages[0].content == TOOLS_SYSTEM
    assert Agent(model, code_interpreter=True).messages[0].content == CODE_SYSTEM_ZH
    assert Agent(model, code_interpreter=True, language="en").messages[0].content == CODE_SYSTEM_EN
    custom = Agent(model, tools=[get_weather], system="Mine.").messages[0]
    assert custom.content == "Mine." and custom.tools[0]["name"] == "get_weather"  # honoured, tools kept


@pytest.mark.parametrize("bad", ["yes", 1, object()])
def test_code_interpreter_must_be_an_interpreter_or_a_flag(bad):
    with pytest.raises(TypeError, match="code_interpreter must be a CodeInterpreter"):
        Agent(ScriptedModel([]), code_interpreter=bad)
    assert Agent(ScriptedModel([]), code_interpreter=False).interpreter is None


def test_cancelling_a_stream_mid_answer_keeps_the_conversation_consistent():
    agent = Agent(ScriptedModel(["\n " + "word " * 50, "\n next"]))
    stream = agent.stream("talk")
    for event in stream:
        if isinstance(event, ev.TextDelta) and len(agent.messages) == 2:
            break
    stream.close()
    kept = agent.messages[-1]
    assert kept.role == "assistant" and kept.content and ("word " * 50).startswith(kept.content)
    assert agent.run("again").answer == "next"


def test_cancelling_during_a_call_answers_the_pending_call():
    agent = Agent(
        ScriptedModel([WEATHER + "<|assistant|>" + call("get_weather", "city='Rome'"), "\n next"]), tools=[get_weather]
    )
    stream = agent.stream("x")
    for event in stream:
        if isinstance(event, ev.ToolReturned):
            break  # stop after the first of two calls
    stream.close()
    observations = [m for m in agent.messages if isinstance(m, ObservationMessage)]
    assert len(observations) == 2 and "Cancelled" in observations[-1].content


def test_async_twins():
    async def go():
        model = ScriptedModel(["\n hmm<|assistant|>" + WEATHER, "\n 21 degrees"])
        agent = Agent(model, tools=[get_weather], approve=lambda c: asyncio.sleep(0, result=True))
        kinds = [e.type async for e in agent.astream("weather?")]
        again = await Agent(ScriptedModel(["\n hi"])).arun("hello")
        return kinds, agent, again

    kinds, agent, again = asyncio.run(go())
    assert kinds[-1] == "final_answer" and "tool_returned" in kinds
    assert again.answer == "hi"
    assert agent.messages[-1] == AssistantMessage(content="21 degrees")


def test_events_serialise_to_json():
    import json

    agent = Agent(ScriptedModel([WEATHER, "\n ok"]), tools=[get_weather])
    for e in agent.stream("x"):
        data = e.to_dict()
        assert data["type"] == e.type and json.loads(json.dumps(data)) == data


# -- approval fails closed -----------------------------------------------------------------------
deleted: list[str] = []


@tool
def delete_all(folder: str) -> str:
    """Delete everything in a folder (records the call instead)."""
    deleted.append(folder)
    return "deleted"


DELETE = call("delete_all", "folder='/'")


def _delete_run(approve, *, run_async: bool = False):
    deleted.clear()
    agent = Agent(ScriptedModel([DELETE, "\n ok"]), tools=[delete_all], approve=approve)
    result = asyncio.run(agent.arun("clean up")) if run_async else agent.run("clean up")
    return result, next((e for e in result.events if isinstance(e, ev.CallRefused)), None)


def test_a_sync_run_refuses_an_async_approve_function_before_anything_runs():
    async def approve(c):
        return False

    agent = Agent(ScriptedModel([DELETE, "\n ok"]), tools=[delete_all], approve=approve)
    before = list(agent.messages)
    with pytest.raises(TypeError, match="arun"):
        agent.run("clean up")
    assert agent.messages == before and not deleted


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the refused coroutine is closed, not left unawaited
def test_an_awaitable_verdict_in_a_sync_run_is_a_refusal():
    result, refused = _delete_run(lambda c: asyncio.sleep(0, result=False))
    assert not deleted and refused is not None and "arun" in refused.reason
    assert "not approved" in refused.observation and result.answer == "ok"
    assert [c.ok for c in result.calls] == [False]


@pytest.mark.parametrize("verdict", [False, True])
def test_an_async_approve_is_awaited_in_async_runs(verdict):
    async def approve(c):
        await asyncio.sleep(0)
        return verdict

    _, refused = _delete_run(approve, run_async=True)
    assert deleted == (["/"] if verdict else []) and (refused is None) == verdict
    if not verdict:
        assert refused.reason is None and "did not allow" in refused.observation


@pytest.mark.parametrize("verdict", ["yes", 1, [True], object(), None])
@pytest.mark.parametrize("run_async", [False, True])
def test_a_verdict_that_is_not_a_bool_is_a_refusal(verdict, run_async):
    async def async_approve(c):
        return verdict

    result, refused = _delete_run(async_approve if run_async else lambda c: verdict, run_async=run_async)
    assert not deleted and refused is not None and "not a bool" in refused.reason
    assert result.answer == "ok"


@pytest.mark.parametrize("run_async", [False, True])
def test_an_approve_that_raises_is_a_refusal(run_async, caplog):
    def approve(c):
        raise ConnectionError("policy server down")

    async def async_approve(c):
        approve(c)

    result, refused = _delete_run(async_approve if run_async else approve, run_async=run_async)
    assert not deleted and "ConnectionError: policy server down" in refused.reason
    assert "approval check raised" in caplog.text
    assert isinstance(result.messages[-2], ObservationMessage) and "not approved" in result.messages[-2].content


# -- Agent.cancel: the run ends with stopped == "cancelled" -----------------------------------------
class Gate:
    """A tool that waits until the test lets it finish (so another thread can cancel meanwhile)."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

        @tool
        def wait(city: str) -> str:
            """Wait for the gate."""
            self.started.set()
            assert self.release.wait(30)
            return f"done {city}"

        self.tool = wait


TWO_WAITS = call("wait", "city='Paris'") + "<|assistant|>" + call("wait", "city='Rome'")


def _assert_cancelled_after_the_first_call(agent, result):
    assert result.stopped == "cancelled" and result.answer is None and "cancelled" in result.error
    assert result.events[-1].type == "run_error" and result.events[-1].kind == "cancelled"
    assert [(c.name, c.ok, c.observation) for c in result.calls] == [("wait", True, "done Paris")]
    assert [m.content for m in agent.messages[-2:]] == ["done Paris", "Cancelled by the user before it finished."]
    assert agent.run("again").answer == "next"  # the flag is per run; the conversation goes on


def test_cancel_from_another_thread_ends_a_sync_run_as_cancelled():
    gate = Gate()
    agent = Agent(ScriptedModel([TWO_WAITS, "\n next"]), tools=[gate.tool])
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(agent.run, "go")
        assert gate.started.wait(30)
        agent.cancel()
        gate.release.set()
        result = future.result(30)
    _assert_cancelled_after_the_first_call(agent, result)


def test_cancel_from_another_task_ends_an_async_run_as_cancelled():
    gate = Gate()
    agent = Agent(ScriptedModel([TWO_WAITS, "\n next"]), tools=[gate.tool])

    async def go():
        task = asyncio.ensure_future(agent.arun("go"))
        assert await asyncio.to_thread(gate.started.wait, 30)
        agent.cancel()
        gate.release.set()
        return await task

    _assert_cancelled_after_the_first_call(agent, asyncio.run(go()))


@pytest.mark.parametrize("run_async", [False, True])
def test_cancel_while_the_model_streams_stops_generation_and_keeps_the_text(run_async):
    agent = Agent(ScriptedModel(["\n " + "word " * 50, "\n next"], chunk_size=5))

    def on(event):
        if isinstance(event, ev.TextDelta):
            agent.cancel()

    async def collect():
        return [e async for e in agent.astream("talk") if on(e) or True]

    events = asyncio.run(collect()) if run_async else [e for e in agent.stream("talk") if on(e) or True]
    assert events[-1].type == "run_error" and events[-1].kind == "cancelled"
    assert sum(isinstance(e, ev.TextDelta) for e in events) == 1  # no delta after the cancel
    kept = agent.messages[-1]
    assert kept.role == "assistant" and ("word " * 50).startswith(kept.content)
    assert agent.run("again").answer == "next"


def test_cancel_during_approval_runs_nothing():
    gate = Gate()
    agent = Agent(ScriptedModel([TWO_WAITS, "\n next"]), tools=[gate.tool])
    agent.approve = lambda c: agent.cancel() or True  # the person pressed "stop" instead of answering
    result = agent.run("go")
    assert result.stopped == "cancelled" and not gate.started.is_set() and result.calls == []
    observations = [m.content for m in agent.messages if isinstance(m, ObservationMessage)]
    assert observations == ["Cancelled by the user before it finished."] * 2


# -- approval: after validation, per tool -------------------------------------------------------------
@tool(needs_approval=True)
def wire_money(amount: int) -> str:
    """Sends money.

    Args:
        amount: how much
    """
    return f"sent {amount}"


def test_calls_that_cannot_run_go_back_to_the_model_without_asking_anyone():
    asked = []
    replies = [call("no_such_tool", "x=1"), call("get_weather", "town='Paris'"), "\n Done."]
    agent = Agent(ScriptedModel(replies), tools=[get_weather], approve=lambda c: asked.append(c) or True)
    result = agent.run("go")
    assert asked == []  # neither the unknown tool nor the bad arguments reached the approver
    failed = [e for e in result.events if isinstance(e, ev.ToolReturned)]
    assert [e.error for e in failed] == ["unknown_tool", "invalid_arguments"]
    assert "town" in failed[1].observation and result.answer == "Done."


def test_a_marked_tool_needs_a_yes_and_unmarked_tools_run_without_asking():
    replies = [call("wire_money", "amount=5"), call("get_weather", "city='Paris'"), "\n Done."]
    nobody = Agent(ScriptedModel(replies), tools=[get_weather, wire_money]).run("go")
    refused = next(e for e in nobody.events if isinstance(e, ev.CallRefused))
    assert refused.call.name == "wire_money" and "no approver" in refused.reason
    assert any(isinstance(e, ev.ToolReturned) and e.ok for e in nobody.events)  # get_weather ran
    asked: list[str] = []
    marked_only = Agent(
        ScriptedModel(replies),
        tools=[get_weather, wire_money],
        approve=lambda c: asked.append(c.name) or True,
        ask="marked",
    ).run("go")
    assert asked == ["wire_money"]
    assert [e.observation for e in marked_only.events if isinstance(e, ev.ToolReturned)] == [
        "sent 5",
        marked_only.calls[1].observation,
    ]
    everything: list[str] = []
    Agent(
        ScriptedModel(replies), tools=[get_weather, wire_money], approve=lambda c: everything.append(c.name) or True
    ).run("go")
    assert everything == ["wire_money", "get_weather"]  # ask="all" (the default) asks about every call
    with pytest.raises(ValueError, match="ask must be"):
        Agent(ScriptedModel(replies), ask="some")


class Counting(ScriptedModel):
    """A scripted model with a real tokenizer and a small context: it fails as a real backend would."""

    def __init__(self, replies, tokenizer, context_length):
        super().__init__(replies)
        self.tokenizer = tokenizer
        self.context_length = context_length

    def stream(self, messages, **params):
        used = len(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))
        if used + params.get("max_new_tokens", 16) > self.context_length:
            raise ContextLengthError(f"{used} prompt tokens do not fit {self.context_length}")
        return super().stream(messages, **params)


def test_history_is_fitted_into_the_context_only_when_asked(tokenizer):
    question = "please tell me a long story about " + "the sea " * 20
    replies = ["\n one"] * 6
    plain = Agent(Counting(replies, tokenizer, 200), system="Be brief.", generation={"max_new_tokens": 16})
    plain.run(question)
    with pytest.raises(ContextLengthError):
        for _ in range(3):
            plain.run(question)
    fitted = Agent(
        Counting(replies, tokenizer, 200), system="Be brief.", generation={"max_new_tokens": 16}, fit_history=True
    )
    for _ in range(4):
        assert fitted.run(question).answer == "one"
    assert fitted.messages[0].content == "Be brief."  # the system prompt stays
    assert sum(isinstance(m, UserMessage) for m in fitted.messages) < 4  # old turns went
    no_tokenizer = Agent(ScriptedModel(["\n x"]))
    with pytest.raises(GlmAgentError, match="no tokenizer"):
        no_tokenizer.drop_oldest_turns(100)


def test_every_event_type_is_its_class_name_and_every_event_prints_without_bytes():
    import re

    from glm_agent.render import format_event

    for cls in ev.Event.__args__:  # type: ignore[attr-defined]
        assert cls.type == re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
    png = b"\x89PNG" + b"x" * 50_000

    @tool
    def picture() -> bytes:
        """A picture."""
        return png

    result = Agent(ScriptedModel([call("picture"), "\n Here."]), tools=[picture]).run("draw")
    returned = next(e for e in result.events if isinstance(e, ev.ToolReturned))
    for shown in (repr(returned), repr(returned.result), repr(result), format_event(returned)):
        assert "xxxxxxxx" not in shown and len(shown) < 5000
    assert str(returned.files[0]) in format_event(returned)
    assert "".join(format_event(e) for e in result.events if isinstance(e, ev.TextDelta)) == "Here."


def test_every_file_a_run_produced_is_a_host_path_and_goes_with_the_agent(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    @tool
    def chart() -> object:
        """Draws a chart."""
        figure, axes = plt.subplots()
        axes.plot([1, 3, 2])
        return figure

    @tool
    def raw() -> bytes:
        """Some bytes."""
        return b"\x00\x01"

    replies = [call("chart") + "<|assistant|>" + call("raw"), "\n Drawn."]
    agent = Agent(ScriptedModel(replies), tools=[chart, raw])
    result = agent.run("draw")
    chart_file, raw_file = result.files
    assert chart_file.suffix == ".png" and chart_file.stat().st_size > 1000  # a Figure is saved as an image
    assert result.images == [chart_file] and raw_file.read_bytes() == b"\x00\x01"
    assert "Figure(" not in result.calls[0].observation
    notebook = nbformat.read(str(agent.save_notebook(tmp_path / "run.ipynb")), as_version=4)
    attached = [c for c in notebook.cells if c.get("attachments")]
    assert len(attached) == 1 and chart_file.name in attached[0].attachments  # the tool's image is in the notebook
    folder = chart_file.parent
    agent.close()
    assert not folder.exists()  # the agent's temporary folder went with it


async def test_async_with_closes_the_agent():
    async with Agent(ScriptedModel(["\n hi"])) as agent:
        assert (await agent.arun("hello")).answer == "hi"


@tool
def new_tool(x: int) -> int:
    """A tool added after the conversation was saved."""
    return x


def test_a_resumed_conversation_shows_the_new_tools_and_keeps_a_custom_prompt(tmp_path):
    saved = tmp_path / "chat.jsonl"
    first = Agent(ScriptedModel(["\n hi"]), tools=[get_weather], system="You are a pirate.")
    first.run("hello")
    first.save(saved)
    resumed = Agent(ScriptedModel(["\n again"]), tools=[new_tool])
    resumed.load(saved)
    system = resumed.messages[0]
    assert [t["name"] for t in system.tools] == ["new_tool"]  # not the saved get_weather
    assert system.content == "You are a pirate."  # a custom prompt is kept ...
    official = Agent(ScriptedModel(["\n x"]), tools=[get_weather])
    official.save(saved)
    plain = Agent(ScriptedModel(["\n y"]))
    plain.load(saved)
    assert (
        plain.messages[0].content == CHAT_SYSTEM and plain.messages[0].tools is None
    )  # ... an official one follows the mode
    told = Agent(ScriptedModel(["\n z"]), system="Be brief.")
    told.load(saved)
    assert told.messages[0].content == "Be brief."


def test_a_resumed_code_conversation_tells_the_model_its_kernel_is_fresh():
    seen: list[list] = []

    def reply(messages):
        seen.append(list(messages))
        return "\n ok"

    history = [
        {"role": "system", "content": "x"},
        {"role": "user", "content": "set x"},
        {"role": "assistant", "metadata": "interpreter", "content": "```python\nx = 1\n```"},
        {"role": "observation", "content": "```result\n\n```"},
        {"role": "assistant", "content": "done"},
    ]
    agent = Agent(ScriptedModel(reply), code_interpreter=True, history=history)
    agent.run("print x")
    agent.run("again")
    questions = [m.content for m in seen[0] if isinstance(m, UserMessage)]
    assert questions[-1].startswith("[This conversation was resumed with a fresh code interpreter")
    assert not [m.content for m in seen[1] if isinstance(m, UserMessage)][-1].startswith("[This")  # said once
    with pytest.raises(GlmAgentError, match="files= put files into the code interpreter"):
        Agent(ScriptedModel(["\n no"])).run("read it", files=[__file__])


def test_print_event_to_a_file_ends_the_answer_line_before_the_next_event():
    import io

    from glm_agent.render import print_event

    out = io.StringIO()
    agent = Agent(ScriptedModel(["\n Let me look.<|assistant|>" + call("missing"), "\n Done."]))
    for event in agent.stream("go"):
        print_event(event, out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "Let me look." and lines[1].startswith("[calling missing]")
