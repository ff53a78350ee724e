"""``--mcp CONFIG`` on the command line: a scripted episode, a bad configuration, Ctrl-C leaves no process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed (pip install glm-agent[mcp])")

from tests._data import REPO
from tests._helpers import wait_gone
from tests.mcp_helpers import SERVER, call


def write_config(tmp_path, pid_file=None):
    server = {"command": sys.executable, "args": [str(SERVER)], "timeout": 60}
    if pid_file is not None:
        server["env"] = {"MCP_TEST_PID_FILE": str(pid_file)}
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"test": server}}), encoding="utf-8")
    return path


def write_replies(tmp_path, replies):
    path = tmp_path / "replies.json"
    path.write_text(json.dumps(replies), encoding="utf-8")
    return path


def glm_agent(*args: str) -> list[str]:
    return [sys.executable, "-m", "glm_agent.cli", *args]


ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_run_with_mcp_calls_the_servers_tool(tmp_path):
    config = write_config(tmp_path)
    replies = write_replies(tmp_path, [call("test__add", "a=40, b=2"), "\n The answer is 42."])
    done = subprocess.run(
        glm_agent("run", "What is 40 + 2?", "--model", f"scripted:{replies}", "--mcp", str(config), "--yes", "--json"),
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    [returned] = [e for e in events if e["type"] == "tool_returned"]
    assert returned["ok"] and json.loads(returned["observation"]) == {"result": 42}
    assert events[-1]["type"] == "final_answer" and "42" in events[-1]["text"]


def test_a_bad_mcp_config_is_one_line_and_exit_code_2(tmp_path):
    config = tmp_path / "mcp.json"
    config.write_text('{"mcpServers": {"x": {"command": "cat", "args": ["${NOPE_NOT_SET}"]}}}', encoding="utf-8")
    replies = write_replies(tmp_path, ["\n hi"])
    done = subprocess.run(
        glm_agent("run", "hi", "--model", f"scripted:{replies}", "--mcp", str(config)),
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in ENV.items() if k != "NOPE_NOT_SET"},
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("glm-agent run: error:") and "NOPE_NOT_SET" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _pids(pid_file) -> list[int]:
    return [int(line) for line in pid_file.read_text().split()] if pid_file.exists() else []


@pytest.mark.slow
def test_ctrl_c_during_an_mcp_call_ends_the_server_and_its_children(tmp_path):
    pid_file = tmp_path / "pids"
    config = write_config(tmp_path, pid_file)
    replies = write_replies(
        tmp_path, [call("test__spawn_child") + "<|assistant|>" + call("test__slow", "seconds=60"), "\n never"]
    )
    process = subprocess.Popen(
        glm_agent("run", "go", "--model", f"scripted:{replies}", "--mcp", str(config), "--yes", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 90
        while len(_pids(pid_file)) < 2 and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.1)
        pids = _pids(pid_file)
        assert len(pids) == 2, "the server and its child should have started"
        for line in process.stdout:  # --json: one event a line, printed as it happens
            event = json.loads(line)
            if event["type"] == "tool_called" and event["call"]["name"] == "test__slow":
                break  # the slow call is under way
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 130
    assert wait_gone(pids, 10) == []


def test_a_program_that_exits_without_closing_leaves_no_server_behind(tmp_path):
    pid_file = tmp_path / "pids"
    script = (
        "import sys\n"
        "from glm_agent.mcp import connect_mcp, MCPServerStdio\n"
        f"spec = MCPServerStdio(sys.executable, [{str(SERVER)!r}], env={{'MCP_TEST_PID_FILE': {str(pid_file)!r}}})\n"
        "tools = connect_mcp({'t': spec})\n"
        "assert tools.call('t__spawn_child').ok\n"
        "print('started', flush=True)\n"  # and exit without closing: the atexit hook ends the servers
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0 and "started" in done.stdout, done.stderr
    pids = _pids(pid_file)
    assert len(pids) == 2
    assert wait_gone(pids, 10) == []
