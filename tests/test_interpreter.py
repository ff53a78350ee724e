"""CodeInterpreter against a real ipykernel: output capture, observations, timeouts, deaths, limits, files."""

from __future__ import annotations

import asyncio
import resource
import socket
import threading
from pathlib import Path

import psutil
import pytest

from glm_agent.errors import InterpreterError
from glm_agent.interpreter import CodeInterpreter, ErrorOutput, Limits, StreamOutput, detect_isolation
from glm_agent.interpreter._limits import MiB
from tests._helpers import pid_gone, wait_gone, wait_until, wait_until_async

pytestmark = pytest.mark.kernel

ISOLATION = detect_isolation()
needs_isolation = pytest.mark.skipif(
    not ISOLATION.enabled, reason=f"Linux namespaces are not available here: {ISOLATION.reason}"
)


@pytest.fixture(scope="module")
def interp():
    """One session shared by the tests that tolerate each other's state (each defines what it uses)."""
    with CodeInterpreter(timeout=10, interrupt_grace=1.5) as session:
        yield session


def test_prints_value_and_stderr_in_order(interp):
    result = interp.run("print(1); print(2)\nimport sys; print('oops', file=sys.stderr)\n40 + 2")
    assert result.status == "ok"
    kinds = [(o.kind, getattr(o, "name", None)) for o in result.outputs]
    assert kinds == [("stream", "stdout"), ("stream", "stderr"), ("execute_result", None)]
    assert result.stdout == "1\n2\n"
    assert result.stderr == "oops\n"
    assert result.outputs[-1].data["text/plain"] == "42"
    assert result.observation == "```result\n1\n2\noops\n42\n```"
    assert result.execution_count is not None


def test_image_then_print(interp):
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()\nprint('after the plot')"
    result = interp.run(code)
    assert result.status == "ok", result.observation
    assert [o.kind for o in result.outputs] == ["display_data", "stream"]
    assert result.observation == "```result\n[Image]\nafter the plot\n```"
    (image,) = result.images
    assert image.parent.parent == interp.workspace
    assert image.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_matplotlib_figure_without_show(interp):
    result = interp.run("import matplotlib.pyplot as plt\nprint('plotting')\nplt.bar(['a', 'b'], [3, 4])")
    assert result.observation.startswith("```result\nplotting\n")
    assert result.observation.endswith("[Image]\n```")
    assert len(result.images) == 1 and result.images[0].is_file()


def test_exception_is_the_clean_traceback(interp):
    result = interp.run("def f():\n    return 1 / 0\nprint('before')\nf()")
    assert result.status == "error"
    assert isinstance(result.error, ErrorOutput) and result.error.ename == "ZeroDivisionError"
    assert "\x1b[" in "".join(result.error.traceback)  # the kernel colours it ...
    assert "\x1b" not in result.observation  # ... the model reads it plain
    assert result.observation.startswith("```result\nbefore\n")
    assert "ZeroDivisionError: division by zero" in result.observation
    assert "----> 4 f()" in result.observation


@pytest.mark.slow
def test_timeout_interrupts_and_keeps_state(interp):
    interp.run("kept = 'still here'")
    result = interp.run("print('looping')\nwhile True: pass", timeout=2)
    assert result.timed_out and result.status == "timeout"
    assert not result.restarted and not result.state_lost
    assert "Timed out after 2 s" in result.observation and "state (variables, imports) is kept" in result.observation
    assert "looping" in result.observation
    assert "KeyboardInterrupt" not in result.observation
    assert interp.run("print(kept)").observation == "```result\nstill here\n```"


@pytest.mark.slow
def test_code_ignoring_sigint_gets_a_restart(interp):
    interp.run("before_restart = 1\nopen('survives.txt', 'w').write('file')")
    code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"
    result = interp.run(code, timeout=1)
    assert result.timed_out and result.restarted and result.state_lost
    assert "kernel was restarted" in result.observation and "lost" in result.observation
    after = interp.run("print(before_restart)")
    assert after.error is not None and after.error.ename == "NameError"
    assert interp.run("print(open('survives.txt').read())").observation == "```result\nfile\n```"  # files stay


def test_os_exit_is_detected_and_restarted(interp):
    result = interp.run("print('bye')\nimport os, sys; sys.stdout.flush(); os._exit(1)")
    assert result.status == "died" and result.restarted and result.state_lost
    assert "The kernel died while running this code (exited with code 1)" in result.observation
    assert interp.run("print(6 * 7)").observation == "```result\n42\n```"


def test_output_printed_just_before_a_death_is_kept(interp):
    # ipykernel sends output every 0.2 s from a thread: os._exit right after print loses it, unless
    # the session reads the kernel's own log of the cell's streams
    result = interp.run("import os, sys\nprint('bye')\nprint('last words', file=sys.stderr)\nos._exit(1)")
    assert result.status == "died" and result.stdout == "bye\n" and result.stderr == "last words\n"
    assert result.observation.startswith("```result\nbye\nlast words\n```\n[The kernel died")
    result = interp.run("print('flushed', flush=True)\nimport ctypes; ctypes.string_at(0)")
    assert result.status == "died" and result.stdout == "flushed\n"


def test_the_end_of_a_long_output_before_a_death_is_kept(interp):
    code = "import os\nfor i in range(200000): print(i)\nprint('the end')\nos._exit(2)"
    result = interp.run(code)
    assert result.status == "died" and result.text.endswith("199998\n199999\nthe end\n")
    assert "0\n1\n2\n" in result.text  # the head, then (if the cut fell in what was lost) an omission
    assert interp.run("print('alive')").observation == "```result\nalive\n```"


def test_the_kernel_keeps_no_copy_of_its_outputs(interp):
    # IPython 9 keeps every printed piece of text and every image in history_manager.outputs
    interp.run("for i in range(1000): print(i)")
    result = interp.run("print(len(get_ipython().history_manager.outputs), 5 in get_ipython().history_manager.outputs)")
    assert result.stdout == "0 False\n"


def test_segfault_is_detected_and_restarted(interp):
    result = interp.run("import ctypes\nctypes.string_at(0)")
    assert result.status == "died" and result.restarted
    assert "SIGSEGV (segmentation fault)" in result.observation
    assert interp.run("print('alive')").observation == "```result\nalive\n```"


def test_kernel_killed_between_runs_is_restarted(interp):
    interp.run("gone_soon = 1")
    kernel = psutil.Process(interp.backend.pid).children()[0]
    kernel.kill()
    psutil.wait_procs([kernel], timeout=5)
    # the supervisor ends with its kernel (not reaped here: the session reads its status)
    wait_until(lambda: not interp.backend.is_alive(), what="the session to see its kernel gone")
    result = interp.run("print('fresh')")
    assert result.restarted and result.state_lost and result.status == "ok"
    assert result.observation.startswith(
        "```result\nfresh\n```\n[The kernel had stopped since the last run (killed by SIGKILL"
    )


def test_ten_gigabytes_fail_under_the_memory_limit(interp):
    result = interp.run("big = bytearray(10 * 1024**3)")
    assert result.status == "error" and result.error.ename == "MemoryError"
    assert "[The kernel's memory limit is 4 GiB per process.]" in result.observation
    assert interp.run("print('still alive')").observation == "```result\nstill alive\n```"


def test_a_million_lines_are_bounded_and_truncated():
    with CodeInterpreter(timeout=60, max_output_chars=20_000, max_observation_chars=1_000) as session:
        result = session.run("print('\\n'.join(str(i) for i in range(1_000_000)))")
    assert result.status == "ok"
    total = len("\n".join(str(i) for i in range(1_000_000))) + 1
    kept = sum(len(o.text) for o in result.outputs if isinstance(o, StreamOutput))
    assert kept <= 20_000 and result.dropped_chars == total - kept
    assert result.text.startswith("0\n1\n2\n") and result.text.endswith("999998\n999999\n")
    assert f"[... {result.dropped_chars:,} characters of output omitted ...]" in result.text
    assert len(result.observation) <= 1_000 + len("```result\n\n```")
    assert result.observation.startswith("```result\n0\n1\n") and result.observation.endswith("999999\n```")
    assert "characters omitted] ..." in result.observation


def test_input_fails_fast_with_a_clear_message(interp):
    result = interp.run("name = input('Your name? ')", timeout=20)
    assert result.status == "error" and not result.timed_out
    assert result.error.ename == "StdinNotImplementedError"
    assert "[input() is not available: nobody can type an answer here." in result.observation


def test_background_thread_output_never_leaks_into_a_later_cell(interp):
    code = (
        "import threading, time\n"
        "def late():\n"
        "    time.sleep(0.3)\n"
        "    print('LATE OUTPUT')\n"
        "    global late_done\n"
        "    late_done = True\n"
        "threading.Thread(target=late).start()\n"
        "print('cell one')"
    )
    assert interp.run(code).observation == "```result\ncell one\n```"
    second = interp.run("import time\ntime.sleep(1.0)\nprint('cell two')")
    assert second.observation == "```result\ncell two\n```"
    assert interp.run("print(late_done)").observation == "```result\nTrue\n```"  # the thread did print


def test_child_process_left_running_is_gone_after_close():
    session = CodeInterpreter(timeout=10)
    result = session.run("import subprocess\nproc = subprocess.Popen(['sleep', '1000'])\nprint('started')")
    assert result.status == "ok"
    descendants = psutil.Process(session.backend.pid).children(recursive=True)
    sleepers = [p for p in descendants if p.cmdline()[:2] == ["sleep", "1000"]]
    assert len(sleepers) == 1
    session.close()
    psutil.wait_procs(descendants, timeout=5)
    assert all(pid_gone(p.pid) for p in descendants)


def test_limits_are_applied_to_the_kernel():
    limits = Limits(memory_bytes=2048 * MiB, cpu_seconds=120, open_files=256, file_size_bytes=1 * MiB)
    with CodeInterpreter(timeout=10, limits=limits) as session:
        result = session.run(
            "import resource\n"
            "for name in ('RLIMIT_AS', 'RLIMIT_CPU', 'RLIMIT_NOFILE', 'RLIMIT_FSIZE'):\n"
            "    print(name, *resource.getrlimit(getattr(resource, name)))\n"
            "open('big.bin', 'wb').write(b'x' * (2 * 1024 * 1024))"
        )
    assert result.stdout.splitlines() == [
        f"RLIMIT_AS {2048 * MiB} {2048 * MiB}",
        "RLIMIT_CPU 120 125",
        "RLIMIT_NOFILE 256 256",
        f"RLIMIT_FSIZE {MiB} {MiB}",
    ]
    assert "File too large" in result.observation
    assert resource.getrlimit(resource.RLIMIT_AS)[0] != 2048 * MiB  # the host is untouched


def test_bad_arguments_are_clear_errors(interp):
    with pytest.raises(ValueError, match="too small"):
        Limits(memory_bytes=1000)
    with pytest.raises(TypeError, match="int"):
        Limits(open_files="many")
    with pytest.raises(ValueError, match="timeout"):
        CodeInterpreter(timeout=0)
    with pytest.raises(TypeError, match="code must be a str"):
        interp.run(b"print(1)")


def test_upload_copies_into_the_workspace_and_returns_the_header(interp, tmp_path):
    header = interp.upload(b"a,b\n1,2\n", "table.csv")
    assert header == "#File: /mnt/data/table.csv\n#Size: 8\n#File uploaded\n"
    source = tmp_path / "notes.txt"
    source.write_text("hello from the host")
    assert interp.upload(source) == "#File: /mnt/data/notes.txt\n#Size: 19\n#File uploaded\n"
    assert (interp.workspace / "notes.txt").read_text() == "hello from the host"
    result = interp.run("print(open('/mnt/data/table.csv').read().split()[1], open('/mnt/data/notes.txt').read())")
    assert result.observation == "```result\n1,2 hello from the host\n```"
    with pytest.raises(InterpreterError, match="invalid upload name"):
        interp.upload(b"x", "../escape.txt")
    with pytest.raises(InterpreterError, match="needs a name"):
        interp.upload(b"x")
    with pytest.raises(FileNotFoundError, match="no such file"):
        interp.upload(tmp_path / "missing.csv")


def test_closed_session_refuses_to_run():
    session = CodeInterpreter(timeout=10)
    workspace = session.workspace
    session.close()
    session.close()  # idempotent
    assert not workspace.exists()  # a temporary workspace goes with the session
    with pytest.raises(InterpreterError, match="closed"):
        session.run("print(1)")


def test_unisolated_session_maps_mnt_data_to_the_workspace(tmp_path):
    with CodeInterpreter(tmp_path / "ws", isolate=False, timeout=10) as session:
        assert session.isolation.mode == "none"
        result = session.run(
            "import os\nopen('/mnt/data/out.txt', 'w').write('hi')\nprint(os.getcwd())\nprint(os.path.abspath('out.txt'))"
        )
        assert (
            result.observation == "```result\n/mnt/data\n/mnt/data/out.txt\n```\n[Files written in /mnt/data: out.txt]"
        )
        assert result.files == ["/mnt/data/out.txt"]
        assert (tmp_path / "ws" / "out.txt").read_text() == "hi"
    assert (tmp_path / "ws" / "out.txt").exists()  # a workspace we were given is never removed


class _Server:
    """A TCP server on 127.0.0.1 that answers every connection with b'hello'."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"hello")

    def close(self) -> None:
        self.sock.close()


CONNECT = (
    "import socket\n"
    "try:\n"
    "    with socket.create_connection(('127.0.0.1', {port}), timeout=3) as s:\n"
    "        print('connected', s.recv(5))\n"
    "except OSError as exc:\n"
    "    print('failed', exc)"
)


@needs_isolation
def test_isolated_kernel_cannot_reach_a_server_on_localhost(interp):
    server = _Server()
    try:
        with CodeInterpreter(isolate=False, timeout=10) as open_session:  # the control: the server works
            assert open_session.run(CONNECT.format(port=server.port)).stdout == "connected b'hello'\n"
        assert interp.isolation.enabled
        result = interp.run(CONNECT.format(port=server.port))
        assert result.stdout.startswith("failed [Errno 101] Network is unreachable")
    finally:
        server.close()


@needs_isolation
def test_isolated_kernel_writes_to_mnt_data_and_nowhere_else(interp):
    result = interp.run(
        "import os\n"
        "open('/mnt/data/result.txt', 'w').write('42')\n"
        "print(os.getcwd())\n"
        "for path in ('/etc/glm_agent_probe', '/root/glm_agent_probe', '/usr/glm_agent_probe'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "        print('WROTE', path)\n"
        "    except OSError as exc:\n"
        "        print(exc.strerror)\n"
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0], os.getpid())"
    )
    assert (interp.workspace / "result.txt").read_text() == "42"
    lines = result.stdout.splitlines()
    assert lines[0] == "/mnt/data"
    # /etc and /usr are read-only binds; /root is in the sandbox only when Python lives under it (pyenv)
    assert lines[1] == lines[3] == "Read-only file system"
    assert lines[2] in ("Read-only file system", "No such file or directory")
    assert lines[4] == "0000000000000000 1"  # no capabilities; PID 1 of its own namespace
    assert not Path("/etc/glm_agent_probe").exists()


def test_unisolated_kernel_death_and_escaped_children_are_handled(tmp_path):
    """Without namespaces the supervisor is a subreaper: even a child in its own session dies with the kernel."""
    session = CodeInterpreter(tmp_path, isolate=False, timeout=10)
    try:
        code = "import subprocess\nescaped = subprocess.Popen(['sleep', '1001'], start_new_session=True)\nprint(escaped.pid)"
        escaped_pid = int(session.run(code).stdout)
        assert psutil.Process(escaped_pid).cmdline()[:2] == ["sleep", "1001"]
        died = session.run("import ctypes\nctypes.string_at(0)")
        assert died.status == "died" and "SIGSEGV" in died.observation
        assert wait_gone([escaped_pid], 5) == []
        assert session.run("print('back')").observation == "```result\nback\n```"
    finally:
        session.close()


async def test_arun_runs_and_cancelling_it_interrupts_the_kernel(interp):
    assert (await interp.arun("print('async')")).observation == "```result\nasync\n```"
    (interp.workspace / "started").unlink(missing_ok=True)
    task = asyncio.ensure_future(interp.arun("open('started', 'w').close()\nimport time\ntime.sleep(30)"))
    await wait_until_async(lambda: (interp.workspace / "started").exists() or task.done())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await asyncio.wait_for(interp.arun("print('next')"), timeout=10)  # not stuck behind the sleep
    assert after.observation == "```result\nnext\n```"
    assert interp.history[-2].error.ename == "KeyboardInterrupt"


def test_an_unisolated_kernel_gets_the_clean_environment_too(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-the-kernel")
    monkeypatch.setenv("FOO", "host-foo")
    with CodeInterpreter(tmp_path / "ws", isolate=False, timeout=10, env={"FOO": "chosen"}) as session:
        shown = session.run("import os\nprint(os.environ.get('OPENAI_API_KEY'), os.environ['FOO'])").stdout
        assert shown == "None chosen\n"


def test_on_output_sees_stdout_before_the_cell_ends(interp):
    seen: list[str] = []
    go = interp.workspace / "go"

    def listener(out):
        seen.append(getattr(out, "text", ""))
        if seen[-1] == "first\n":
            go.touch()  # the cell waits for this: it can only appear if "first" arrived while the cell ran

    interp.on_output = listener
    try:
        result = interp.run(
            "import os, time\nprint('first', flush=True)\nfor _ in range(400):\n"
            "    if os.path.exists('go'):\n        print('the host saw first')\n        break\n"
            "    time.sleep(0.05)\nprint('second')"
        )
    finally:
        interp.on_output = None
    assert seen[0] == "first\n" and "".join(seen) == "first\nthe host saw first\nsecond\n"
    assert "first\nthe host saw first\nsecond" in result.observation


def test_a_failing_on_output_listener_does_not_break_the_run(interp):
    def boom(out):
        raise RuntimeError("listener bug")

    interp.on_output = boom
    try:
        result = interp.run("print(6 * 7)")
    finally:
        interp.on_output = None
    assert "42" in result.observation
