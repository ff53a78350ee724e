"""The {"mcpServers": ...} configuration, tool naming, and JSON-Schema tools (no server processes)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mcp", reason="the mcp extra is not installed (pip install glm-agent[mcp])")

from glm_agent import ToolRegistry
from glm_agent.errors import MCPConfigError, ToolDefinitionError
from glm_agent.mcp import MCPServerHTTP, MCPServerStdio, load_mcp_config
from glm_agent.tools import Attachment, SchemaTool, ToolOutput
from glm_agent.tools._toolset import prefixed_name


def write(tmp_path, data):
    path = tmp_path / "mcp.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_stdio_and_http_servers_with_variables(tmp_path):
    path = write(
        tmp_path,
        {
            "mcpServers": {
                "git": {
                    "command": "uvx",
                    "args": ["mcp-server-git", "--repository", "${REPO}"],
                    "env": {"TOKEN": "${TOKEN}", "LEVEL": "${LEVEL:-info}"},
                    "cwd": "/tmp",
                    "timeout": 5,
                    "connectTimeout": 7,
                    "excludeTools": ["git_reset"],
                },
                "search": {
                    "url": "https://example.test/mcp",
                    "headers": {"Authorization": "Bearer ${TOKEN}"},
                    "callTimeout": 9,
                    "needsApproval": ["send_mail"],
                },
                "old": {"command": "x", "disabled": True},
                "extra": {"command": "y", "autoApprove": ["a"]},
            }
        },
    )
    servers = load_mcp_config(path, environ={"REPO": "/src/repo", "TOKEN": "s3cret"})
    assert list(servers) == ["git", "search", "extra"]
    git = servers["git"]
    assert isinstance(git, MCPServerStdio)
    assert git.args == ("mcp-server-git", "--repository", "/src/repo")
    assert git.env == {"TOKEN": "s3cret", "LEVEL": "info"} and git.cwd == "/tmp"
    assert (git.call_timeout, git.connect_timeout, git.exclude_tools) == (5.0, 7.0, frozenset({"git_reset"}))
    search = servers["search"]
    assert isinstance(search, MCPServerHTTP) and search.headers == {"Authorization": "Bearer s3cret"}
    assert search.call_timeout == 9.0  # callTimeout in the file is call_timeout in Python
    assert search.approval_needed("send_mail") and not search.approval_needed("lookup")
    assert not git.approval_needed("git_log")
    assert MCPServerStdio(command="x", needs_approval=True).approval_needed("anything")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", r"not valid JSON \(line 1"),
        ({"servers": {}}, '"mcpServers"'),
        ({"mcpServers": {"a": {"command": "x", "args": ["${MISSING}"]}}}, r"\$\{MISSING\}.*not set.*MISSING:-default"),
        ({"mcpServers": {"a": {"url": "http://h/mcp", "type": "sse"}}}, "SSE transport is not supported"),
        ({"mcpServers": {"a": {"args": []}}}, "'a': needs a command"),
        ({"mcpServers": {"a": {"command": "x", "url": "http://h"}}}, "not both"),
        ({"mcpServers": {"a": {"url": "ftp://h"}}}, "http"),
        ({"mcpServers": {"a": {"command": "x", "timeout": 0}}}, "timeout must be a positive number"),
        ({"mcpServers": {"a": {"command": "x", "args": "y"}}}, "args must be a list"),
        ({"mcpServers": {"my__server": {"command": "x"}}}, "'my__server' is not usable"),
    ],
)
def test_bad_configurations_say_what_to_fix(tmp_path, data, message):
    with pytest.raises(MCPConfigError, match=message):
        load_mcp_config(write(tmp_path, data), environ={})


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(MCPConfigError, match="cannot read the MCP configuration"):
        load_mcp_config(tmp_path / "nope.json")


def test_names_are_prefixed_sanitised_and_bounded():
    assert prefixed_name("git", "git_status") == "git__git_status"
    assert prefixed_name("fs", "read.file/v2") == "fs__read_file_v2"
    with pytest.raises(ToolDefinitionError, match="longer than 64 characters"):
        prefixed_name("server", "t" * 60)


SCHEMA = {
    "type": "object",
    "properties": {
        "event": {"$ref": "#/$defs/Event"},
        "count": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
    },
    "required": ["event"],
    "additionalProperties": False,
    "$defs": {
        "Event": {
            "type": "object",
            "properties": {"title": {"type": "string"}, "day": {"enum": ["mon", "tue"]}},
            "required": ["title", "day"],
        }
    },
}


def test_a_schema_tool_validates_with_refs_and_names_every_problem():
    seen = []
    schema_tool = SchemaTool("plan", SCHEMA, lambda **kw: seen.append(kw) or "planned", description="Plan it.")
    registry = ToolRegistry([schema_tool])
    assert registry.chatglm3_schemas() == [{"name": "plan", "description": "Plan it.", "parameters": SCHEMA}]
    ok = registry.call("plan", {"event": {"title": "x", "day": "mon"}, "count": None})
    assert ok.ok and ok.observation == "planned" and seen == [{"event": {"title": "x", "day": "mon"}, "count": None}]
    bad = registry.call("plan", {"event": {"day": "fri"}, "count": "3", "colour": "red"})
    assert bad.error == "invalid_arguments" and len(seen) == 1
    text = bad.observation
    assert "- colour: unexpected argument; this tool takes event, count" in text
    assert "- event.title: required field is missing" in text
    assert "- event.day: 'fri' is not one of ['mon', 'tue']" in text
    assert "- count:" in text and "integer or null" in text
    missing = registry.call("plan", {})
    assert "- event: required argument is missing" in missing.observation


def test_a_schema_tool_refuses_an_invalid_schema():
    with pytest.raises(ToolDefinitionError, match="not a valid JSON Schema"):
        SchemaTool("bad", {"type": "objekt"}, lambda: None)


def test_tool_output_parts_become_text_and_files(tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 20
    wav = b"RIFF" + b"0" * 20

    def draw() -> ToolOutput:
        return ToolOutput(["a chart", Attachment(png, "image/png"), Attachment(wav, "audio/wav", label="voice")])

    def refuse() -> ToolOutput:
        return ToolOutput.error("quota exceeded")

    registry = ToolRegistry([draw, refuse], output_dir=tmp_path)
    result = registry.call("draw")
    assert result.ok and [p.suffix for p in result.files] == [".png", ".wav"]
    assert result.files[0].read_bytes() == png
    lines = result.observation.splitlines()
    assert lines[0] == "a chart" and lines[1].startswith("[image/png, 28 bytes saved to ")
    assert lines[2].startswith("[voice, audio/wav, 24 bytes saved to ")
    failed = registry.call("refuse")
    assert not failed.ok and failed.error == "tool_error"
    assert failed.observation == "Error: tool 'refuse' reported an error: quota exceeded"
