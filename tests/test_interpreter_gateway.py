"""The code interpreter's behaviour on local kernels and on a real Jupyter Kernel Gateway (sandbox/'s configuration).

The first part runs the same tests on both (parametrized ``kind``); the second part is about what
only a remote kernel can suffer: an unreachable gateway, a refused token, a kernel deleted or culled
behind the session's back, a WebSocket dropped mid-run, the gateway process killed mid-run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path

import nbformat
import psutil
import pytest

from glm_agent.errors import InterpreterError
from glm_agent.interpreter import CodeInterpreter, KernelGateway, Limits, detect_isolation
from tests._helpers import free_port, wait_until
from tests.gateway_server import CONFIG, FlakyProxy, GatewayServer

pytestmark = [pytest.mark.kernel, pytest.mark.gateway]  # every session here comes with the module's gateway

KINDS = ["local", "gateway"]


@pytest.fixture(scope="module")
def gateway():
    server = GatewayServer()
    try:
        yield server
    finally:
        server.stop()


class Sessions:
    """``make_session(kind, **options)``: a local session, or one on the test gateway; all closed at the end."""

    def __init__(self, gateway: GatewayServer) -> None:
        self.gateway = gateway
        self.sessions: list[CodeInterpreter] = []

    def __call__(self, kind: str, **options) -> CodeInterpreter:
        options.setdefault("timeout", 10)
        options.setdefault("interrupt_grace", 1.5)
        if kind == "gateway":
            options.setdefault("gateway", self.gateway.url)
            options.setdefault("token", self.gateway.token)
        session = CodeInterpreter(**options)
        self.sessions.append(session)
        return session

    def open_on_gateway(self) -> set[str]:
        return {s.backend.kernel_id for s in self.sessions if not s.closed and isinstance(s.backend, KernelGateway)}


@pytest.fixture(scope="module")
def make_session(gateway):
    sessions = Sessions(gateway)
    yield sessions
    for session in sessions.sessions:
        session.close()
    assert gateway.kernels() == []  # closing every session left no kernel on the gateway ...
    _, alive = psutil.wait_procs(gateway.kernel_processes(), timeout=10)
    assert not alive  # ... and no kernel process under it


@pytest.fixture(scope="module", params=KINDS)
def interp(request, make_session):
    """One session per kind, shared by the tests that tolerate each other's state."""
    return make_session(request.param)


def _wait_dead(session: CodeInterpreter, timeout: float = 15) -> None:
    wait_until(lambda: not session.backend.is_alive(), timeout, what="the session to notice that its kernel died")


def _in_workspace(gateway: GatewayServer, session: CodeInterpreter, name: str) -> Path:
    """A file in the session's workspace on the gateway: the kernel's working folder."""
    return gateway.runtime_dir / "glm-agent" / "sessions" / session.backend.remote_workspace_id / "data" / name


def _once(marker: Path, action: Callable[[], object]) -> None:
    """Do ``action`` from another thread as soon as the running code has written ``marker``."""
    threading.Thread(target=lambda: (wait_until(marker.exists), action()), daemon=True).start()


def _kill_kernel(session: CodeInterpreter, gateway: GatewayServer) -> None:
    """SIGKILL the ipykernel process itself (not the supervisor), wherever it runs."""
    if isinstance(session.backend, KernelGateway):
        kernel = gateway.ipykernel(session.backend.kernel_id)
    else:
        kernel = psutil.Process(session.backend.pid).children()[0]
    kernel.kill()
    psutil.wait_procs([kernel], timeout=5)


# -- the same behaviour on both ------------------------------------------------------------------
def test_outputs_come_in_order(interp):
    result = interp.run("print(1); print(2)\nimport sys; print('oops', file=sys.stderr)\n40 + 2")
    assert result.status == "ok"
    assert [(o.kind, getattr(o, "name", None)) for o in result.outputs] == [
        ("stream", "stdout"), ("stream", "stderr"), ("execute_result", None),
    ]  # fmt: skip
    assert result.observation == "```result\n1\n2\noops\n42\n```"
    assert result.execution_count is not None


def test_images_are_saved_on_this_machine(interp):
    result = interp.run("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()\nprint('after the plot')")
    assert result.observation == "```result\n[Image]\nafter the plot\n```"
    (image,) = result.images
    assert image.parent == interp.workspace / "outputs"
    assert image.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_errors_are_clean_tracebacks(interp):
    result = interp.run("def f():\n    return 1 / 0\nprint('before')\nf()")
    assert result.status == "error" and result.error.ename == "ZeroDivisionError"
    assert "\x1b" not in result.observation and "----> 4 f()" in result.observation
    assert result.observation.startswith("```result\nbefore\n")


@pytest.mark.slow
def test_timeout_interrupts_and_keeps_state(interp):
    interp.run("kept = 'still here'")
    result = interp.run("print('looping', flush=True)\nwhile True: pass", timeout=2)
    assert result.timed_out and result.status == "timeout" and not result.state_lost
    assert "looping" in result.observation and "state (variables, imports) is kept" in result.observation
    assert interp.run("print(kept)").observation == "```result\nstill here\n```"


@pytest.mark.slow
def test_code_ignoring_the_interrupt_gets_a_restart_and_files_stay(interp):
    interp.run("before_restart = 1\nopen('survives.txt', 'w').write('file')")
    result = interp.run("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass", timeout=1)
    assert result.timed_out and result.restarted and result.state_lost
    assert interp.run("print(before_restart)").error.ename == "NameError"
    assert interp.run("print(open('survives.txt').read())").observation == "```result\nfile\n```"


@pytest.mark.slow
def test_kernel_death_says_why_and_restarts(interp):
    result = interp.run("print('bye')\nimport os; os._exit(3)")
    assert result.status == "died" and result.restarted and result.state_lost
    assert result.stdout == "bye\n"  # never sent: the gateway's kernel command handed it to the replacement
    assert "[The kernel died while running this code (exited with code 3) and was restarted" in result.observation
    result = interp.run("import ctypes\nctypes.string_at(0)")
    assert result.status == "died" and "killed by SIGSEGV (segmentation fault)" in result.observation
    assert interp.run("print(6 * 7)").observation == "```result\n42\n```"


def test_kernel_killed_between_runs_is_restarted(interp, gateway):
    interp.run("gone_soon = 1")
    _kill_kernel(interp, gateway)
    _wait_dead(interp)
    result = interp.run("print('fresh')")
    assert result.restarted and result.state_lost and result.status == "ok"
    assert result.observation.startswith(
        "```result\nfresh\n```\n[The kernel had stopped since the last run (killed by SIGKILL"
    )


def test_upload_puts_the_file_in_mnt_data(interp, tmp_path):
    assert interp.upload(b"a,b\n1,2\n", "table.csv") == "#File: /mnt/data/table.csv\n#Size: 8\n#File uploaded\n"
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 12_000)  # several chunks through a remote kernel
    assert interp.upload(big) == f"#File: /mnt/data/big.bin\n#Size: {256 * 12_000}\n#File uploaded\n"
    result = interp.run(
        "import hashlib\nprint(open('/mnt/data/table.csv').read().split()[1])\n"
        "print(hashlib.sha256(open('/mnt/data/big.bin', 'rb').read()).hexdigest())"
    )
    assert result.stdout == f"1,2\n{sha256(big.read_bytes()).hexdigest()}\n"
    with pytest.raises(InterpreterError, match="invalid upload name"):
        interp.upload(b"x", "../escape.txt")


def test_a_million_lines_are_bounded(interp):
    result = interp.run("print('\\n'.join(str(i) for i in range(1_000_000)))", timeout=60)
    assert result.status == "ok"
    kept = sum(len(o.text) for o in result.outputs if o.kind == "stream")
    assert kept <= interp.max_output_chars
    assert result.dropped_chars == len("\n".join(str(i) for i in range(1_000_000))) + 1 - kept
    assert result.text.startswith("0\n1\n2\n") and result.text.endswith("999998\n999999\n")
    assert len(result.observation) <= interp.max_observation_chars + len("```result\n\n```")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
async def test_concurrent_sessions_do_not_see_each_other(kind, make_session):
    sessions = await asyncio.gather(*(asyncio.to_thread(make_session, kind, timeout=20) for _ in range(3)))
    try:
        await asyncio.gather(
            *(s.arun(f"secret = {i}\nopen('mine.txt', 'w').write('{i}')") for i, s in enumerate(sessions))
        )
        results = await asyncio.gather(
            *(s.arun("import os\nprint(secret, open('mine.txt').read(), sorted(os.listdir('.')))") for s in sessions)
        )
        for i, result in enumerate(results):
            assert result.observation == f"```result\n{i} {i} ['mine.txt']\n```"
    finally:
        for session in sessions:
            session.close()


@pytest.mark.parametrize("kind", KINDS)
def test_closing_leaves_no_kernel_behind(kind, make_session, gateway, tmp_path):
    session = make_session(kind)
    session.run("open('left.txt', 'w').write('x')\nimport subprocess\nsubprocess.Popen(['sleep', '1000'])")
    session.to_notebook(tmp_path / "session.ipynb")
    assert nbformat.read(tmp_path / "session.ipynb", as_version=4).cells[0].source.startswith("open('left.txt'")
    if kind == "gateway":
        kernel_id = session.backend.kernel_id
        processes = gateway.kernel_processes(kernel_id)
        assert len(processes) >= 4  # wrapper, supervisor, ipykernel, sleep
        workspace = gateway.runtime_dir / "glm-agent" / "sessions" / session.backend.remote_workspace_id / "data"
        assert (workspace / "left.txt").read_text() == "x"
    else:
        processes = [psutil.Process(session.backend.pid), *psutil.Process(session.backend.pid).children(recursive=True)]
    session.close()
    _gone, alive = psutil.wait_procs(processes, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    if kind == "gateway":
        assert kernel_id not in {k["id"] for k in gateway.kernels()}
        assert not workspace.exists()  # the session's files on the gateway went with it


def test_gateway_session_reports_the_gateways_limits_and_isolation(make_session):
    session = make_session("gateway")
    assert session.limits == Limits()  # sandbox/kernels/glm-agent-python/kernel.json uses the defaults
    assert session.isolation.mode == detect_isolation().mode  # the gateway runs on this machine
    if session.isolation.enabled:
        result = session.run("import os\nprint(os.getcwd(), os.getpid())\nopen('/etc/probe', 'w')")
        assert result.stdout == "/mnt/data 1\n" and "Read-only file system" in result.observation
    with pytest.raises(ValueError, match="cannot be combined with gateway="):
        CodeInterpreter(gateway="http://127.0.0.1:1", limits=Limits())


def test_the_gateway_has_no_kernels_but_those_of_open_sessions(gateway, make_session):
    """(And once the module's sessions are closed, none at all: checked when ``make_session`` ends.)"""
    assert {k["id"] for k in gateway.kernels()} == make_session.open_on_gateway()


# -- what only a remote kernel can suffer ----------------------------------------------------------
def test_unreachable_gateway_is_a_clear_error():
    with pytest.raises(InterpreterError, match=r"cannot reach the Kernel Gateway at http://127\.0\.0\.1:\d+"):
        CodeInterpreter(gateway=f"http://127.0.0.1:{free_port()}", token="x" * 20)
    with pytest.raises(InterpreterError, match="invalid Kernel Gateway URL"):
        CodeInterpreter(gateway="127.0.0.1:8888")


def test_wrong_token_is_refused_with_a_clear_error(gateway):
    with pytest.raises(InterpreterError, match=r"refused the request \(HTTP 401, authentication\): pass token="):
        CodeInterpreter(gateway=gateway.url, token="not-the-token")
    with pytest.raises(InterpreterError, match="authentication"):
        CodeInterpreter(gateway=gateway.url)


@pytest.mark.slow
def test_kernel_deleted_behind_the_sessions_back_is_replaced(make_session, gateway):
    session = make_session("gateway")
    session.run("variable = 1\nopen('kept.txt', 'w').write('still on disk')")
    old = session.backend.kernel_id
    assert gateway.delete_kernel(old) == 204
    result = session.run("print(open('kept.txt').read())\nprint(variable)")
    assert result.restarted and result.state_lost and session.backend.kernel_id != old
    assert "[The kernel had stopped since the last run (the gateway no longer has this kernel" in result.observation
    assert result.stdout == "still on disk\n" and result.error.ename == "NameError"  # files stay, variables do not


@pytest.mark.slow
def test_websocket_dropped_mid_run_reconnects_and_says_so(make_session, gateway):
    proxy = FlakyProxy(gateway.port)
    try:
        session = make_session("gateway", gateway=proxy.url)
        _once(_in_workspace(gateway, session, "started"), proxy.cut)
        code = "import time\nprint('before', flush=True)\nopen('started', 'w').close()\ntime.sleep(2)\nprint('after')"
        result = session.run(code)
        assert result.status == "ok" and result.stdout == "before\nafter\n"  # the gateway kept what came meanwhile
        assert (
            "[The connection to the Kernel Gateway dropped during this run and was re-established" in result.observation
        )
        assert session.run("print('next')").observation == "```result\nnext\n```"
    finally:
        proxy.close()


@pytest.mark.slow
def test_reply_lost_with_the_connection_ends_the_run_with_a_notice(make_session, gateway):
    proxy = FlakyProxy(gateway.port)
    try:
        session = make_session("gateway", gateway=proxy.url)
        session.run("x = 1")
        started, go = _in_workspace(gateway, session, "started"), _in_workspace(gateway, session, "go")
        kernel = session.backend.kernel_id

        def kernel_idle() -> bool:  # the gateway's own record, from the kernel's status messages
            return any(k["id"] == kernel and k["execution_state"] == "idle" for k in gateway.kernels())

        def lose_the_end() -> None:
            proxy.blackhole = True  # the end of the run goes nowhere ...
            go.touch()
            wait_until(kernel_idle, 60, what="the kernel to end the run (its reply dropped)")
            proxy.blackhole = False
            proxy.cut()  # ... and then the connection breaks, after the kernel sent its reply and went idle

        _once(started, lose_the_end)
        code = (
            "import os, time\nprint('start', flush=True)\nopen('started', 'w').close()\n"
            "while not os.path.exists('go'):\n    time.sleep(0.01)\nx = 2\nprint('end')"
        )
        result = session.run(code, timeout=120)
        assert result.stdout == "start\n" and not result.timed_out  # ended by the lost reply, not the timeout
        assert "the end of the run was lost with it" in result.observation
        assert session.run("print(x)").observation == "```result\n2\n```"  # the code did finish
    finally:
        proxy.close()


@pytest.mark.slow
def test_culled_kernel_and_killed_gateway():
    """A gateway that culls idle kernels after 4 s, then is killed mid-run (SIGKILL)."""
    server = GatewayServer(env={"KG_CULL_IDLE_TIMEOUT": "4", "KG_CULL_INTERVAL": "1"})
    session = None
    try:
        session = CodeInterpreter(gateway=server.url, token=server.token, timeout=20)
        session.run("state = 1")
        wait_until(lambda: not server.kernels(), 20, what="the gateway to cull the idle kernel")
        result = session.run("print('after culling')")
        assert result.restarted and result.state_lost and result.stdout == "after culling\n"
        assert "the gateway no longer has this kernel: it was culled after being idle" in result.observation

        processes = server.kernel_processes(session.backend.kernel_id)
        _once(_in_workspace(server, session, "started"), server.kill)
        started = time.monotonic()
        result = session.run("open('started', 'w').close()\nimport time\ntime.sleep(15)")
        assert time.monotonic() - started < 10
        assert result.status == "died"
        assert "The kernel died while running this code (cannot reach the Kernel Gateway" in result.observation
        assert "The kernel could not be restarted" in result.observation
        again = session.run("print(1)")
        assert again.status == "died" and "could not be restarted" in again.observation
        _, alive = psutil.wait_procs(processes, timeout=10)  # kernels do not outlive their gateway
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    finally:
        if session is not None:
            session.close()
        server.stop()
    assert not Path(server.runtime_dir).exists()


@pytest.mark.slow
def test_the_gateway_configuration_refuses_to_run_without_a_token():
    jupyter = Path(sys.executable).with_name("jupyter")
    env = {k: v for k, v in os.environ.items() if k != "KG_AUTH_TOKEN"}
    env["KG_PORT"] = str(free_port())
    proc = subprocess.run(
        [str(jupyter), "kernelgateway", "--config", str(CONFIG)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "set KG_AUTH_TOKEN to a random token of at least 16 characters" in proc.stderr
