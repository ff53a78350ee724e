"""The Kernel Gateway's two halves of the wire: its REST API (with clear errors) and the JSON
messages of its ``/api/kernels/{id}/channels`` WebSocket (Jupyter messages with a ``channel``)."""

from __future__ import annotations

import ast
import json
import os
import resource
import uuid
from datetime import datetime, timezone
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import httpx

from glm_agent.chatglm3.prompts import MNT_DATA
from glm_agent.errors import GatewayRefused, InterpreterError
from glm_agent.interpreter._backend import KernelMessage
from glm_agent.interpreter._isolation import Isolation
from glm_agent.interpreter._limits import Limits
from glm_agent.interpreter._stream_log import StreamLog, log_from_json
from glm_agent.telemetry import inject_traceparent

__all__ = [
    "GatewayREST",
    "GatewayRefused",
    "TOKEN_ENV",
    "SESSION_ENV",
    "KERNEL_ENV_ENV",
    "LAST_EXIT_ENV",
    "LAST_OUTPUT_BYTES",
    "PROBE",
    "Probe",
    "read_probe",
    "execute_content",
    "encode_message",
    "synthetic_message",
    "UNKNOWN_LIMITS",
]

TOKEN_ENV = "GLM_AGENT_GATEWAY_TOKEN"
#: names the session's directories on the gateway, so that they survive kernel restarts (sent by the client)
SESSION_ENV = "KERNEL_GLM_AGENT_SESSION"
#: the variables the client adds to the kernel's environment, as JSON (``CodeInterpreter(env=...)``)
KERNEL_ENV_ENV = "KERNEL_GLM_AGENT_ENV"
#: how the previous kernel of the same id ended and what it printed last (JSON: ``ending``, ``output``),
#: set by the gateway's kernel command for its replacement
LAST_EXIT_ENV = "GLM_AGENT_LAST_EXIT"
#: at most this much JSON of that output (an environment variable holds at most 128 KiB)
LAST_OUTPUT_BYTES = 48 * 1024


class GatewayREST:
    """REST calls to a Kernel Gateway at ``url`` with token auth. 404 is returned to the caller;
    every other failure raises an :class:`InterpreterError` that says what to do."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InterpreterError(f"invalid Kernel Gateway URL {url!r}: use http://host:port or https://host:port")
        path = parts.path.rstrip("/")
        self.url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        self.ws_base = urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc, path, "", ""))
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.headers = {"Authorization": f"token {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def auth_error(self, status: int, what: str = "request") -> GatewayRefused:
        return GatewayRefused(
            f"the Kernel Gateway at {self.url} refused the {what} (HTTP {status}, authentication): "
            f"pass token= (or set {TOKEN_ENV}) to the gateway's KG_AUTH_TOKEN"
        )

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=body, headers=inject_traceparent({}))
        except httpx.TransportError as exc:
            raise InterpreterError(
                f"cannot reach the Kernel Gateway at {self.url} ({type(exc).__name__}: {exc}); is it running? "
                "(sandbox/README.md says how to start one)"
            ) from exc
        status = response.status_code
        if status in (401, 403) and "Resource Limit" not in response.text:
            raise self.auth_error(status)
        if status >= 400 and status != 404:
            try:
                detail = response.json().get("message") or response.reason_phrase
            except ValueError:
                detail = response.text[:200] or response.reason_phrase
            raise GatewayRefused(f"the Kernel Gateway answered {method} {path} with HTTP {status}: {detail}")
        return response

    def kernel(self, kernel_id: str) -> dict[str, Any] | None:
        """The gateway's record of a kernel (``execution_state``, ...), or None when it has none."""
        path = f"/api/kernels/{kernel_id}"
        try:
            response = self.request("GET", path)
        except GatewayRefused:
            raise
        except InterpreterError:  # a broken pooled connection, or a network blip: one more try
            response = self.request("GET", path)
        return None if response.status_code == 404 else response.json()

    def close(self) -> None:
        self._http.close()


def delete_kernel_quietly(base_url: str, headers: dict[str, str], kernel_id: str) -> None:
    """Best effort DELETE (garbage collection, interpreter exit)."""
    try:
        httpx.delete(f"{base_url}/api/kernels/{kernel_id}", headers=headers, timeout=5)
    except httpx.HTTPError:
        pass


def encode_message(channel: str, msg_type: str, content: dict[str, Any], session: str) -> tuple[str, str]:
    """A Jupyter message for the WebSocket: (msg_id, JSON text)."""
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "msg_type": msg_type,
        "session": session,
        "username": "glm-agent",
        "version": "5.3",
        "date": datetime.now(timezone.utc).isoformat(),
    }
    message = {
        "header": header,
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": channel,
        "buffers": [],
    }
    return msg_id, json.dumps(message)


def execute_content(code: str, *, silent: bool, user_expressions: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "code": code,
        "silent": silent,
        "store_history": not silent,
        "user_expressions": user_expressions or {},
        "allow_stdin": False,
        "stop_on_error": False,
    }


def synthetic_message(msg_type: str, parent: dict[str, Any], content: dict[str, Any]) -> KernelMessage:
    """A message the transport makes up to end a run whose real one was lost (marked in metadata)."""
    header = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "date": datetime.now(timezone.utc).isoformat()}
    return {
        "header": header,
        "parent_header": parent,
        "msg_type": msg_type,
        "content": content,
        "metadata": {"glm_agent_synthetic": True},
    }


# user_expressions of the first (silent) request to a new kernel: where it runs, its limits, and
# why its predecessor ended (the gateway's kernel command passes that on)
PROBE = {
    "cwd": "__import__('os').getcwd()",
    "pid": "__import__('os').getpid()",
    "rlimits": "[__import__('resource').getrlimit(getattr(__import__('resource'), n))[0] "
    "for n in ('RLIMIT_AS', 'RLIMIT_CPU', 'RLIMIT_NOFILE', 'RLIMIT_FSIZE')]",
    "last_exit": f"__import__('os').environ.get({LAST_EXIT_ENV!r}, '')",
    "sandbox": "__import__('os').environ.get('GLM_AGENT_SANDBOX', '')",
}


class Probe(NamedTuple):
    """What a new gateway kernel says about itself."""

    workspace: str  # where code runs (/mnt/data when isolated)
    last_exit: str  # how its predecessor of the same id ended, in words ("" if it did not die)
    last_output: StreamLog  # the end of what that predecessor printed in its last cell
    isolation: Isolation
    limits: Limits


def read_probe(reply_content: dict[str, Any], url: str) -> Probe:
    """The kernel's :class:`Probe`, from the probe's execute_reply.

    Isolation and the session limits come from the launcher's report (``GLM_AGENT_SANDBOX``, what
    it actually set up), the rlimits from the kernel itself.
    """
    values = {}
    for name, value in reply_content.get("user_expressions", {}).items():
        try:
            values[name] = ast.literal_eval(value["data"]["text/plain"])  # reprs of str/int/list
        except (KeyError, TypeError, ValueError, SyntaxError):
            pass
    workspace = str(values.get("cwd") or MNT_DATA)
    try:
        report = json.loads(values.get("sandbox") or "{}")
    except ValueError:
        report = {}
    report = report if isinstance(report, dict) else {}
    if report.get("isolated") and values.get("pid") == 1 and workspace == MNT_DATA:
        isolation = Isolation.from_report(report, workspace_quota=report.get("workspace_bytes") is not None)
    else:
        isolation = Isolation("none", f"the kernel spec on the Kernel Gateway at {url} runs kernels unisolated")
    rlimits = [None if v in (None, resource.RLIM_INFINITY) else v for v in values.get("rlimits") or [None] * 4]
    totals = {
        "max_processes": report.get("max_processes"),
        "total_memory_bytes": report.get("total_memory_bytes"),
        "workspace_bytes": report.get("tmp_bytes"),
    }
    try:
        limits = Limits(*rlimits, **totals)
    except (TypeError, ValueError):
        limits = UNKNOWN_LIMITS
    ending, output = _last_exit(values.get("last_exit"))
    return Probe(workspace, ending, output, isolation, limits)


def _last_exit(value: object) -> tuple[str, StreamLog]:
    """(ending, output) from ``LAST_EXIT_ENV``'s JSON; a plain string is an ending alone."""
    if not isinstance(value, str) or not value:
        return "", StreamLog()
    try:
        data = json.loads(value)
    except ValueError:
        return value, StreamLog()
    if not isinstance(data, dict):
        return value, StreamLog()
    return str(data.get("ending") or ""), log_from_json(data.get("output"))


#: what the client says before it knows the gateway kernel's limits
UNKNOWN_LIMITS = Limits(
    memory_bytes=None,
    cpu_seconds=None,
    open_files=None,
    file_size_bytes=None,
    max_processes=None,
    total_memory_bytes=None,
    workspace_bytes=None,
)
