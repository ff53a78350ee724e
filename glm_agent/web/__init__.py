"""The browser UI (Gradio): ChatGLM3's Chat / Tools / Code Interpreter demo, one Agent and kernel per tab.

>>> from glm_agent.web import ModelSource, WebConfig, serve_web
>>> serve_web(WebConfig(ModelSource.from_spec("scripted:examples/scripted/code_analysis.json"),
...                     code_interpreter=True))  # doctest: +SKIP

Needs the ``web`` extra (``pip install 'glm-agent[web]'``). The UI owns no agent logic: it
renders :mod:`glm_agent.events` and collects input. It sits behind a door of its own
(:class:`Door`): Host and Origin checks, only the routes the page uses, sessions bound to the
browser that opened them, bounded requests, uploads and queue joins.
"""

from __future__ import annotations

from glm_agent.errors import SessionForbidden, SessionLimitError, UploadRefused
from glm_agent.web._config import ModelSource, WebConfig
from glm_agent.web._door import Door, UIGuard
from glm_agent.web._login import Login, check_bind
from glm_agent.web._manager import SessionManager
from glm_agent.web._queue import ModelQueue, QueuedModel
from glm_agent.web._render import ChatView
from glm_agent.web._server import WebUI, create_web_app, mount_web_ui, serve_web
from glm_agent.web._sessions import Owner, WebSession

__all__ = [
    "WebConfig",
    "ModelSource",
    "create_web_app",
    "mount_web_ui",
    "serve_web",
    "check_bind",
    "Login",
    "WebUI",
    "Door",
    "UIGuard",
    "SessionManager",
    "WebSession",
    "Owner",
    "SessionForbidden",
    "SessionLimitError",
    "UploadRefused",
    "ChatView",
    "ModelQueue",
    "QueuedModel",
]
