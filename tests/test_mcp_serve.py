"""Our tools served over MCP (``glm-agent mcp``, ``glm-agent serve --mcp-path``), called by the official SDK client."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap

import httpx
import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed (pip install glm-agent[mcp])")

import anyio
from mcp import Client, StdioServerParameters

from glm_agent.mcp import MCPServerHTTP, MCPServerStdio, connect_mcp
from tests._data import REPO, SHARED, needs_shared
from tests._helpers import free_port, stop_process, wait_http

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)

EXTRA_TOOLS = textwrap.dedent(
    f'''
    from glm_agent import tool

    @tool
    def pixel() -> bytes:
        """A 1x1 PNG."""
        return {PNG!r}

    @tool
    def explode(reason: str) -> str:
        """Always raises."""
        raise RuntimeError(reason)

    @tool
    def point() -> dict:
        """A point."""
        return {{"x": 1, "y": [2, 3]}}
    '''
)


@pytest.fixture
def extra_tools(tmp_path):
    path = tmp_path / "extra_tools.py"
    path.write_text(EXTRA_TOOLS, encoding="utf-8")
    return path


def glm_agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "glm_agent.cli", *args]


async def _exercise(client: Client) -> None:
    listed = await client.list_tools()
    tools = {t.name: t for t in listed.tools}
    assert {"calculate", "current_time", "roll_dice", "pixel", "explode"} <= set(tools)
    assert tools["calculate"].input_schema["properties"]["expression"]["type"] == "string"
    assert tools["calculate"].description

    total = await client.call_tool("calculate", {"expression": "2 * (3 + 4)"})
    assert not total.is_error and total.content[0].text == "14"

    bad = await client.call_tool("calculate", {"expresion": "1"})
    assert bad.is_error and "expresion" in bad.content[0].text and "expression" in bad.content[0].text

    extra = await client.call_tool("calculate", {"expression": "1", "precision": 3})
    assert extra.is_error and "precision: unexpected argument" in extra.content[0].text  # the extra one is named

    structured = await client.call_tool("point", {})
    assert structured.structured_content == {"x": 1, "y": [2, 3]}  # a dict result is structuredContent too

    boom = await client.call_tool("explode", {"reason": "the fuse was lit"})
    assert boom.is_error and "RuntimeError: the fuse was lit" in boom.content[0].text

    image = await client.call_tool("pixel", {})
    assert not image.is_error
    [picture] = [c for c in image.content if c.type == "image"]
    assert picture.mime_type == "image/png" and base64.b64decode(picture.data) == PNG


def test_glm_agent_mcp_serves_our_tools_over_stdio_to_the_sdk_client(extra_tools):
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "glm_agent.cli", "mcp", str(REPO / "tools"), str(extra_tools)],
        env={"PYTHONPATH": str(REPO)},
    )

    async def main() -> None:
        async with Client(params, mode="legacy") as client:
            await _exercise(client)

    anyio.run(main)


def test_glm_agent_mcp_over_http_and_back_into_a_registry(extra_tools):
    port = free_port()
    process = subprocess.Popen(
        glm_agent_command("mcp", str(REPO / "tools"), str(extra_tools), "--transport", "http", "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        wait_http(f"http://127.0.0.1:{port}/", process)

        async def main() -> None:
            async with Client(url, mode="legacy") as client:
                await _exercise(client)

        anyio.run(main)
        # both directions: our own MCP client on our own MCP server
        with connect_mcp({"ours": MCPServerHTTP(url)}) as tools:
            assert tools.call("ours__calculate", {"expression": "6 * 7"}).observation == "42"
            boom = tools.call("ours__explode", {"reason": "again"})
            assert not boom.ok and "RuntimeError: again" in boom.observation
            assert tools.call("ours__pixel").files[0].read_bytes() == PNG
    finally:
        stop_process(process)


def test_our_server_through_our_client_over_stdio(extra_tools):
    spec = MCPServerStdio(
        sys.executable, ["-m", "glm_agent.cli", "mcp", str(extra_tools)], env={"PYTHONPATH": str(REPO)}
    )
    with connect_mcp({"x": spec}) as tools:
        assert sorted(tools.names) == ["x__explode", "x__pixel", "x__point"]
        missing = tools.call("x__explode", {})
        assert missing.error == "invalid_arguments"  # checked here, against the served schema
        point = tools.call("x__point", {})
        assert point.ok and point.value == {"x": 1, "y": [2, 3]}  # structuredContent, back as the value


@needs_shared
@pytest.mark.slow
def test_serve_mounts_the_mcp_endpoint_next_to_the_openai_api(tmp_path, extra_tools):
    replies = tmp_path / "replies.json"
    replies.write_text(json.dumps(["\n hello"]), encoding="utf-8")
    port = free_port()
    process = subprocess.Popen(
        glm_agent_command(
            "serve",
            "--model",
            f"scripted:{replies}",
            "--tokenizer",
            str(SHARED / "tokenizer.model"),
            "--tools",
            str(extra_tools),
            "--mcp-path",
            "/mcp",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", process)
        assert httpx.get(f"{base}/v1/models").status_code == 200

        async def main() -> None:
            async with Client(f"{base}/mcp", mode="legacy") as client:
                names = {t.name for t in (await client.list_tools()).tools}
                assert names == {"pixel", "explode", "point"}
                boom = await client.call_tool("explode", {"reason": "mounted"})
                assert boom.is_error and "mounted" in boom.content[0].text

        anyio.run(main)
    finally:
        stop_process(process)
