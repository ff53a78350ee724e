"""The remote transport: a kernel on a Jupyter Kernel Gateway (or Enterprise Gateway).

REST for the kernel's life (``POST /api/kernels``, ``/interrupt``, ``/restart``,
``DELETE``), the ``/api/kernels/{id}/channels`` WebSocket for Jupyter messages (JSON with
a ``channel`` field). Implements :class:`~glm_agent.interpreter._backend.KernelBackend`,
so that :class:`~glm_agent.interpreter.CodeInterpreter` runs the same code above it.

What can go wrong, and what this backend does:

- the gateway cannot be reached, or refuses the token: :class:`InterpreterError` saying so;
- the kernel dies: the gateway restarts it (iopub ``status: restarting``); the kernel is
  reported dead, and its replacement tells why its predecessor ended (``GLM_AGENT_LAST_EXIT``);
- the kernel is gone (culled when idle, deleted, gateway restarted): ``restart`` starts a new one;
- the WebSocket drops: reconnect once with the same session (the gateway replays what it
  buffered meanwhile); if the run's reply was lost, the run ends with a notice saying so;
- the gateway itself dies: the kernel is reported dead ("cannot reach the Kernel Gateway").
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from glm_agent.chatglm3.prompts import MNT_DATA
from glm_agent.errors import InterpreterError
from glm_agent.interpreter._backend import Channel, KernelMessage
from glm_agent.interpreter._gateway_protocol import (
    KERNEL_ENV_ENV,
    PROBE,
    SESSION_ENV,
    TOKEN_ENV,
    UNKNOWN_LIMITS,
    GatewayRefused,
    GatewayREST,
    delete_kernel_quietly,
    encode_message,
    execute_content,
    read_probe,
    synthetic_message,
)
from glm_agent.interpreter._isolation import Isolation
from glm_agent.interpreter._stream_log import StreamLog
from glm_agent.telemetry import inject_traceparent

__all__ = ["KernelGateway", "TOKEN_ENV"]

logger = logging.getLogger(__name__)

# websockets >= 17 asks for legacy=True to return the connection itself (as older versions do)
_CONNECT_OPTIONS: dict[str, Any] = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
_MAX_MESSAGE = 256 * 1024 * 1024  # images and long outputs arrive as single WebSocket messages
_LOST_REPLY_AFTER = 1.5  # seconds of silence after a reconnect before asking the gateway
_GONE = "the gateway no longer has this kernel: it was culled after being idle, shut down, or the gateway was restarted"


@dataclass
class _Inflight:
    """The execute request a run waits for: whether its reply and its idle status came, when it was last heard of."""

    msg_id: str
    replied: bool = False
    idle: bool = False
    last: float = field(default_factory=time.monotonic)
    reconnected: bool = False  # the WebSocket dropped during it (its reply may be lost)


class KernelGateway:
    """A kernel on a Jupyter Kernel Gateway at ``url`` (implements :class:`KernelBackend`).

    ``token``: the gateway's ``KG_AUTH_TOKEN`` (default: ``$GLM_AGENT_GATEWAY_TOKEN``).
    ``kernel_name``: the kernel spec (default: the gateway's default). The workspace is
    on the gateway's machine: ``workspace`` is None, files go in and out through the kernel.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        kernel_name: str | None = None,
        request_timeout: float = 30.0,
    ) -> None:
        self._rest = GatewayREST(url, token, request_timeout)
        self.url = self._rest.url
        self.kernel_name = kernel_name
        self._session = uuid.uuid4().hex  # the Jupyter session: the gateway replays missed messages to it
        self._workspace_key = uuid.uuid4().hex  # names the workspace on the gateway, across kernel restarts
        self.temporary_workspace = True  # empty the remote workspace at shutdown
        self.kernel_id: str | None = None
        self._ws: ClientConnection | None = None
        self._send_lock = threading.Lock()
        self._recv_lock = threading.RLock()  # one reader at a time (a close() from another thread waits)
        self._pending: deque[tuple[Channel, KernelMessage]] = deque()
        self._finalizer: weakref.finalize[..., Any] | None = None
        self._closing = False
        self._dead: str | None = None  # why the kernel is not usable, when it is not
        self._gateway_restarting = False  # the gateway is restarting a kernel that died
        self._notices: list[str] = []
        self._inflight: _Inflight | None = None  # the execute request a run waits for
        self._kernel_workspace = MNT_DATA
        self._last_exit = ""
        self._last_output = StreamLog()  # what the kernel the gateway replaced printed last
        self._dead_output = StreamLog()  # the same, once this client knows that kernel died
        self.kernel_env: dict[str, str] = {}  # CodeInterpreter(env=...): sent to the kernel command
        self.isolation = Isolation("none", "not started")
        self.limits = UNKNOWN_LIMITS

    # -- identity ---------------------------------------------------------------------------
    @property
    def workspace(self) -> None:
        return None

    @property
    def kernel_workspace(self) -> str:
        return self._kernel_workspace

    @property
    def remote_workspace_id(self) -> str:
        """Names this session's workspace on the gateway (``KERNEL_GLM_AGENT_SESSION``), across kernel restarts."""
        return self._workspace_key

    def kernel_model(self) -> dict[str, Any] | None:
        """The gateway's record of this kernel (``execution_state``, ...), or None when it has none."""
        return None if self.kernel_id is None else self._rest.kernel(self.kernel_id)

    # -- life cycle -------------------------------------------------------------------------
    def start(self, timeout: float) -> None:
        if self.kernel_id is not None:
            raise InterpreterError("this kernel is already started; call restart() for a fresh one")
        self._closing = False
        self._new_kernel(timeout)

    def _new_kernel(self, timeout: float) -> None:
        body: dict[str, Any] = {"env": {SESSION_ENV: self._workspace_key}}
        if self.kernel_env:
            body["env"][KERNEL_ENV_ENV] = json.dumps(self.kernel_env)
        if self.kernel_name:
            body["name"] = self.kernel_name
        for attempt in range(3):
            try:
                response = self._rest.request("POST", "/api/kernels", body)
                break
            except GatewayRefused as exc:
                # Kernel Gateway 3.0 answers 500 when max_kernels is set and another kernel is
                # starting at the same moment (it lists kernels before the other has a model)
                if "HTTP 500" not in str(exc) or attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))
        if response.status_code == 404:
            raise InterpreterError(f"{self.url} has no /api/kernels: is this a Jupyter Kernel Gateway?")
        self.kernel_id = response.json()["id"]
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(
            self, delete_kernel_quietly, self.url, dict(self._rest.headers), self.kernel_id
        )
        logger.debug("gateway kernel %s started on %s", self.kernel_id, self.url)
        try:
            self._connect()
            self._wait_ready(timeout)
        except BaseException:
            self._discard_kernel()
            raise

    def _discard_kernel(self) -> None:
        """Close the WebSocket and delete the kernel on the gateway (best effort)."""
        kernel_id, self.kernel_id = self.kernel_id, None
        self._close_ws()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if kernel_id is not None:
            try:
                self._rest.request("DELETE", f"/api/kernels/{kernel_id}")
            except InterpreterError as exc:
                logger.warning("could not delete gateway kernel %s: %s", kernel_id, exc)

    def _connect(self) -> None:
        uri = f"{self._rest.ws_base}/api/kernels/{self.kernel_id}/channels?session_id={self._session}"
        try:
            self._ws = connect(
                uri,
                additional_headers={**self._rest.headers, **inject_traceparent({})},
                max_size=_MAX_MESSAGE,
                open_timeout=10,
                close_timeout=1,
                compression=None,
                proxy=None,
                **_CONNECT_OPTIONS,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise self._rest.auth_error(status, "WebSocket") from exc
            raise InterpreterError(f"the Kernel Gateway refused the kernel's WebSocket (HTTP {status})") from exc
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise InterpreterError(f"cannot open the kernel's WebSocket on {self.url}: {exc}") from exc

    def _wait_ready(self, timeout: float) -> None:
        """Wait until the kernel answers on shell *and* its iopub messages reach us.

        After the gateway restarts a kernel it re-opens the WebSocket's ZMQ streams; under load
        the iopub stream sometimes does not come back (shell replies arrive, status and output
        never do, so every run would time out). A kernel_info request whose shell reply comes
        without its iopub status within 2 s therefore gets a fresh WebSocket and is asked again.
        """
        deadline = time.monotonic() + timeout
        request = self._send("shell", "kernel_info_request", {})
        asked_at = time.monotonic()
        replied = heard = False
        while not (replied and heard):
            if self._dead is not None and not self._gateway_restarting:
                raise InterpreterError(f"the kernel failed to start: {self._dead}")
            now = time.monotonic()
            if now > deadline:
                raise InterpreterError(
                    f"the gateway's kernel did not answer within {timeout:g} s; raise start_timeout, "
                    "or read the gateway's log"
                )
            if now - asked_at > 2:
                if replied and not heard:
                    logger.warning(
                        "gateway kernel %s: iopub is silent after a restart; reconnecting its WebSocket", self.kernel_id
                    )
                    self._close_ws()
                    self._connect()
                request = self._send("shell", "kernel_info_request", {})  # sent while it was restarting
                asked_at, replied, heard = now, False, False
            item = self._read(min(0.2, deadline - now))
            if item is None:
                continue
            channel, msg = item
            if msg["parent_header"].get("msg_id") == request:
                replied = replied or channel == "shell"
                heard = heard or channel == "iopub"
        self._dead = None
        self._gateway_restarting = False
        self._pending.clear()
        self._probe(max(1.0, deadline - time.monotonic()))

    def _probe(self, timeout: float) -> None:
        """Ask the kernel where it runs, under which limits, and why its predecessor ended."""
        msg_id = self._send("shell", "execute_request", execute_content("", silent=True, user_expressions=PROBE))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            item = self._read(0.2)
            if item is None:
                continue
            channel, msg = item
            if channel == "shell" and msg["parent_header"].get("msg_id") == msg_id:
                probe = read_probe(msg["content"], self.url)
                self._kernel_workspace, self.isolation, self.limits = probe.workspace, probe.isolation, probe.limits
                self._last_exit, self._last_output = probe.last_exit, probe.last_output
                return
        raise InterpreterError(f"the gateway's kernel did not answer its set-up within {timeout:g} s")

    def restart(self, timeout: float) -> None:
        if self._closing:
            raise InterpreterError("the kernel was shut down")
        self._inflight = None
        self._pending.clear()
        if self._gateway_restarting:
            try:
                self._reopen_if_closed()
                self._wait_ready(timeout)  # the gateway restarted it already
                return
            except InterpreterError as exc:
                logger.warning("waiting for the gateway's own restart failed (%s); restarting through REST", exc)
        if self.kernel_id is not None and self.kernel_model() is not None:
            try:
                self._rest.request("POST", f"/api/kernels/{self.kernel_id}/restart")
                self._dead = None
                self._reopen_if_closed()
                self._wait_ready(timeout)
                return
            except GatewayRefused as exc:  # e.g. deleted meanwhile: a new kernel will do
                logger.warning("the gateway could not restart kernel %s (%s); starting a new one", self.kernel_id, exc)
                self._rest.request("DELETE", f"/api/kernels/{self.kernel_id}")
        elif self.kernel_id is not None:
            logger.info("gateway kernel %s is gone; starting a new one", self.kernel_id)
        self._close_ws()
        self.kernel_id = None
        self._dead = None
        self._gateway_restarting = False
        self._new_kernel(timeout)

    def _reopen_if_closed(self) -> None:
        if self._ws is None or self._ws.protocol.state.name != "OPEN":
            self._close_ws()
            self._connect()

    def shutdown(self) -> None:
        if self._closing and self.kernel_id is None:
            return
        self._closing = True
        if self.kernel_id is not None and self.temporary_workspace and self._dead is None and self._ws is not None:
            if self._recv_lock.acquire(timeout=1):  # not while a run still reads (close() from another thread)
                try:
                    self._empty_workspace()
                finally:
                    self._recv_lock.release()
        self._discard_kernel()
        self._rest.close()

    def _empty_workspace(self) -> None:
        """Remove the session's files on the gateway (the gateway's wrapper then removes the directory)."""
        code = (
            "import os as _o, shutil as _s\n"
            f"for _n in _o.listdir({self._kernel_workspace!r}):\n"
            f"    _p = _o.path.join({self._kernel_workspace!r}, _n)\n"
            "    _s.rmtree(_p, ignore_errors=True) if _o.path.isdir(_p) and not _o.path.islink(_p) else _o.unlink(_p)\n"
        )
        try:
            msg_id = self._send("shell", "execute_request", execute_content(code, silent=True))
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                item = self._read(0.2)
                if item and item[0] == "shell" and item[1]["parent_header"].get("msg_id") == msg_id:
                    return
        except (InterpreterError, ConnectionClosed, OSError) as exc:
            logger.debug("could not empty the remote workspace: %s", exc)

    def _close_ws(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: S110 (closing a broken socket can fail; it is gone either way)
                pass

    # -- messages ---------------------------------------------------------------------------
    def _send(self, channel: str, msg_type: str, content: dict[str, Any]) -> str:
        msg_id, data = encode_message(channel, msg_type, content, self._session)
        with self._send_lock:
            if self._ws is None:
                raise InterpreterError("the kernel's WebSocket is not open")
            try:
                self._ws.send(data)
            except ConnectionClosed:
                if not self._reconnect():
                    raise InterpreterError(f"the kernel is not reachable: {self._dead}") from None
                self._ws.send(data)
        return msg_id

    def execute(self, code: str, *, silent: bool = False, user_expressions: dict[str, str] | None = None) -> str:
        if self.kernel_id is None:
            raise InterpreterError("the kernel is not running; start() it first")
        content = execute_content(code, silent=silent, user_expressions=user_expressions)
        try:
            msg_id = self._send("shell", "execute_request", content)
        except (InterpreterError, ConnectionClosed, OSError) as exc:
            self._mark_dead(str(exc))  # the run then reports a dead kernel, and the session restarts it
            return uuid.uuid4().hex
        self._inflight = _Inflight(msg_id)
        return msg_id

    def recv(self, timeout: float) -> tuple[Channel, KernelMessage] | None:
        if self.kernel_id is None and not self._pending:
            raise InterpreterError("the kernel is not running; start() it first")
        item = self._read(timeout)
        if item is None:
            self._check_lost_reply()
        return item

    def _read(self, timeout: float) -> tuple[Channel, KernelMessage] | None:
        """The next iopub/shell message within ``timeout`` s (what is_alive() set aside comes first)."""
        if self._pending:
            return self._pending.popleft()
        return self._receive(timeout)

    def _receive(self, timeout: float) -> tuple[Channel, KernelMessage] | None:
        """The next message from the WebSocket, reconnecting once if it dropped."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if self._pending:  # a lost reply made up by a reconnect
                return self._pending.popleft()
            remaining = deadline - time.monotonic()
            ws = self._ws
            if ws is None or (self._dead is not None and not self._gateway_restarting):
                if remaining > 0:
                    time.sleep(min(remaining, 0.05))
                return None
            try:
                with self._recv_lock:
                    raw = ws.recv(timeout=max(0.0, remaining))
            except TimeoutError:
                return None
            except ConnectionClosed:
                if self._closing:
                    raise InterpreterError("the interpreter was closed while the code was running") from None
                if not self._reconnect():
                    return None
                continue
            if isinstance(raw, bytes):
                continue  # binary frames carry comm buffers, which a code run does not use
            item = self._classify(json.loads(raw))
            if item is not None:
                return item

    def _classify(self, msg: dict[str, Any]) -> tuple[Channel, KernelMessage] | None:
        channel = msg.pop("channel", None)
        if channel not in ("iopub", "shell"):
            return None
        parent = msg.get("parent_header") or {}
        if channel == "iopub" and msg.get("msg_type") == "status" and not parent:
            state = msg["content"].get("execution_state")
            if state == "restarting":
                self._gateway_restarting = True
                self._mark_dead("it ended, and the gateway restarted it")
            elif state == "dead":
                self._gateway_restarting = False
                self._mark_dead("it ended, and the gateway could not restart it")
        inflight = self._inflight
        if inflight is not None and parent.get("msg_id") == inflight.msg_id:
            inflight.last = time.monotonic()
            if channel == "shell" and msg.get("msg_type") == "execute_reply":
                inflight.replied = True
            elif msg.get("msg_type") == "status" and msg["content"].get("execution_state") == "idle":
                inflight.idle = True
            if inflight.replied and inflight.idle:
                self._inflight = None
        return channel, msg

    def _reconnect(self) -> bool:
        """After the WebSocket dropped: reconnect once (same session, so the gateway replays what it kept)."""
        self._close_ws()
        if self._closing or self.kernel_id is None:
            return False
        try:
            if not self._kernel_exists():
                self._mark_dead(_GONE)
                return False
            self._connect()
        except InterpreterError as exc:
            self._mark_dead(str(exc))
            return False
        logger.warning("the WebSocket to gateway kernel %s dropped; reconnected", self.kernel_id)
        if self._inflight is not None:
            self._inflight.reconnected = True
            self._inflight.last = time.monotonic()
            self._notices.append(
                "[The connection to the Kernel Gateway dropped during this run and was re-established; "
                "output the kernel sent while it was down may be missing.]"
            )
        return True

    def _check_lost_reply(self) -> None:
        """After a reconnect, a run whose reply never comes while the kernel is idle again has lost it."""
        inflight = self._inflight
        if inflight is None or not inflight.reconnected or self._dead is not None:
            return
        if time.monotonic() - inflight.last < _LOST_REPLY_AFTER:
            return
        inflight.last = time.monotonic()
        try:
            model = self.kernel_model()
        except InterpreterError as exc:
            self._mark_dead(str(exc))
            return
        if model is None or model.get("execution_state") != "idle":
            return
        self._inflight = None
        self._notices.append(
            "[The connection to the Kernel Gateway dropped during this run and the end of the run was lost with it: "
            "its remaining output and its result are missing. The kernel is idle again, so the code has finished; "
            "check its effects before running it again.]"
        )
        parent = {"msg_id": inflight.msg_id}
        if not inflight.idle:
            self._pending.append(("iopub", synthetic_message("status", parent, {"execution_state": "idle"})))
        if not inflight.replied:
            self._pending.append(
                ("shell", synthetic_message("execute_reply", parent, {"status": "aborted", "execution_count": None}))
            )

    def _mark_dead(self, reason: str) -> None:
        if self._dead is None:
            self._dead = reason
            logger.warning("gateway kernel %s is not usable: %s", self.kernel_id, reason)

    # -- control ----------------------------------------------------------------------------
    def interrupt(self) -> None:
        if self.kernel_id is None or self._dead is not None:
            return
        try:
            self._rest.request("POST", f"/api/kernels/{self.kernel_id}/interrupt")
        except InterpreterError as exc:
            logger.warning("could not interrupt gateway kernel %s: %s", self.kernel_id, exc)

    def is_alive(self) -> bool:
        """Messages that arrived (a ``restarting``/``dead`` status), then the gateway's record of the kernel.

        The REST check finds kernels deleted or culled behind our back: the gateway does not
        close their WebSockets.
        """
        if self.kernel_id is None:
            return False
        if self._dead is None and self._ws is not None and not self._pending:
            for _ in range(1000):  # a status the gateway sent since (dead, restarting) is among these
                item = self._receive(0)
                if item is None:
                    break
                self._pending.append(item)
        if self._dead is None:
            try:
                if not self._kernel_exists():
                    self._mark_dead(_GONE)
            except InterpreterError as exc:
                self._mark_dead(str(exc))
        return self._dead is None

    def death_reason(self) -> str:
        if self.kernel_id is None:
            return "not started"
        if self._dead is None:
            return "still running"
        if self._gateway_restarting:
            try:  # its replacement knows how it ended
                self._reopen_if_closed()
                self._wait_ready(30)
            except InterpreterError as exc:
                return f"{self._dead}; its replacement did not start: {exc}"
            self._gateway_restarting = True  # restart() finds it ready
            self._dead = self._last_exit or "it ended (the gateway restarted it)"
            self._dead_output = self._last_output
            self._last_exit, self._last_output = "", StreamLog()
        return self._dead

    def stream_log(self) -> StreamLog:
        """A dead kernel's last output, as the gateway's kernel command handed it to the replacement."""
        output, self._dead_output = self._dead_output, StreamLog()
        return output

    def _kernel_exists(self) -> bool:
        """Whether the gateway has this kernel; a 404 is confirmed half a second later, because the
        gateway can drop a kernel from its list for a moment while it restarts it."""
        if self.kernel_model() is not None:
            return True
        time.sleep(0.5)
        return self.kernel_model() is not None

    def drain_notices(self) -> list[str]:
        """What the transport did during the last run (reconnects, lost replies), for the observation."""
        notices, self._notices = self._notices, []
        return notices

    def __repr__(self) -> str:
        return f"KernelGateway({self.url!r}, kernel_id={self.kernel_id!r})"
