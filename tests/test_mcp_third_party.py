"""A third-party MCP server from PyPI (``mcp-server-time``, on its own SDK version) in its own venv."""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path

import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed (pip install glm-agent[mcp])")

from glm_agent import Agent
from glm_agent.mcp import MCPServerStdio, connect_mcp
from glm_agent.mcp._processes import tagged_processes
from glm_agent.models import ScriptedModel
from tests.mcp_helpers import call

PACKAGE = "mcp-server-time"
# A cache outside the repo, so the venv is made once per machine (CI makes it on its first run).
VENV = Path(os.environ.get("GLM_AGENT_TEST_MCP_TIME_VENV", Path.home() / ".cache" / "glm-agent-test-mcp-server-time"))
_UNREACHABLE = ("Could not find a version", "No matching distribution", "Failed to establish", "Network is unreachable")


@pytest.fixture(scope="module")
def time_server() -> MCPServerStdio:
    executable = VENV / "bin" / PACKAGE
    if not executable.exists():
        venv.create(VENV, with_pip=True, clear=True)
        done = subprocess.run(
            [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", PACKAGE],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            if any(marker in done.stderr for marker in _UNREACHABLE):
                pytest.skip(f"PyPI is unreachable, so {PACKAGE} cannot be installed: {done.stderr.strip()[-300:]}")
            pytest.fail(f"pip install {PACKAGE} failed:\n{done.stderr[-2000:]}")
    return MCPServerStdio(str(executable), ["--local-timezone", "UTC"], connect_timeout=60)


def test_a_pypi_server_lists_and_answers(time_server):
    with connect_mcp({"time": time_server}) as tools:
        assert {"time__get_current_time", "time__convert_time"} <= set(tools.names)
        assert "timezone" in tools["time__get_current_time"].parameters["properties"]
        result = tools.call("time__get_current_time", {"timezone": "Asia/Tokyo"})
        assert result.ok, result.observation
        answer = json.loads(result.observation)
        assert answer["timezone"] == "Asia/Tokyo" and "datetime" in answer
        wrong = tools.call("time__get_current_time", {"timezone": "Mars/Olympus"})
        assert not wrong.ok and "Mars/Olympus" in wrong.observation
        tag = tools.toolsets[0].tag
        assert tagged_processes(tag)
    assert tagged_processes(tag) == []


def test_an_agent_converts_time_with_the_pypi_server(time_server):
    model = ScriptedModel(
        [
            call("time__convert_time", "source_timezone='Europe/Paris', time='09:30', target_timezone='Asia/Tokyo'"),
            "\n It is 17:30 or 16:30 in Tokyo, depending on daylight saving time.",
        ]
    )
    with Agent(model, mcp={"time": time_server}) as agent:
        result = agent.run("09:30 in Paris is what time in Tokyo?")
    [returned] = [e for e in result.events if type(e).__name__ == "ToolReturned"]
    assert returned.ok and "Asia/Tokyo" in returned.observation
