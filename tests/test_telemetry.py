"""Traces and metrics (issue 25): the span tree of agent runs (in-memory exporter), content only on opt-in,
one trace through a real ``glm-agent serve`` process, ``/metrics`` parsed with the Prometheus parser,
``--trace FILE`` read back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families

from glm_agent import Agent, tool
from glm_agent.models import OpenAIModel, ScriptedModel
from glm_agent.server import BackgroundServer, create_app
from glm_agent.telemetry import _spans
from glm_agent.telemetry.semconv import CONTENT_ENV
from tests._data import REPO, TOKENIZER, needs_shared
from tests._helpers import free_port, stop_process, wait_http


@tool
def get_weather(city: str) -> dict:
    """Current weather in a city.

    Args:
        city: the city name
    """
    return {"city": city, "temp": 21}


@tool
def delete_all(folder: str) -> str:
    """Delete every file in a folder.

    Args:
        folder: the folder
    """
    return "deleted"


def call(name: str, args: str) -> str:
    return f"{name}\n ```python\ntool_call({args})\n```"


CODE = "interpreter\n ```python\nprint(6 * 7)\n```"
BROKEN = call("get_weather", "city=")  # not a literal: a parse error
SCRIPT = [
    call("get_weather", "city='Paris'"),
    CODE,
    BROKEN,
    call("delete_all", "folder='/'"),
    "\n It is 21 in Paris and 6 * 7 is 42.",
]


@pytest.fixture
def spans(monkeypatch):
    """Spans of this test only: a provider of its own with an in-memory exporter (the global one is untouched)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_spans, "tracer", lambda: provider.get_tracer("glm_agent"))
    monkeypatch.delenv(CONTENT_ENV, raising=False)
    monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    yield exporter
    provider.shutdown()


def tree(exporter) -> list[tuple[str, str | None]]:
    """(name, parent's name) of every span, in the order they started."""
    finished = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time)
    names = {s.context.span_id: s.name for s in finished}
    return [(s.name, names.get(s.parent.span_id) if s.parent else None) for s in finished]


def refuse_deletes(call) -> bool:
    return call.name != "delete_all"


@pytest.mark.kernel
def test_the_span_tree_of_a_run_with_tools_code_a_parse_error_and_a_refusal(spans):
    with Agent(
        ScriptedModel(SCRIPT), tools=[get_weather, delete_all], code_interpreter=True, approve=refuse_deletes
    ) as agent:
        result = agent.run("Weather in Paris, and 6 * 7?")
    assert result.answer and "42" in result.answer
    assert tree(spans) == [
        ("invoke_agent glm-agent", None),
        ("chat scripted", "invoke_agent glm-agent"),
        ("execute_tool get_weather", "invoke_agent glm-agent"),
        ("chat scripted", "invoke_agent glm-agent"),
        ("execute_tool interpreter", "invoke_agent glm-agent"),
        ("chat scripted", "invoke_agent glm-agent"),
        ("chat scripted", "invoke_agent glm-agent"),
        ("chat scripted", "invoke_agent glm-agent"),
    ]
    finished = spans.get_finished_spans()
    root = next(s for s in finished if s.name.startswith("invoke_agent"))
    assert root.status.status_code == StatusCode.UNSET
    assert {s.attributes["gen_ai.conversation.id"] for s in finished} == {agent.conversation_id}
    assert [e.name for e in root.events] == ["parse_failed", "call_refused"]
    assert root.events[1].attributes["gen_ai.tool.name"] == "delete_all"
    chat = next(s for s in finished if s.name.startswith("chat"))
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.provider.name"] == "glm_agent.scripted"
    assert chat.attributes["gen_ai.system"] == "glm_agent.scripted"  # the pre-1.37 name too, by default
    code = next(s for s in finished if s.name == "execute_tool interpreter")
    assert code.attributes["glm_agent.code.status"] == "ok" and code.attributes["glm_agent.code.restarted"] is False
    tool_span = next(s for s in finished if s.name == "execute_tool get_weather")
    assert tool_span.attributes["gen_ai.tool.call.id"] and tool_span.status.status_code == StatusCode.UNSET
    content = (
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
    )
    assert not [k for s in finished for k in s.attributes if k in content]  # private by default


def test_content_goes_into_spans_only_with_the_opt_in_and_cut(spans, monkeypatch):
    monkeypatch.setenv(CONTENT_ENV, "true")
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    secret_city = "Paris" + "x" * 20_000
    agent = Agent(ScriptedModel([call("get_weather", f"city='{secret_city}'"), "\n done"]), tools=[get_weather])
    agent.run("Weather?")
    finished = spans.get_finished_spans()
    chat = next(s for s in finished if s.name.startswith("chat"))
    assert "Weather?" in chat.attributes["gen_ai.input.messages"]
    assert "gen_ai.system" not in chat.attributes  # only the latest names
    tool_span = next(s for s in finished if s.name == "execute_tool get_weather")
    arguments = tool_span.attributes["gen_ai.tool.call.arguments"]
    assert arguments.startswith('{"city": "Paris') and "more characters]" in arguments and len(arguments) < 9000
    assert tool_span.attributes["gen_ai.tool.call.result"].startswith('{"city": "Paris')


def test_async_and_streamed_runs_give_the_same_tree(spans):
    script = [call("get_weather", "city='Paris'"), BROKEN, "\n 21."]
    Agent(ScriptedModel(script), tools=[get_weather]).run("a")
    sync_tree = tree(spans)
    spans.clear()
    asyncio.run(Agent(ScriptedModel(script), tools=[get_weather]).arun("a"))
    assert tree(spans) == sync_tree
    spans.clear()
    list(Agent(ScriptedModel(script), tools=[get_weather]).stream("a"))
    assert tree(spans) == sync_tree
    spans.clear()

    async def consume() -> None:
        async for _ in Agent(ScriptedModel(script), tools=[get_weather]).astream("a"):
            pass

    asyncio.run(consume())
    assert tree(spans) == sync_tree


def test_a_cancelled_run_and_a_closed_stream_end_their_spans_as_errors(spans):
    started, release = threading.Event(), threading.Event()

    @tool
    def wait(city: str) -> str:
        """Wait."""
        started.set()
        release.wait(30)
        return city

    agent = Agent(
        ScriptedModel([call("wait", "city='a'") + "<|assistant|>" + call("wait", "city='b'"), "\n x"]), tools=[wait]
    )
    worker = threading.Thread(target=agent.run, args=("go",))
    worker.start()
    assert started.wait(30)
    agent.cancel()
    release.set()
    worker.join(30)
    root = next(s for s in spans.get_finished_spans() if s.name.startswith("invoke_agent"))
    assert root.status.status_code == StatusCode.ERROR and root.attributes["error.type"] == "cancelled"
    spans.clear()
    stream = Agent(ScriptedModel(["\n a long answer " * 20]), tools=[get_weather]).stream("x")
    next(stream)
    stream.close()
    names = {s.name: s for s in spans.get_finished_spans()}
    assert names["invoke_agent glm-agent"].attributes["error.type"] == "cancelled"
    assert "chat scripted" in names  # the model turn's span ended too


@needs_shared
def test_metrics_count_what_the_server_answered(tmp_path):
    model = ScriptedModel(["\n hello there"] * 3)
    from glm_agent.chatglm3 import ChatGLM3Tokenizer

    with BackgroundServer(create_app(model, ChatGLM3Tokenizer(TOKENIZER), api_key="k")) as srv:
        client = OpenAIModel(srv.url, model.name, api_key="k")
        for _ in range(3):
            client.generate([{"role": "user", "content": "hi"}], max_new_tokens=8)
        assert httpx.get(f"{srv.url}/metrics").status_code == 401  # behind the key
        httpx.get(f"{srv.url}/no/such/path/{'x' * 50}", headers={"Authorization": "Bearer k"})
        text = httpx.get(f"{srv.url}/metrics", headers={"Authorization": "Bearer k"}).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["glm_agent_http_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests[("/v1/chat/completions", "200")] == 3
    assert requests[("/metrics", "401")] == 1 and requests[("other", "404")] == 1
    assert not [route for route, _ in requests if "x" * 10 in route]  # hostile paths do not grow the labels
    ttft = families["gen_ai_server_time_to_first_token_seconds"]
    assert next(s.value for s in ttft.samples if s.name.endswith("_count")) == 3
    tokens = {s.labels["gen_ai_token_type"]: s.value for s in families["gen_ai_server_token_usage"].samples}
    assert tokens["output"] > 0 and tokens["input"] > 0
    assert next(iter(families["glm_agent_requests_running"].samples)).value == 0


def read_spans(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        for resource in json.loads(line)["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                out.extend(scope["spans"])
    return out


def glm_agent_run(*args: str, env: dict[str, str]) -> None:
    """``glm-agent run ARGS`` in a process of its own; it must succeed."""
    out = subprocess.run(
        [sys.executable, "-m", "glm_agent.cli", "run", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr


@needs_shared
@pytest.mark.slow
def test_one_trace_through_a_real_server_process_and_trace_files(tmp_path, spans):
    replies = tmp_path / "replies.json"
    replies.write_text(json.dumps(["\n from the server"] * 2))
    server_trace = tmp_path / "server.jsonl"
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "glm_agent.cli",
            "serve",
            "--model",
            f"scripted:{replies}",
            "--tokenizer",
            str(TOKENIZER),
            "--port",
            str(port),
            "--trace",
            str(server_trace),
            "--log-level",
            "warning",
            "--served-model-name",
            "scripted",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process=server)
        agent = Agent(OpenAIModel(f"http://127.0.0.1:{port}", "scripted"))
        assert agent.run("hello").answer == "from the server"
    finally:
        stop_process(server)  # SIGTERM: the server flushes its spans on the way out
    client_chat = next(s for s in spans.get_finished_spans() if s.name.startswith("chat"))
    served = read_spans(server_trace)
    (server_span,) = [s for s in served if s["name"].startswith("chat")]
    assert server_span["traceId"] == format(client_chat.context.trace_id, "032x")
    assert server_span["parentSpanId"] == format(client_chat.context.span_id, "016x")
    assert server_span["kind"] == "SPAN_KIND_SERVER"
    # glm-agent run --trace FILE: the whole run, read back
    run_trace = tmp_path / "run.jsonl"
    glm_agent_run("--model", f"scripted:{replies}", "--trace", str(run_trace), "hi", env=env)
    names = sorted(s["name"].split(" ")[0] for s in read_spans(run_trace))
    assert names == ["chat", "invoke_agent"]


PHOENIX = os.environ.get(
    "GLM_AGENT_PHOENIX"
)  # Arize Phoenix's `phoenix` command (.ci/run installs it in a venv of its own)


@pytest.mark.slow
@pytest.mark.skipif(
    not PHOENIX and not os.environ.get("GLM_AGENT_REQUIRE_PHOENIX"),
    reason="set GLM_AGENT_PHOENIX to the phoenix command of an arize-phoenix install (CI does)",
)
def test_spans_reach_a_real_phoenix_on_this_machine_over_otlp_http(tmp_path):
    assert PHOENIX, "GLM_AGENT_REQUIRE_PHOENIX is set but GLM_AGENT_PHOENIX is not"
    port, grpc_port = free_port(), free_port()
    phoenix_env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(tmp_path / "phoenix"),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    log = tmp_path / "phoenix.log"
    with log.open("w") as sink:  # a file, not a pipe: nobody reads Phoenix's output while it runs
        phoenix = subprocess.Popen([PHOENIX, "serve"], env=phoenix_env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", process=phoenix, status=200, output=log.read_text)
        replies = tmp_path / "replies.json"
        replies.write_text(json.dumps([call("get_weather", "city='Paris'"), "\n 21 degrees."]))
        tools = tmp_path / "weather_tool.py"
        tools.write_text(
            "from glm_agent import tool\n\n@tool\ndef get_weather(city: str) -> dict:\n"
            '    """Weather.\n\n    Args:\n        city: the city\n    """\n    return {"temp": 21}\n'
        )
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_SERVICE_NAME": "glm-agent-test",
        }
        glm_agent_run("--model", f"scripted:{replies}", "--tools", str(tools), "-y", "hi", env=env)

        def stored() -> list[dict]:
            answer = httpx.get(f"http://127.0.0.1:{port}/v1/projects/default/spans", timeout=10)
            data = answer.json().get("data", []) if answer.status_code == 200 else []
            return data if len(data) >= 3 else []

        from tests._helpers import wait_until

        spans_back = wait_until(stored, timeout=60, what="Phoenix to store the run's spans")
    finally:
        stop_process(phoenix)
    by_name = {s["name"].split(" ")[0]: s for s in spans_back}
    assert set(by_name) == {"invoke_agent", "chat", "execute_tool"}
    root = by_name["invoke_agent"]
    assert by_name["execute_tool"]["parent_id"] == root["context"]["span_id"]
    assert by_name["execute_tool"]["attributes"]["gen_ai.tool.name"] == "get_weather"
    assert len({s["context"]["trace_id"] for s in spans_back}) == 1


def test_a_failed_model_turn_marks_the_chat_and_the_run(spans):
    from glm_agent.errors import ModelError

    with pytest.raises(ModelError):
        Agent(ScriptedModel([]), tools=[get_weather]).run("x")  # no replies: the model fails
    finished = {s.name.split(" ")[0]: s for s in spans.get_finished_spans()}
    assert finished["chat"].status.status_code == StatusCode.ERROR
    assert finished["chat"].attributes["error.type"] == "ModelError"
    assert finished["invoke_agent"].status.status_code == StatusCode.ERROR
