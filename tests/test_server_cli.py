"""``glm-agent serve`` as a real process, and the ``--model`` spec helper."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import openai
import pytest

from glm_agent.errors import ModelError
from glm_agent.models import OpenAIModel, ScriptedModel, load_chat_model
from tests._data import REPO, SHARED, needs_shared
from tests._helpers import free_port, wait_http

CALL = "calculate\n ```python\ntool_call(expression='6 * 7')\n```"


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "glm_agent.cli", "serve", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@needs_shared
def test_serve_command_serves_scripted_replies_with_file_tools(tmp_path):
    replies = tmp_path / "replies.json"
    replies.write_text(json.dumps([CALL, CALL]), encoding="utf-8")
    port = free_port()
    proc = _cli(
        "--model",
        f"scripted:{replies}",
        "--tokenizer",
        str(SHARED / "tokenizer.model"),
        "--port",
        str(port),
        "--api-key",
        "k",
        "--tools",
        "tools/calculator.py",
        "--mcp-path",
        "/mcp",
        "--log-level",
        "warning",
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, status=200)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        assert [m.id for m in c.models.list()] == ["scripted:replies.json"]
        question = [{"role": "user", "content": "6*7?"}]
        plain = c.chat.completions.create(model="scripted:replies.json", messages=question)
        assert not plain.choices[0].message.tool_calls  # a client gets no call for a tool it did not declare
        assert "calculate" in plain.choices[0].message.content  # (the model's call comes back as text)
        calc = {"type": "function", "function": {"name": "calculate", "parameters": {"type": "object"}}}
        r = c.chat.completions.create(model="scripted:replies.json", messages=question, tools=[calc])
        (call,) = r.choices[0].message.tool_calls
        assert call.function.name == "calculate" and json.loads(call.function.arguments) == {"expression": "6 * 7"}
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def test_serve_tools_need_somewhere_to_be_served(tmp_path):
    replies = tmp_path / "r.json"
    replies.write_text("[]", encoding="utf-8")
    proc = _cli("--model", f"scripted:{replies}", "--tools", "tools/calculator.py")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--tools and --mcp serve tools through --mcp-path or --ui" in err


def test_serve_command_errors_exit_2(tmp_path):
    missing = _cli("--model", f"scripted:{tmp_path / 'nope.json'}")
    _, err = missing.communicate(timeout=60)
    assert missing.returncode == 2 and "scripted model file not found" in err
    replies = tmp_path / "r.json"
    replies.write_text("[]", encoding="utf-8")
    no_tok = _cli("--model", f"scripted:{replies}")
    _, err = no_tok.communicate(timeout=60)
    assert no_tok.returncode == 2 and "--tokenizer" in err


def test_model_specs(tmp_path):
    replies = tmp_path / "r.json"
    replies.write_text(json.dumps(["\n hi"]), encoding="utf-8")
    model = load_chat_model(f"scripted:{replies}")
    assert isinstance(model, ScriptedModel) and model.generate([]) == "\n hi"
    remote = load_chat_model("http://127.0.0.1:9", model="m")
    assert isinstance(remote, OpenAIModel) and remote.base_url == "http://127.0.0.1:9/v1"
    for bad in ("", "scripted:"):
        with pytest.raises(ModelError):
            load_chat_model(bad)
