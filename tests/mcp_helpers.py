"""Helpers for the MCP tests: the test server as stdio or HTTP, process checks, scripted calls."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from glm_agent.mcp import MCPServerHTTP, MCPServerStdio
from tests._helpers import free_port, pid_gone, stop_process, wait_http

SERVER = Path(__file__).resolve().parent / "mcp_test_server.py"


def stdio_spec(**options: float) -> MCPServerStdio:
    return MCPServerStdio(sys.executable, [str(SERVER)], **options)  # type: ignore[arg-type]


class HTTPTestServer:
    """The test server over streamable HTTP in a subprocess on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER), "http", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_http(self.url, self.process, 60)
        except BaseException:
            self.close()
            raise

    def spec(self, **options: float) -> MCPServerHTTP:
        return MCPServerHTTP(self.url, **options)  # type: ignore[arg-type]

    def close(self) -> None:
        stop_process(self.process, 10)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has ended)."""
    return not pid_gone(pid)


def result_value(observation: str) -> object:
    """The ``result`` of a structured MCP answer (``{"result": ...}``)."""
    return json.loads(observation)["result"]


def call(name: str, args: str = "") -> str:
    """A ChatGLM3 tool-call reply segment."""
    return f"{name}\n ```python\ntool_call({args})\n```"
