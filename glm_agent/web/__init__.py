"""The browser UI (Gradio): ChatGLM3's Chat / Tools / Code Interpreter demo, one Agent and kernel per tab.

>>> from glm_agent.web import ModelSource, WebConfig, serve_web
>>> serve_web(WebConfig(ModelSource.from_spec("scripted:examples/scripted/code_analysis.json"),
...                     code_interpreter=True))  # doctest: +SKIP

Needs the ``web`` extra (``pip install 'glm-agent[web]'``). The UI owns no agent logic: it
renders :mod:`glm_agent.events` and collects input.
"""

from __future__ import annotations

from glm_agent.errors import SessionLimitError
from glm_agent.web._config import ModelSource, WebConfig
from glm_agent.web._queue import ModelQueue, QueuedModel
from glm_agent.web._render import ChatView
from glm_agent.web._server import WebUI, check_bind, create_web_app, mount_web_ui, parse_auth, serve_web
from glm_agent.web._sessions import SessionManager, WebSession

__all__ = [
    "WebConfig",
    "ModelSource",
    "create_web_app",
    "mount_web_ui",
    "serve_web",
    "check_bind",
    "parse_auth",
    "WebUI",
    "SessionManager",
    "WebSession",
    "SessionLimitError",
    "ChatView",
    "ModelQueue",
    "QueuedModel",
]
