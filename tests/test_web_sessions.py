"""Web sessions without a browser: per-session agents and kernels, limits, idle timeout, the model queue,
stop, approval, regenerate, scripted replays. Real kernels and scripted models (labelled)."""

from __future__ import annotations

import json
import threading

import pytest

from glm_agent.chatglm3 import CHAT_SYSTEM, TOOLS_SYSTEM, code_system_prompt
from glm_agent.cli._ui import parse_auth
from glm_agent.errors import GlmAgentError, StoppedWhileWaiting
from glm_agent.messages import ObservationMessage
from glm_agent.models import ScriptedModel
from glm_agent.web import Login, ModelQueue, ModelSource, SessionLimitError, SessionManager, WebConfig, check_bind
from tests._helpers import pid_gone, wait_until
from tests.web_support import Router, code_reply, tool_reply, tools, visible

pytestmark = pytest.mark.kernel  # the sessions' kernel pool starts kernels

SCRIPTS = {
    "set x": [code_reply("x = 41\nprint('x is set')"), "Stored."],
    "show x": [code_reply("print(x + 1)"), "Shown."],
    "sleep": [code_reply("import time\nprint('z' * 2, flush=True)\ntime.sleep(60)"), "Slept."],
    "weather": [tool_reply("get_weather", "city='Paris'"), "It is 21."],
}


def run(session, text, ask=False):
    session.start(text, ask=ask)
    assert session.wait(60), "the run did not end"
    return [visible(m["content"]) for m in session.snapshot().messages if isinstance(m["content"], str)]


@pytest.fixture
def manager():
    config = WebConfig(
        ModelSource(factory=Router(SCRIPTS).factory()),
        tools=tools(),
        code_interpreter=True,
        pool_size=1,
        max_sessions=2,
    )
    m = SessionManager(config)
    yield m
    m.close_all()


def test_scripted_file_replays_from_its_first_reply_in_every_session(tmp_path):
    script = tmp_path / "demo.json"
    script.write_text(json.dumps(["first reply", "second reply"]))
    manager = SessionManager(WebConfig(ModelSource.from_spec(f"scripted:{script}")))
    try:
        a, b = manager.open("a"), manager.open("b")
        assert run(a, "hi")[-1] == "first reply"
        assert run(b, "hi")[-1] == "first reply"
        assert run(a, "again")[-1] == "second reply"
        a.new_conversation()  # a new conversation replays from the start too
        assert run(a, "hi")[-1] == "first reply"
    finally:
        manager.close_all()


def test_bad_scripted_file_is_a_clear_error_at_start(tmp_path):
    with pytest.raises(GlmAgentError, match="not found"):
        ModelSource.from_spec(f"scripted:{tmp_path / 'missing.json'}")


def test_sessions_have_their_own_kernels_and_clear_gives_a_fresh_one(manager):
    a, b = manager.open("a"), manager.open("b")
    run(a, "set x")
    out_b = run(b, "show x")
    assert any("NameError" in text for text in out_b)
    assert a.interpreter.backend.pid != b.interpreter.backend.pid
    assert any("42" in text for text in run(a, "show x"))
    old_pid = a.interpreter.backend.pid
    a.new_conversation()
    assert a.interpreter is None and a.snapshot().messages == []
    wait_until(lambda: pid_gone(old_pid), what="the old kernel to end")
    assert any("NameError" in text for text in run(a, "show x"))


def test_max_sessions_refuses_with_a_clear_message_and_closing_frees_a_slot(manager):
    manager.open("a")
    manager.open("b")
    with pytest.raises(SessionLimitError, match="All 2 sessions are in use"):
        manager.open("c")
    manager.close("a")
    assert manager.open("c").id == "c"


def test_idle_sessions_are_closed_with_their_kernels():
    config = WebConfig(
        ModelSource(factory=Router(SCRIPTS).factory()), code_interpreter=True, pool_size=1, idle_timeout=0.5
    )
    manager = SessionManager(config)
    try:
        session = manager.open("idle")
        run(session, "set x")
        pid = session.interpreter.backend.pid
        wait_until(lambda: "idle" not in manager.ids(), timeout=10, what="the idle session to close")
        wait_until(lambda: pid_gone(pid), what="its kernel to end")
        assert session.closed
        with pytest.raises(GlmAgentError, match="reload the page"):
            session.start("hello")
        with pytest.raises(GlmAgentError, match="ended after .* idle minutes"):
            manager.open("idle")  # the tab is told, not silently given an empty conversation
    finally:
        manager.close_all()


def test_stop_interrupts_running_code_and_the_conversation_stays_usable(manager):
    session = manager.open("a")
    session.start("sleep")
    wait_until(lambda: any("zz" in str(m["content"]) for m in session.snapshot().messages), what="the code's output")
    session.stop()
    assert session.wait(30)  # stopped: the cell would sleep far longer
    texts = [visible(m["content"]) for m in session.snapshot().messages]
    assert "Stopped." in texts and "Slept." not in texts
    assert isinstance(session.agent.messages[-1], ObservationMessage)  # every call answered: well formed
    assert "Stored." in run(session, "set x")


def test_approval_waits_for_the_user_and_stop_denies(manager):
    session = manager.open("a")
    session.configure(mode="Tools")
    session.start("weather", ask=True)
    wait_until(lambda: session.snapshot().approval is not None, what="the approval request")
    assert session.snapshot().running
    session.answer_approval(True)
    assert session.wait(10)
    assert "It is 21." in [visible(m["content"]) for m in session.snapshot().messages]
    session.start("weather again", ask=True)
    wait_until(lambda: session.snapshot().approval is not None, what="the approval request")
    session.stop()  # a pending approval is a no
    assert session.wait(5)
    observations = [m.content for m in session.agent.messages if isinstance(m, ObservationMessage)]
    assert "did not allow" in observations[-1]


def test_regenerate_runs_the_last_question_again():
    answers = iter(["first answer", "second answer"])
    config = WebConfig(ModelSource(factory=lambda: ScriptedModel(lambda messages: next(answers))))
    manager = SessionManager(config)
    try:
        session = manager.open("a")
        assert run(session, "question")[-1] == "first answer"
        assert session.regenerate()
        assert session.wait(10)
        texts = [visible(m["content"]) for m in session.snapshot().messages]
        assert texts == ["question", "second answer"]
        assert [m.role for m in session.agent.messages] == ["system", "user", "assistant"]
    finally:
        manager.close_all()


def test_modes_use_chatglm3s_official_system_prompts(manager):
    session = manager.open("a")
    assert session.official_system("Chat") == CHAT_SYSTEM
    assert session.official_system("Tools") == TOOLS_SYSTEM
    assert session.official_system("Code Interpreter").startswith(code_system_prompt("zh"))
    session.configure(mode="Chat", system="You are terse.")
    run(session, "hello")
    assert session.agent.messages[0].content == "You are terse." and session.agent.messages[0].tools is None
    with pytest.raises(ValueError, match="unknown mode"):
        session.configure(mode="Poetry")


class SlowModel:
    """A shared model that takes a while per reply (scripted text, real waiting)."""

    name = "slow-scripted"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def stream(self, messages, **params):
        self.started.set()
        self.release.wait(10)
        yield "done"


def test_a_shared_model_queues_generations_and_the_waiting_session_is_told():
    model = SlowModel()
    manager = SessionManager(WebConfig(ModelSource(model)))
    try:
        a, b = manager.open("a"), manager.open("b")
        a.start("one")
        assert model.started.wait(10)  # a holds the model before b asks
        b.start("two")
        wait_until(lambda: "1 generation ahead" in b.snapshot().status, what="the queue notice")
        model.release.set()
        assert a.wait(10) and b.wait(10)
        assert b.snapshot().status == ""
        assert [visible(m["content"]) for m in b.snapshot().messages][-1] == "done"
    finally:
        manager.close_all()


def test_the_queue_lets_a_waiting_caller_give_up():
    queue = ModelQueue()
    stop = threading.Event()
    seen: list[int] = []
    with queue.turn(lambda n: None, lambda: False):
        errors: list[BaseException] = []

        def waiter() -> None:
            try:
                with queue.turn(seen.append, stop.is_set):
                    pass
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=waiter)
        thread.start()
        wait_until(lambda: seen == [1], what="the waiter to be told it is second")
        stop.set()
        thread.join(5)
    assert isinstance(errors[0], StoppedWhileWaiting) and queue.waiting == 0


def test_binding_beyond_loopback_needs_a_login():
    check_bind("127.0.0.1", None)
    check_bind("localhost", None)
    check_bind("::1", None)
    with pytest.raises(GlmAgentError, match="--auth USER:PASS"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", Login({"alice": "secret"}))
    assert parse_auth("alice:se:cret") == ("alice", "se:cret")
    for bad in ("alice", ":x", "alice:"):
        with pytest.raises(GlmAgentError, match="USER:PASS"):
            parse_auth(bad)


@pytest.mark.gateway
@pytest.mark.slow
def test_sessions_on_a_kernel_gateway_stream_output_stop_and_leave_no_kernel():
    from tests.gateway_server import GatewayServer

    gateway = GatewayServer()
    manager = None
    try:
        config = WebConfig(
            ModelSource(factory=Router(SCRIPTS).factory()),
            code_interpreter=True,
            gateway=gateway.url,
            token=gateway.token,
        )
        manager = SessionManager(config)
        assert manager.pool is None  # kernels come from the gateway
        a, b = manager.open("a"), manager.open("b")
        run(a, "set x")
        assert any("NameError" in text for text in run(b, "show x"))
        a.start("sleep")
        wait_until(lambda: any("zz" in str(m["content"]) for m in a.snapshot().messages), what="live output")
        a.stop()
        assert a.wait(10)
        assert any("42" in text for text in run(a, "show x"))  # interrupted, state kept
        assert a.workspace_files() == []  # the kernel's files stay on the gateway
        assert len(gateway.kernels()) == 2
        manager.close_all()
        wait_until(lambda: gateway.kernels() == [], what="the gateway's kernels to be shut down")
    finally:
        if manager is not None:
            manager.close_all()
        gateway.stop()
