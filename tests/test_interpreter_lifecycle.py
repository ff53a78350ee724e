"""Kernel life cycles with a real ipykernel: pool, concurrent sessions, no leaked processes or fds, notebooks."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import psutil
import pytest

from glm_agent.errors import InterpreterError
from glm_agent.interpreter import CodeInterpreter, KernelPool, Limits
from glm_agent.messages import AssistantMessage, ObservationMessage, SystemMessage, UserMessage
from tests._data import REPO
from tests._helpers import wait_gone, wait_until

pytestmark = pytest.mark.kernel


def _kernel_processes() -> list[psutil.Process]:
    """Our kernel supervisors and kernels (descendants of this test process)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "_launch.py" in cmdline or "ipykernel_launcher" in cmdline:
            found.append(proc)
    return found


def _wait_gone(pids: list[int]) -> list[int]:
    """Pids still running (zombies count as gone) after waiting up to 10 s."""
    return wait_gone(pids, 10)


def _tree(pid: int) -> list[int]:
    return [pid] + [p.pid for p in psutil.Process(pid).children(recursive=True)]


@pytest.mark.slow
async def test_eight_concurrent_sessions_do_not_see_each_other():
    with ThreadPoolExecutor(4) as executor:
        sessions = list(executor.map(lambda _i: CodeInterpreter(timeout=20), range(8)))
    try:
        assert len({s.backend.pid for s in sessions}) == 8
        assert len({s.workspace for s in sessions}) == 8
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


def test_pool_hands_out_prestarted_kernels_and_never_shares_them():
    with KernelPool(size=2) as pool:
        assert pool.wait_ready(60), pool.last_error
        ready_pids = {kernel.pid for kernel in pool._state.ready}
        first = CodeInterpreter(pool=pool, timeout=10)
        second = CodeInterpreter(pool=pool, timeout=10)
        taken = [first.backend.pid, second.backend.pid]
        try:
            assert {first.backend.pid, second.backend.pid} == ready_pids
            assert first.workspace != second.workspace
            first.run("shared = 'first'")
            assert second.run("print('shared' in globals())").observation == "```result\nFalse\n```"
            assert first.run("import os\nprint(os.getcwd() == '/mnt/data' or os.getcwd())").status == "ok"
            assert pool.wait_ready(60), pool.last_error  # refilled in the background
            assert not ready_pids & {kernel.pid for kernel in pool._state.ready}
        finally:
            first.close()
            second.close()
        assert not _wait_gone(taken)
        pooled = [kernel.pid for kernel in pool._state.ready]
    assert not _wait_gone(pooled)  # closing the pool stops what it had started
    with pytest.raises(InterpreterError, match="closed"):
        pool.take()
    with pytest.raises(ValueError, match="positive int"):
        KernelPool(size=0)


def test_session_with_its_own_workspace_does_not_take_from_the_pool(tmp_path):
    with KernelPool(size=1) as pool:
        assert pool.wait_ready(60), pool.last_error
        with CodeInterpreter(tmp_path, pool=pool, timeout=10) as session:
            assert pool.ready == 1
            session.run("open('here.txt', 'w').write('x')")
        assert (tmp_path / "here.txt").read_text() == "x"
        with pytest.raises(ValueError, match="pool's limits"):
            CodeInterpreter(pool=pool, limits=Limits(open_files=512))


@pytest.mark.slow
def test_hundred_open_close_cycles_leak_no_processes_or_fds():
    """100 real sessions (two at a time, so both cores work), each running code; nothing may remain."""
    me = psutil.Process()
    with CodeInterpreter(timeout=10) as warm:  # let lazy, one-off resources (zmq context, caches) exist first
        warm.run("print(1)")
    gc.collect()
    fds_before = me.num_fds()
    seen: list[int] = []
    lock = threading.Lock()

    def cycles(count: int) -> None:
        for _ in range(count):
            with CodeInterpreter(timeout=10) as session:
                with lock:
                    seen.extend(_tree(session.backend.pid))
                assert session.run("print(2 + 2)").text == "4\n"

    with ThreadPoolExecutor(2) as executor:
        list(executor.map(cycles, [50, 50]))
    gc.collect()
    assert len(set(seen)) >= 200  # 100 supervisors + 100 kernels
    assert not _wait_gone(seen)
    assert not _kernel_processes()
    assert me.num_fds() <= fds_before + 2


def test_garbage_collected_session_stops_its_kernel():
    session = CodeInterpreter(timeout=10)
    session.run("print(1)")
    pids = _tree(session.backend.pid)
    workspace = session.workspace
    del session
    gc.collect()
    assert not _wait_gone(pids)
    assert not workspace.exists()


SCRIPT = """
import json, os, sys, time, psutil
sys.path.insert(0, {repo!r})
from glm_agent.interpreter import CodeInterpreter
session = CodeInterpreter(timeout=60)
session.run("print(1)")
pids = [session.backend.pid] + [p.pid for p in psutil.Process(session.backend.pid).children(recursive=True)]
print(json.dumps([pids, str(session.workspace), str(session.backend.runtime_dir)]), flush=True)
mode = sys.argv[1]
if mode == "normal-exit":
    sys.exit(0)  # no close(): interpreter exit must stop the kernel
if mode == "ctrl-c":
    session.run("open('sleeping', 'w').close(); import time; time.sleep(600)")  # the test sends SIGINT meanwhile
time.sleep(600)  # "sigkill": the test kills us; the lifeline pipe must stop the kernel
"""


@pytest.mark.parametrize("mode", ["normal-exit", "ctrl-c", "sigkill"])
def test_host_exit_ctrl_c_or_death_stops_the_kernel(mode, tmp_path):
    script = tmp_path / "host.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    host = subprocess.Popen(
        [sys.executable, str(script), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = host.stdout.readline()
        assert line, host.stderr.read()
        pids, workspace, runtime_dir = json.loads(line)
        assert len(pids) == 2 and Path(workspace).is_dir() and Path(runtime_dir).is_dir()
        if mode == "ctrl-c":
            wait_until(lambda: (Path(workspace) / "sleeping").exists() or host.poll() is not None)
            host.send_signal(signal.SIGINT)
            assert host.wait(30) != 0
            assert "KeyboardInterrupt" in host.stderr.read()
        elif mode == "sigkill":
            host.kill()
            host.wait(30)
        else:
            assert host.wait(30) == 0
        assert not _wait_gone(pids)
        assert not Path(workspace).exists() and not Path(runtime_dir).exists()  # temporary dirs go too
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


def test_notebook_export_interleaves_conversation_and_runs(tmp_path):
    with CodeInterpreter(timeout=20) as session:
        plot = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\nprint('plotted')"
        ran = session.run(plot)
        extra = session.run("1 / 0")
        conversation = [
            SystemMessage(content="You are ChatGLM3."),
            UserMessage(content="Plot 1, 2, 3"),
            AssistantMessage(content="Sure, plotting it."),
            AssistantMessage(metadata="interpreter", content=f"```python\n{plot}\n```"),
            ObservationMessage(content=ran.observation),
            {"role": "assistant", "metadata": "", "content": "Here is the plot."},
        ]
        path = session.to_notebook(tmp_path / "out" / "session.ipynb", conversation)
    notebook = nbformat.read(str(path), as_version=4)
    nbformat.validate(notebook)
    kinds = [(cell.cell_type, cell.source.splitlines()[0]) for cell in notebook.cells]
    assert kinds == [
        ("markdown", "**User**"),
        ("markdown", "**Assistant**"),
        ("code", "import matplotlib.pyplot as plt"),
        ("markdown", "**Assistant**"),
        ("code", "1 / 0"),  # a run no message mentions comes last
    ]
    plot_cell, error_cell = notebook.cells[2], notebook.cells[4]
    assert plot_cell.execution_count == ran.execution_count
    assert [o.output_type for o in plot_cell.outputs] == ["display_data", "stream"]
    assert plot_cell.outputs[0].data["image/png"].startswith("iVBORw0KGgo")  # a PNG, embedded
    assert plot_cell.outputs[1].text == "plotted\n"
    assert error_cell.outputs[0].output_type == "error" and error_cell.outputs[0].ename == "ZeroDivisionError"
    assert extra.error is not None
    assert notebook.metadata.kernelspec.name == "python3"


def test_notebook_export_without_conversation(tmp_path):
    with CodeInterpreter(timeout=20) as session:
        session.run("x = 21")
        session.run("x * 2")
        path = session.to_notebook(tmp_path / "plain.ipynb")
    notebook = nbformat.read(str(path), as_version=4)
    assert [c.source for c in notebook.cells] == ["x = 21", "x * 2"]
    assert notebook.cells[1].outputs[0].data == {"text/plain": "42"}


def test_close_from_another_thread_ends_a_running_cell():
    session = CodeInterpreter(timeout=120)
    session.run("print(1)")
    pids = _tree(session.backend.pid)
    outcome: list[object] = []

    def worker() -> None:
        try:
            outcome.append(session.run("open('sleeping', 'w').close()\nimport time\ntime.sleep(120)"))
        except InterpreterError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    wait_until(lambda: (session.workspace / "sleeping").exists() or not thread.is_alive())
    session.close()
    thread.join(15)
    assert not thread.is_alive()
    (what,) = outcome
    if isinstance(what, InterpreterError):
        assert "closed while the code was running" in str(what)
    else:  # the interrupt won the race: the cell ended with KeyboardInterrupt
        assert what.error.ename == "KeyboardInterrupt"
    assert not _wait_gone(pids)
