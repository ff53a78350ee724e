"""Shared parts of the web UI tests: a routed scripted model, the UI on 127.0.0.1, a real headless Chromium."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from glm_agent.messages import Message, ObservationMessage, UserMessage
from glm_agent.models import ScriptedModel
from glm_agent.tools import ToolRegistry, tool

#: Debian's chromium-headless-shell (`.ci/run` installs it with apt); never a downloaded browser.
CHROMIUM_CANDIDATES = ("/usr/bin/chromium-headless-shell", "/usr/lib/chromium/chromium-headless-shell")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def visible(html_text: str) -> str:
    """The text a reader sees in one of the chat's HTML messages (tags dropped, entities decoded, trimmed)."""
    import html
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", html_text)).strip()


def chromium_path() -> str | None:
    found = os.environ.get("GLM_AGENT_CHROMIUM") or shutil.which("chromium-headless-shell")
    if found:
        return found
    return next((p for p in CHROMIUM_CANDIDATES if Path(p).is_file()), None)


# `.ci/run` sets GLM_AGENT_REQUIRE_BROWSER=1: there a missing browser fails the tests instead of skipping them
needs_browser = pytest.mark.skipif(
    chromium_path() is None and not os.environ.get("GLM_AGENT_REQUIRE_BROWSER"),
    reason="Debian's chromium-headless-shell is not installed (apt-get install -y chromium-headless-shell)",
)


@tool
def get_weather(city: str) -> dict:
    """Get the current weather in a city.

    Args:
        city: The city name, e.g. "Paris".
    """
    return {"city": city, "temperature": 21, "sky": "clear"}


def tools() -> ToolRegistry:
    return ToolRegistry([get_weather])


def code_reply(code: str, thought: str = "") -> str:
    """A raw ChatGLM3 reply that runs ``code`` in the interpreter."""
    return f"{thought}<|assistant|>interpreter\n```python\n{code}\n```"


def tool_reply(name: str, args: str, thought: str = "") -> str:
    return f"{thought}<|assistant|>{name}\n```python\ntool_call({args})\n```"


class Router:
    """A reply function for :class:`ScriptedModel`: the script is chosen by a keyword in the user's
    last message, and the reply by how many observations followed it (one script per kind of test,
    so that one server serves a whole test module)."""

    def __init__(self, scripts: dict[str, list[str]], default: str = "Hello from the scripted model.") -> None:
        self.scripts = scripts
        self.default = default

    def __call__(self, messages: list[Message]) -> str:
        last_user = max(i for i, m in enumerate(messages) if isinstance(m, UserMessage))
        text = messages[last_user].content
        step = sum(isinstance(m, ObservationMessage) for m in messages[last_user:])
        for keyword, replies in self.scripts.items():
            if keyword in text:
                return replies[min(step, len(replies) - 1)]
        return self.default

    def factory(self) -> Callable[[], Any]:
        return lambda: ScriptedModel(self, label="scripted:test")


def kernel_processes() -> list[psutil.Process]:
    """Kernel supervisors and kernels that are descendants of this test process."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if "_launch.py" in cmdline or "ipykernel_launcher" in cmdline:
            found.append(proc)
    return found


@contextmanager
def browser() -> Iterator[Any]:
    """A real headless Chromium (Debian's), closed on exit."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("chromium-headless-shell is required here: apt-get install -y chromium-headless-shell")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class GradioPage:
    """Gradio's queue protocol over raw HTTP, as the browser page speaks it (a hostile client can speak it too).

    ``cookie``: load the page first, so the door gives this client its cookie (a fresh client each
    time). ``headers`` go on every request (e.g. a foreign ``Origin``). ``bytes_read`` counts what
    the event streams delivered.
    """

    def __init__(
        self,
        url: str,
        *,
        cookie: bool = True,
        headers: dict[str, str] | None = None,
        login: tuple[str, str] | None = None,
    ) -> None:
        import secrets

        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=120, headers=headers or {})
        if login is not None:
            reply = self.http.post("/login", data={"username": login[0], "password": login[1]})
            assert reply.status_code == 200, reply.text
        if cookie:
            self.http.get("/")
        config = self.http.get("/config")
        assert config.status_code == 200, config.text
        self.config = config.json()
        self.fns = {d["api_name"]: d["id"] for d in self.config["dependencies"] if d.get("api_name")}
        self.load_fn = next(d["id"] for d in self.config["dependencies"] if any(t[1] == "load" for t in d["targets"]))
        self.session_hash = secrets.token_hex(6)
        self.bytes_read = 0

    def close(self) -> None:
        self.http.close()

    def join(self, fn: int | str, data: list[Any], session_hash: str | None = None) -> Any:
        fn_index = self.fns[fn] if isinstance(fn, str) else fn
        body = {
            "data": data,
            "fn_index": fn_index,
            "session_hash": session_hash or self.session_hash,
            "event_data": None,
            "trigger_id": None,
        }
        return self.http.post("/gradio_api/queue/join", json=body)

    def call(self, fn: int | str, data: list[Any], session_hash: str | None = None) -> list[Any]:
        """Join and read the session's stream until this event completes; its last output data."""
        import json as _json

        joined = self.join(fn, data, session_hash)
        assert joined.status_code == 200, joined.text
        event_id = joined.json()["event_id"]
        last: list[Any] = []
        params = {"session_hash": session_hash or self.session_hash}
        with self.http.stream("GET", "/gradio_api/queue/data", params=params) as stream:
            assert stream.status_code == 200, stream.read()
            for line in stream.iter_lines():
                self.bytes_read += len(line) + 1
                if not line.startswith("data:"):
                    continue
                message = _json.loads(line[5:])
                if message.get("event_id") != event_id:
                    continue
                output = message.get("output") or {}
                if "data" in output:
                    last = output["data"]
                if message.get("msg") == "process_completed":
                    if not message.get("success", True):
                        raise AssertionError(f"the event failed: {output}")
                    return last
        raise AssertionError("the event stream ended before the event completed")

    def load(self) -> list[Any]:
        return self.call(self.load_fn, [])

    def send(self, text: str, mode: str = "Chat", ask: bool = False) -> list[Any]:
        return self.call("send", [text, mode, ask, "", 0.8, 0.8, 1024])

    def upload(self, name: str, content: bytes) -> list[str]:
        reply = self.http.post("/gradio_api/upload", files=[("files", (name, content))])
        assert reply.status_code == 200, reply.text
        return list(reply.json())

    def attach(self, paths: list[str]) -> list[Any]:
        files = [{"path": p, "orig_name": Path(p).name, "meta": {"_type": "gradio.FileData"}} for p in paths]
        return self.call("upload", [files])
