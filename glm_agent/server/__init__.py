"""An OpenAI-compatible HTTP server over any chat backend (``glm-agent serve``).

Public: :func:`create_app` (the FastAPI app), :func:`serve` (run it until interrupted),
:class:`BackgroundServer` (run an app in a thread: tests, benchmarks, notebooks), :class:`APIError`.

Routes: ``GET /health`` (no key needed; answers while generating), ``GET /v1/models``,
``POST /v1/chat/completions`` (tools, ``tool_choice``, streaming tool calls) and
``POST /v1/completions`` (a text prompt or token ids; the vLLM-compatible subset).

Semantics worth knowing (ChatGLM3 has no constrained decoding here):
- ``tool_choice``: ``auto`` (default) offers the tools; ``none`` leaves them out of the prompt and
  returns any call as text; ``required`` / a named function restrict the prompt's tools (named: only
  that one) but cannot force a call: a reply without one comes back as ordinary content.
- A call that does not parse, a call when calls are not enabled, and a code-interpreter call when the
  request has no ``interpreter`` tool come back as content text (``"NAME\\n```python ...```"``), never a 500.
  A tool call is streamed once its segment has parsed: one delta with id and name, then one with
  the arguments.
- Usage: prompt tokens are the chat template's ids; completion tokens are the reply text re-encoded
  (the backends stream text, not ids), so ``finish_reason: "length"`` is judged from that count.
- A request is offered only its own ``tools``: a client never gets a call it did not declare. The
  server's ``--tools`` are for its MCP endpoint (``--mcp-path``) and its web UI (``--ui``), whose
  agents run them.
- Requests are queued per model: ``max_concurrency`` generate at once (a local model's
  ``max_batch``, which its engine decodes together, else 1), ``max_queue`` wait, more get 429. Sync backends run in a worker thread; a client that goes away
  stops its generation.
"""

from __future__ import annotations

from glm_agent.server._app import APIError, create_app, serve
from glm_agent.server._thread import BackgroundServer

__all__ = ["create_app", "serve", "BackgroundServer", "APIError"]
