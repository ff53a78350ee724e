"""MCP over HTTP under attack: off loopback only with a key, Host and Origin checked on every bind address,
no host paths in results. Real ``glm-agent mcp`` / ``glm-agent serve`` processes; raw HTTP for the attacks."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed (pip install glm-agent[mcp])")

from glm_agent.mcp import result_to_mcp
from glm_agent.tools import ToolRegistry, tool
from tests._data import REPO, TOOLS
from tests._helpers import free_port, stop_process, wait_http

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}},
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def glm_agent(*args: str) -> list[str]:
    return [sys.executable, "-m", "glm_agent.cli", *args]


def test_mcp_off_loopback_needs_an_api_key():
    for command in (
        glm_agent("mcp", str(TOOLS), "--transport", "http", "--host", "0.0.0.0", "--port", str(free_port())),
        glm_agent(
            "serve", "--model", "scripted:x.json", "--host", "0.0.0.0", "--mcp-path", "/mcp", "--tools", str(TOOLS)
        ),
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert done.returncode == 2, done
        assert "without --api-key" in done.stderr and "anyone who reaches it" in done.stderr, done.stderr


@pytest.mark.slow
def test_mcp_on_another_loopback_address_checks_host_origin_and_key():
    port = free_port()
    process = subprocess.Popen(
        glm_agent(
            "mcp", str(TOOLS), "--transport", "http", "--host", "127.0.0.2", "--port", str(port), "--api-key", "k-123"
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    url = f"http://127.0.0.2:{port}/mcp"
    try:
        wait_http(url, process)
        keyed = {**HEADERS, "Authorization": "Bearer k-123"}
        assert httpx.post(url, json=INITIALIZE, headers=HEADERS).status_code == 401
        assert httpx.post(url, json=INITIALIZE, headers={**HEADERS, "Authorization": "Bearer wrong"}).status_code == 401
        rebound = httpx.post(url, json=INITIALIZE, headers={**keyed, "Host": f"evil.example:{port}"})
        assert rebound.status_code == 421  # DNS rebinding: the SDK alone checks only 127.0.0.1/localhost/::1
        foreign = httpx.post(url, json=INITIALIZE, headers={**keyed, "Origin": "http://evil.example"})
        assert foreign.status_code == 403
        assert httpx.post(url, json=INITIALIZE, headers=keyed).status_code == 200
    finally:
        stop_process(process)


def test_results_name_files_without_host_paths(tmp_path):
    @tool
    def blob() -> bytes:
        """Some bytes."""
        return b"\x00\x01binary"

    result = ToolRegistry([blob], output_dir=tmp_path).call("blob", {})
    assert str(tmp_path) in result.observation  # the agent's own observation says where the file is
    mcp_result = result_to_mcp(result)
    dumped = mcp_result.model_dump_json()
    assert str(tmp_path) not in dumped and "/tmp" not in dumped
    assert result.files[0].name in dumped
    result.files[0].unlink()
    assert str(tmp_path) not in result_to_mcp(result).model_dump_json()  # an unreadable file too


def test_sigterm_ends_glm_agent_mcp_like_ctrl_c():
    port = free_port()
    process = subprocess.Popen(
        glm_agent("mcp", str(TOOLS), "--transport", "http", "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/mcp", process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 128 + signal.SIGTERM  # the registry's clean-up ran (not the default kill)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
