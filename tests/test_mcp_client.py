"""MCP servers' tools in a ToolRegistry: real server processes (stdio and HTTP), no mocks."""

from __future__ import annotations

import asyncio
import json
import sys

import psutil
import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed (pip install glm-agent[mcp])")

from glm_agent import Agent, ToolRegistry, tool
from glm_agent.errors import MCPConnectionError, ToolDefinitionError
from glm_agent.mcp import MCPConnection, MCPServerStdio, connect_mcp
from glm_agent.mcp._processes import tagged_processes
from glm_agent.models import ScriptedModel
from tests._helpers import wait_gone, wait_until
from tests.mcp_helpers import HTTPTestServer, alive, call, result_value, stdio_spec


@pytest.fixture(scope="module")
def registry():
    with connect_mcp({"test": stdio_spec(call_timeout=20)}) as tools:
        yield tools


@pytest.fixture(scope="module")
def http_server():
    server = HTTPTestServer()
    yield server
    server.close()


# -- names and schemas ----------------------------------------------------------------------------
def test_tools_are_prefixed_by_server_and_keep_their_schemas(registry):
    assert {"test__echo", "test__add", "test__red_pixel", "test__schedule", "test__crash"} <= set(registry.names)
    tool_ = registry["test__schedule"]
    assert tool_.source_name == "schedule"
    schema = tool_.parameters
    assert "$defs" in schema and {"Event", "Place"} <= set(schema["$defs"])
    assert schema["properties"]["event"] == {"$ref": "#/$defs/Event"}
    assert "anyOf" in schema["properties"]["attendees"]
    shown = next(s for s in registry.chatglm3_schemas() if s["name"] == "test__schedule")
    assert shown["parameters"] == schema and shown["description"].startswith("Schedule an event")


def test_a_name_clash_is_a_clear_error_and_adds_nothing(registry):
    @tool(name="test__echo")
    def echo(text: str) -> str:
        """Local echo."""
        return text

    mine = ToolRegistry([echo])
    connection = registry.toolsets[0]
    with pytest.raises(ToolDefinitionError, match="clashes with a tool already registered.*another prefix"):
        mine.add_toolset(connection, prefix="test")
    assert mine.names == ["test__echo"]
    assert not mine.toolsets


# -- results ------------------------------------------------------------------------------------
def test_text_and_structured_results(registry):
    assert registry.call("test__echo", {"text": "héllo"}).observation == '{"result": "héllo"}'
    added = registry.call("test__add", {"a": 2, "b": 3})
    assert added.ok and added.value == {"result": 5} and added.observation == '{"result": 5}'


def test_an_image_becomes_a_file(registry):
    result = registry.call("test__red_pixel")
    assert result.ok and len(result.files) == 1
    assert result.files[0].suffix == ".png" and result.files[0].read_bytes().startswith(b"\x89PNG")
    assert str(result.files[0]) in result.observation and "image/png" in result.observation


def test_is_error_results_fail_with_the_servers_text(registry):
    failed = registry.call("test__fail", {"message": "the disk is full"})
    assert not failed.ok and failed.error == "tool_error"
    assert failed.observation.startswith("Error:") and "the disk is full" in failed.observation
    both = registry.call("test__report_error", {"message": "first line"})
    assert not both.ok and "first line\nsecond line" in both.observation


def test_resources_are_summarised(registry):
    result = registry.call("test__resources")
    assert result.ok
    assert "[resource file:///notes.txt (text/plain)]\nhello notes" in result.observation
    assert "[resource link 'report': file:///report.pdf, application/pdf]" in result.observation
    assert [p.suffix for p in result.files] == [".png"]


def test_long_results_are_truncated_like_any_tool(registry):
    result = registry.call("test__long_text", {"size": 10_000})
    assert result.ok and result.truncated
    assert len(result.full_text) > 10_000 and "truncated" in result.observation


def test_arguments_are_checked_against_the_servers_schema_before_the_call(registry):
    missing = registry.call("test__schedule", {"event": {"title": "lunch"}})
    assert missing.error == "invalid_arguments" and "event.where: required field is missing" in missing.observation
    wrong = registry.call("test__add", {"a": "two", "b": 3})
    assert wrong.error == "invalid_arguments" and "- a:" in wrong.observation and "integer" in wrong.observation
    ok = registry.call(
        "test__schedule", {"event": {"title": "lunch", "where": {"city": "Rome"}}, "attendees": ["Ann", "Bo"]}
    )
    assert ok.ok and result_value(ok.observation) == "meeting 'lunch' in Rome with Ann, Bo"


def test_calls_from_many_threads_share_one_connection(registry):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: registry.call("test__echo", {"text": f"n{i}"}), range(24)))
    assert [result_value(r.observation) for r in results] == [f"n{i}" for i in range(24)]


# -- timeouts and crashes -------------------------------------------------------------------------
def test_a_hung_call_times_out_and_the_connection_stays_usable(registry):
    slow = registry.call("test__slow", {"seconds": 30}, timeout=1)
    assert not slow.ok and slow.error == "timeout" and "1 s" in slow.observation
    assert registry.call("test__echo", {"text": "still here"}).ok


def test_a_crash_is_reported_then_the_server_restarts_once_and_its_children_end():
    with connect_mcp({"c": stdio_spec()}) as tools:
        first_pid = result_value(tools.call("c__pid").observation)
        child = result_value(tools.call("c__spawn_child").observation)
        assert isinstance(first_pid, int) and isinstance(child, int) and alive(child)
        crashed = tools.call("c__crash")
        assert not crashed.ok and crashed.error == "tool_error"
        assert "stopped during the call" in crashed.observation and "restarted on the next call" in crashed.observation
        assert "crashing on purpose" in crashed.observation  # the server's stderr is quoted
        again = tools.call("c__echo", {"text": "back"})
        assert again.ok and result_value(again.observation) == "back"
        assert result_value(tools.call("c__pid").observation) != first_pid
        assert wait_gone([first_pid, child]) == []
        assert tools.toolsets[0].restarts == 1


def test_a_failed_restart_is_not_retried(tmp_path):
    flag = tmp_path / "allow"
    flag.write_text("1")
    # the server starts only while the flag file exists
    script = f"import os,runpy,sys; os.path.exists({str(flag)!r}) or sys.exit(5); runpy.run_path({str(stdio_spec().args[0])!r}, run_name='__main__')"
    with connect_mcp({"f": MCPServerStdio(sys.executable, ["-c", script], connect_timeout=20)}) as tools:
        flag.unlink()
        assert "restarted on the next call" in tools.call("f__crash").observation
        second = tools.call("f__echo", {"text": "x"})
        assert not second.ok and "restart failed" in second.observation
        third = tools.call("f__echo", {"text": "x"})
        assert not third.ok and "not available" in third.observation


def test_closing_ends_the_server_and_every_child_it_started():
    tools = connect_mcp({"p": stdio_spec()})
    connection = tools.toolsets[0]
    server_pid = result_value(tools.call("p__pid").observation)
    children = [result_value(tools.call("p__spawn_child").observation) for _ in range(2)]
    pids = [server_pid, *children]
    assert all(alive(p) for p in pids)
    # a child that is still exec'ing has no readable environment for a moment: wait until all are seen
    wait_until(lambda: set(pids) <= set(tagged_processes(connection.tag)), timeout=10, what="the tagged processes")
    tools.close()
    assert wait_gone(pids, 1.0) == []
    assert tagged_processes(connection.tag) == []
    assert not tools.names and connection.state == "closed"


def test_connecting_to_a_missing_command_is_a_clear_error():
    with pytest.raises(MCPConnectionError, match="'nope' could not be started.*no-such-mcp-server"):
        connect_mcp({"nope": MCPServerStdio("no-such-mcp-server-binary")})


@pytest.mark.slow
def test_a_server_that_never_answers_times_out_and_is_ended():
    spec = MCPServerStdio(sys.executable, ["-c", "import time; time.sleep(120)"], connect_timeout=1.5)
    connection = MCPConnection("mute", spec)
    with pytest.raises(MCPConnectionError, match="no MCP handshake within 1.5 s"):
        connection.start()
    connection.close()
    assert wait_gone(tagged_processes(connection.tag), 1.0) == []


def test_one_failing_server_closes_the_others():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(MCPConnectionError, match="'bad' could not be started"):
        connect_mcp({"good": stdio_spec(), "bad": MCPServerStdio("no-such-mcp-server-binary")})
    started = [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert wait_gone(started, 10) == []


# -- HTTP ---------------------------------------------------------------------------------------
def test_streamable_http_server(http_server):
    spec = http_server.spec(call_timeout=10)
    with connect_mcp({"web": spec}) as tools:
        assert tools.call("web__add", {"a": 1, "b": 41}).value == {"result": 42}
        image = tools.call("web__red_pixel")
        assert image.ok and image.files[0].read_bytes().startswith(b"\x89PNG")
        failed = tools.call("web__fail", {"message": "over http"})
        assert not failed.ok and "over http" in failed.observation
        slow = tools.call("web__slow", {"seconds": 20}, timeout=1)
        assert slow.error == "timeout"
        assert tools.call("web__echo", {"text": "usable"}).ok


def test_http_config_with_headers_and_variables(http_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_MCP_PORT", str(http_server.port))
    config = tmp_path / "mcp.json"
    config.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "web": {"url": "http://127.0.0.1:${TEST_MCP_PORT}/mcp", "headers": {"X-Token": "${TOKEN:-t0}"}},
                    "off": {"command": "no-such-binary", "disabled": True},
                }
            }
        )
    )
    with connect_mcp(config) as tools:
        assert tools.call("web__echo", {"text": "cfg"}).ok
        assert not any(n.startswith("off__") for n in tools.names)


# -- agents -------------------------------------------------------------------------------------
def test_an_agent_episode_calls_an_mcp_tool(registry):
    model = ScriptedModel([call("test__add", "a=20, b=22"), "\n The sum is 42."])
    agent = Agent(model, tools=registry)
    result = agent.run("What is 20 + 22?")
    assert result.answer == "The sum is 42."
    [returned] = [e for e in result.events if type(e).__name__ == "ToolReturned"]
    assert returned.ok and returned.observation == '{"result": 42}'
    system = agent.messages[0]
    assert any(t["name"] == "test__add" for t in system.tools)


async def test_an_async_agent_calls_mcp_tools(registry):
    model = ScriptedModel([call("test__echo", "text='async'"), "\n done"])
    result = await Agent(model, tools=registry).arun("echo")
    [returned] = [e for e in result.events if type(e).__name__ == "ToolReturned"]
    assert returned.ok and returned.observation == '{"result": "async"}'
    slow = await registry.acall("test__slow", {"seconds": 30}, timeout=1)
    assert slow.error == "timeout"


async def test_a_sync_agent_inside_a_running_event_loop(registry):
    asyncio.get_running_loop()  # as in Jupyter: a loop is running in this thread
    model = ScriptedModel([call("test__red_pixel"), "\n a red pixel"])
    result = Agent(model, tools=registry).run("draw")
    [returned] = [e for e in result.events if type(e).__name__ == "ToolReturned"]
    assert returned.ok and returned.files


def test_tools_list_changed_refreshes_the_agent_between_runs():
    model = ScriptedModel([call("s__add_late_tool"), "\n added", call("s__late"), "\n it answered"])
    with Agent(model, mcp={"s": stdio_spec()}) as agent:
        assert "s__late" not in agent.tools
        first = agent.run("add a tool")
        assert first.answer == "added"
        second = agent.run("call it")
        assert "s__late" in agent.tools
        assert any(t["name"] == "s__late" for t in agent.messages[0].tools)
        [returned] = [e for e in second.events if type(e).__name__ == "ToolReturned"]
        assert returned.ok and result_value(returned.observation) == "late tool here"
        connection = agent.tools.toolsets[0]
        pid = connection.tag
    assert tagged_processes(pid) == []  # closing the agent ended its server
