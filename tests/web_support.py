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
