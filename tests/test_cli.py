"""The ``glm-agent`` command through real subprocesses: run (--json), tools, notebook, chat, errors."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pexpect
import pytest

from tests._data import REPO, TOOLS, needs_tiny_checkpoint
from tests._data import TINY_CHECKPOINT as TINY
from tests._helpers import wait_until

SCRIPT = Path(sys.executable).with_name("glm-agent")
COMMAND = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "glm_agent.cli"]
CALCULATOR = str(TOOLS / "calculator.py")


def calc(expression: str) -> str:
    return f"calculate\n ```python\ntool_call(expression={expression!r})\n```"


def script(tmp_path: Path, replies: list[str], name: str = "replies.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(replies), encoding="utf-8")
    return f"scripted:{path}"


def glm_agent(*args: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 60):
    full_env = {k: v for k, v in os.environ.items() if k != "GLM_AGENT_MODEL"}
    full_env.update({"COLUMNS": "100", **(env or {})})
    return subprocess.run(
        [*COMMAND, *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[scripted model]")]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


# -- import cost ---------------------------------------------------------------------------------
def test_help_and_import_do_not_load_torch():
    code = (
        "import sys, contextlib, io\n"
        "from glm_agent.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    code = main([])\n"
        "print(code, [m for m in ('torch', 'transformers', 'rich') if m in sys.modules], out.getvalue())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("0 []")
    for command in ("chat", "run", "tools", "notebook"):
        assert command in proc.stdout


# -- run -----------------------------------------------------------------------------------------
def test_run_json_prints_the_event_stream(tmp_path):
    model = script(tmp_path, ["\n Let me compute.<|assistant|>" + calc("2**10 + 3"), "\n It is 1027."])
    proc = glm_agent("run", "What is 2**10 + 3?", "--model", model, "--tools", CALCULATOR, "--json", "--yes")
    assert proc.returncode == 0, proc.stderr
    out = events(proc.stdout)
    kinds = [e["type"] for e in out]
    assert kinds[-1] == "final_answer" and out[-1]["text"] == "It is 1027."
    assert kinds.index("call_started") < kinds.index("tool_called") < kinds.index("tool_returned")
    result = next(e for e in out if e["type"] == "tool_returned")
    assert result["ok"] is True and result["observation"] == "1027"
    assert result["call"] == {"name": "calculate", "arguments": {"expression": "2**10 + 3"}}
    assert "".join(e["text"] for e in out if e["type"] == "text_delta" and e["step"] == 1) == "Let me compute."
    assert "[scripted model]" in proc.stderr  # labelled, and kept off the JSON stream


def test_run_takes_the_model_from_the_environment_and_shows_calls(tmp_path):
    model = script(tmp_path, [calc("sqrt(16)"), "\n Four."])
    proc = glm_agent("run", "root of 16?", "--tools", CALCULATOR, "--yes", env={"GLM_AGENT_MODEL": model})
    assert proc.returncode == 0, proc.stderr
    assert "tool calculate" in proc.stdout and '"sqrt(16)"' in proc.stdout
    assert "calculate: ok" in proc.stdout and "│ 4 " in proc.stdout
    assert proc.stdout.rstrip().endswith("Four.")
    assert "[scripted model]" in proc.stderr


def test_run_without_yes_and_without_a_terminal_refuses_calls(tmp_path):
    model = script(tmp_path, [calc("1 + 1"), "\n I was not allowed to calculate."])
    proc = glm_agent("run", "1+1?", "--model", model, "--tools", CALCULATOR, "--json")
    assert proc.returncode == 3, proc.stderr  # answered, but without the calls it wanted: not a success
    assert "1 call(s) were refused" in proc.stderr and "--yes-for" in proc.stderr
    out = events(proc.stdout)
    refused = next(e for e in out if e["type"] == "call_refused")
    assert "did not allow" in refused["observation"]
    assert not any(e["type"] == "tool_returned" for e in out)
    human = glm_agent("run", "1+1?", "--model", model, "--tools", CALCULATOR)
    assert "refused: calculate" in human.stdout and "--yes" in human.stdout


def test_yes_for_a_tool_runs_its_calls_and_no_others(tmp_path):
    model = script(
        tmp_path, [calc("1 + 1"), "\n Two.", "wait\n ```python\ntool_call(seconds=0)\n```", "\n Not waited."]
    )
    slow = tmp_path / "slow_tools.py"
    slow.write_text(SLOW_TOOL)
    tools = ["--tools", CALCULATOR, "--tools", str(slow)]
    proc = glm_agent("run", "1+1?", "and wait", "--model", model, *tools, "--yes-for", "calculate", "--json")
    out = events(proc.stdout)
    assert [e["call"]["name"] for e in out if e["type"] == "tool_returned"] == ["calculate"]
    assert [e["call"]["name"] for e in out if e["type"] == "call_refused"] == ["wait"]
    assert proc.returncode == 3, proc.stderr


def test_run_asks_several_questions_in_one_conversation_and_saves_it(tmp_path):
    model = script(tmp_path, ["\n Hello.", calc("6 * 7"), "\n 42."])
    session = tmp_path / "session.jsonl"
    proc = glm_agent(
        "run", "hi", "6 times 7?", "--model", model, "--tools", CALCULATOR, "--yes", "--json", "--save", str(session)
    )
    assert proc.returncode == 0, proc.stderr
    answers = [e["text"] for e in events(proc.stdout) if e["type"] == "final_answer"]
    assert answers == ["Hello.", "42."]
    rows = [json.loads(line) for line in session.read_text().splitlines()]
    assert [r["role"] for r in rows] == ["system", "user", "assistant", "user", "assistant", "observation", "assistant"]
    assert rows[0]["tools"][0]["name"] == "calculate" and rows[5]["content"] == "42"


def test_run_without_an_answer_exits_1(tmp_path):
    proc = glm_agent(
        "run",
        "loop",
        "--model",
        script(tmp_path, [calc("1")] * 3),
        "--tools",
        CALCULATOR,
        "--yes",
        "--max-steps",
        "2",
        "--json",
    )
    assert proc.returncode == 1
    assert events(proc.stdout)[-1] == {
        "type": "run_error",
        "step": 2,
        "kind": "max_steps",
        "message": "stopped after 2 steps without a final answer",
    }
    proc = glm_agent("run", "x", "--model", script(tmp_path, [calc("1")]), "--tools", CALCULATOR, "--yes")
    assert proc.returncode == 1 and "ran out of replies" in proc.stdout


# -- tools -----------------------------------------------------------------------------------------
def test_tools_prints_schemas():
    proc = glm_agent("tools", CALCULATOR)
    assert proc.returncode == 0, proc.stderr
    schemas = json.loads(proc.stdout)
    assert schemas[0]["name"] == "calculate" and schemas[0]["parameters"]["required"] == ["expression"]
    openai = json.loads(glm_agent("tools", CALCULATOR, "--format", "openai").stdout)
    assert openai[0]["type"] == "function" and openai[0]["function"]["name"] == "calculate"


# -- errors: one line, non-zero, no traceback ---------------------------------------------------------
@pytest.mark.slow
def test_missing_weights_is_one_line(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    proc = glm_agent("run", "hi", "--model", str(missing))
    assert_one_line_error(proc, "glm-agent run: error:")
    chat = glm_agent("chat", "--model", str(missing), input="hi\n")
    assert_one_line_error(chat, "glm-agent chat: error:")


def test_bad_tool_file_is_one_line(tmp_path):
    broken = tmp_path / "broken_tools.py"
    broken.write_text("from glm_agent import tool\n\n@tool\ndef f(x: int) -> int\n    return x\n")
    model = script(tmp_path, ["\n hi"])
    proc = glm_agent("run", "hi", "--model", model, "--tools", str(broken))
    assert_one_line_error(proc, "broken_tools.py", "syntax error at line 4")
    untyped = tmp_path / "untyped_tools.py"
    untyped.write_text("from glm_agent import tool\n\n@tool\ndef f(x):\n    'Doc.'\n    return x\n")
    assert_one_line_error(glm_agent("run", "hi", "--model", model, "--tools", str(untyped)), "untyped_tools.py", "'x'")
    assert_one_line_error(glm_agent("tools", str(tmp_path / "nope.py")), "nope.py", "no such file")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--temperature", "-1"], ["--temperature", "greater than or equal to 0"]),
        (["--top-p", "2"], ["--top-p"]),
        (["--max-steps", "0"], ["--max-steps must be at least 1"]),
        (["--file", "/no/such/upload.csv"], ["/no/such/upload.csv"]),
        (["--workspace", "/tmp"], ["--workspace", "add --code-interpreter"]),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, args, words):
    proc = glm_agent("run", "hi", "--model", script(tmp_path, ["\n hi"]), *args)
    assert_one_line_error(proc, *words)


def test_bad_scripted_files_are_one_line(tmp_path):
    assert_one_line_error(glm_agent("run", "hi", "--model", f"scripted:{tmp_path / 'none.json'}"), "not found")
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    assert_one_line_error(glm_agent("run", "hi", "--model", f"scripted:{bad}"), "JSON list of raw reply strings")


def test_unknown_option_is_an_argparse_error():
    proc = glm_agent("run", "hi", "--no-such-option")
    assert proc.returncode == 2 and "unrecognized arguments: --no-such-option" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- chat through stdin --------------------------------------------------------------------------------
def test_chat_from_stdin_with_approval_and_slash_commands(tmp_path):
    model = script(
        tmp_path, ["\n Let me compute.<|assistant|>" + calc("2**10 + 3"), "\n 1027.", calc("1/0"), "\n Fresh start."]
    )
    saved = tmp_path / "chat.jsonl"
    lines = [
        "what is 2**10+3",
        "y",
        "/help",
        f"/save {saved}",
        "/save",
        "/bogus",
        "divide by zero",
        "n",
        "/reset",
        "hello",
        "/exit",
        "never read",
    ]
    proc = glm_agent("chat", "--model", model, "--tools", CALCULATOR, input="\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("[scripted model]")
    assert "tools: calculate" in out and "run it?" in out
    assert "calculate: ok" in out and "1027" in out
    assert "/notebook FILE.ipynb" in out  # /help
    assert f"conversation saved to {saved}" in out and "usage: /save FILE" in out
    assert "unknown command /bogus" in out
    assert "refused: calculate" in out and "new conversation" in out and "Fresh start." in out
    rows = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [r["role"] for r in rows] == ["system", "user", "assistant", "assistant", "observation", "assistant"]


def test_chat_ends_at_end_of_input(tmp_path):
    proc = glm_agent("chat", "--model", script(tmp_path, ["\n Hi there."]), input="hello\n")
    assert proc.returncode == 0 and "Hi there." in proc.stdout


# -- chat at a terminal (pseudo-terminal): approvals and Ctrl-C ---------------------------------------
SLOW_TOOL = '''
import time
from glm_agent import tool

@tool
def wait(seconds: float) -> str:
    """Wait a number of seconds."""
    time.sleep(seconds)
    return "waited"
'''


def _as_at_a_terminal() -> None:
    """In the spawned child: Ctrl-C raises SIGINT's default action, whatever the test runner was started
    with (a command started with ``&`` by a shell without job control ignores SIGINT, and so would the
    child it spawns: a Ctrl-C test would then wait forever)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def on_screen(text: str) -> str:
    """A pattern for ``text`` as a terminal shows it: styles (ANSI escapes) may sit between the characters."""
    escapes = r"(?:\x1b\[[0-9;?]*[A-Za-z])*"
    return escapes.join(re.escape(c) for c in text)


@pytest.mark.timeout(240)
def test_chat_at_a_terminal_ctrl_c_stops_the_agent_and_ctrl_d_leaves(tmp_path):
    slow = tmp_path / "slow_tools.py"
    slow.write_text(SLOW_TOOL)
    wait = "wait\n ```python\ntool_call(seconds=60)\n```"
    model = script(tmp_path, [wait, wait, "\n Still here."])
    env = {k: v for k, v in os.environ.items() if k != "GLM_AGENT_MODEL"}
    env.update(NO_COLOR="1", TERM="xterm", COLUMNS="100")
    child = pexpect.spawn(
        COMMAND[0],
        [*COMMAND[1:], "chat", "--model", model, "--tools", str(slow)],
        env=env,
        cwd=str(REPO),
        encoding="utf-8",
        timeout=None,  # every expect waits for its event: a busy machine is slow, not wrong (pytest-timeout backstops)
        preexec_fn=_as_at_a_terminal,
    )
    try:
        child.expect(on_screen("[scripted model]"))
        child.expect(on_screen("you> "))
        child.sendline("wait a minute")
        child.expect(on_screen("run it?"))  # asked before the call runs
        child.sendcontrol("c")  # Ctrl-C while asked: the call is cancelled, back to the prompt
        child.expect(on_screen("[interrupted]"))
        child.expect(on_screen("you> "))
        child.sendline("wait again")
        child.expect(on_screen("run it?"))
        child.sendline("y")
        child.expect(on_screen("running wait"))  # the spinner while the tool runs
        child.sendcontrol("c")  # Ctrl-C while the tool runs
        child.expect(on_screen("[interrupted]"))
        child.expect(on_screen("you> "))
        child.sendline("are you there?")
        child.expect(on_screen("Still here."))
        child.expect(on_screen("you> "))
        child.sendeof()  # Ctrl-D at the prompt leaves
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_a_bare_enter_at_the_terminal_refuses_the_call(tmp_path):
    model = script(tmp_path, [calc("2 + 2"), "\n Not computed."])
    env = {k: v for k, v in os.environ.items() if k != "GLM_AGENT_MODEL"}
    env.update(NO_COLOR="1", TERM="xterm", COLUMNS="100")
    child = pexpect.spawn(
        COMMAND[0], [*COMMAND[1:], "chat", "--model", model, "--tools", CALCULATOR], env=env, cwd=str(REPO),
        encoding="utf-8", timeout=None,
    )  # fmt: skip
    try:
        child.expect(on_screen("you> "))
        child.sendline("2+2?")
        child.expect(on_screen("run it? [y/n] (n)"))  # the default is shown, and it is no
        child.sendline("")
        child.expect(on_screen("refused: calculate"))
        child.expect(on_screen("Not computed."))
        child.expect(on_screen("you> "))
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


# -- a real checkpoint -----------------------------------------------------------------------------
@needs_tiny_checkpoint
@pytest.mark.slow
def test_run_with_real_weights_streams_generated_text():
    proc = glm_agent(
        "run", "hi", "--model", str(TINY), "--json", "--max-new-tokens", "6", "--temperature", "0", timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    out = events(proc.stdout)
    assert out[-1]["type"] == "final_answer" and out[-1]["step"] == 1
    streamed = "".join(e["text"] for e in out if e["type"] == "text_delta")
    assert streamed.strip() == out[-1]["text"] and streamed  # random tiny weights: some text, not a scripted reply
    assert "[scripted model]" not in proc.stderr


# -- code interpreter and notebooks ---------------------------------------------------------------------
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.show()\nprint(sum([1, 4, 9]))"


@pytest.mark.slow
@pytest.mark.kernel
def test_run_with_the_code_interpreter_then_notebook_from_the_saved_session(tmp_path):
    model = script(tmp_path, [f"interpreter\n ```python\n{PLOT}\n```", "\n The sum is 14."])
    session, live, workspace = tmp_path / "session.jsonl", tmp_path / "live.ipynb", tmp_path / "ws"
    proc = glm_agent(
        "run",
        "plot and sum 1, 4, 9",
        "--model",
        model,
        "--code-interpreter",
        "--yes",
        "--json",
        "--save",
        str(session),
        "--notebook",
        str(live),
        "--workspace",
        str(workspace),
    )
    assert proc.returncode == 0, proc.stderr
    result = next(e for e in events(proc.stdout) if e["type"] == "code_finished")
    assert result["ok"] and "14" in result["observation"] and len(result["images"]) == 1
    image = Path(result["images"][0])
    assert image.parent.parent == workspace and image.read_bytes().startswith(b"\x89PNG")  # kept after exit
    assert f"notebook saved to {live}" in proc.stderr
    cell = next(c for c in nbformat.read(str(live), as_version=4).cells if c.cell_type == "code")
    assert cell.source == PLOT and {o.output_type for o in cell.outputs} == {"display_data", "stream"}

    out = tmp_path / "from_session.ipynb"
    proc = glm_agent("notebook", str(session), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    notebook = nbformat.read(str(out), as_version=4)
    nbformat.validate(notebook)
    cells = [(c.cell_type, c.source.splitlines()[0]) for c in notebook.cells]
    assert cells == [
        ("markdown", "**User**"),
        ("code", "import matplotlib.pyplot as plt"),
        ("markdown", "**Assistant**"),
    ]
    code = notebook.cells[1]
    assert code.outputs[0].output_type == "stream" and "14" in code.outputs[0].text  # the observation the model read
    assert notebook.cells[2].source.endswith("The sum is 14.")
    assert glm_agent("notebook", str(session)).returncode == 0 and session.with_suffix(".ipynb").is_file()


@pytest.mark.slow
def test_notebook_command_errors_are_one_line(tmp_path):
    assert_one_line_error(glm_agent("notebook", str(tmp_path / "none.jsonl")), "no conversation file")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"role": "user", "content": "hi"}\nnot json\n')
    assert_one_line_error(glm_agent("notebook", str(bad), "-o", str(tmp_path / "x.ipynb")), "bad.jsonl", "line 2")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_one_line_error(glm_agent("notebook", str(empty)), "holds no messages")


def descendants(pid: int) -> set[int]:
    """The processes under ``pid`` (Linux /proc), e.g. the kernel a chat started."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find the kernel process")
@pytest.mark.slow
@pytest.mark.kernel
@pytest.mark.timeout(240)
def test_chat_ctrl_c_stops_running_code_and_the_kernel_is_shut_down_on_exit(tmp_path):
    compute = "interpreter\n ```python\nprint(6 * 7)\n```"
    sleeper = "import time\nopen('sleeping', 'w').close()\ntime.sleep(60)"
    sleep = f"interpreter\n ```python\n{sleeper}\n```"
    model = script(tmp_path, [compute, "\n Done: 42.", sleep, compute, "\n Still 42."])
    notebook = tmp_path / "chat.ipynb"
    env = {k: v for k, v in os.environ.items() if k != "GLM_AGENT_MODEL"}
    env.update(NO_COLOR="1", TERM="xterm", COLUMNS="100")
    child = pexpect.spawn(
        COMMAND[0],
        [*COMMAND[1:], "chat", "--model", model, "--code-interpreter"],
        env=env,
        cwd=str(REPO),
        encoding="utf-8",
        timeout=None,  # every expect waits for its event: a busy machine is slow, not wrong (pytest-timeout backstops)
        preexec_fn=_as_at_a_terminal,
    )
    try:
        child.expect(on_screen("you> "))
        child.sendline("compute")
        child.expect(on_screen("print(6 * 7)"))  # the code is shown before it runs
        child.expect(on_screen("run it?"))
        child.sendline("y")
        child.expect(on_screen("42"))
        child.expect(on_screen("Done: 42."))
        child.expect(on_screen("you> "))
        kernel = descendants(child.pid)
        assert kernel, "a kernel process runs under the chat"
        child.sendline("sleep a minute")
        child.expect(on_screen("run it?"))
        child.sendline("y")
        child.expect(on_screen("running code"))
        # the kernel is sleeping once the marker is in its working folder (the workspace)
        wait_until(lambda: any(Path(f"/proc/{pid}/cwd/sleeping").exists() for pid in alive(kernel)), timeout=200)
        child.sendcontrol("c")
        child.expect(on_screen("[interrupted]"))
        child.expect(on_screen("you> "))
        child.sendline("again")
        child.expect(on_screen("run it?"))
        child.sendline("y")
        child.expect(on_screen("Still 42."))  # the same kernel works after the interrupt
        child.expect(on_screen("you> "))
        child.sendline(f"/notebook {notebook}")
        child.expect(on_screen("notebook saved to"))
        child.expect(on_screen("you> "))
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert alive(kernel) == set(), "the kernel is shut down when chat exits"
    cells = nbformat.read(str(notebook), as_version=4).cells
    assert [c.source for c in cells if c.cell_type == "code"] == [
        "print(6 * 7)",
        sleeper,
        "print(6 * 7)",
    ]


def test_run_at_a_terminal_asks_before_each_call(tmp_path):
    model = script(tmp_path, [calc("2 + 2") + "<|assistant|>" + calc("3 + 3"), "\n 4 and 6."])
    env = {k: v for k, v in os.environ.items() if k != "GLM_AGENT_MODEL"}
    env.update(NO_COLOR="1", TERM="xterm", COLUMNS="100")
    child = pexpect.spawn(
        COMMAND[0],
        [*COMMAND[1:], "run", "sums", "--model", model, "--tools", CALCULATOR, "--json"],
        env=env,
        cwd=str(REPO),
        encoding="utf-8",
        timeout=30,
    )
    child.logfile_read = seen = io.StringIO()
    try:
        child.expect(on_screen("run it?"))
        child.sendline("y")
        child.expect(on_screen("run it?"))
        child.sendline("n")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    lines = [json.loads(line) for line in seen.getvalue().splitlines() if line.startswith('{"type"')]
    assert [e["type"] for e in lines if e["type"] in ("tool_returned", "call_refused")] == [
        "tool_returned",
        "call_refused",
    ]
    assert lines[-1] == {"type": "final_answer", "step": 2, "text": "4 and 6."}


@pytest.mark.kernel
def test_chat_with_a_workspace_keeps_files_and_reset_gives_a_fresh_kernel(tmp_path):
    write = "interpreter\n ```python\nx = 5\nopen('/mnt/data/note.txt', 'w').write('kept')\nprint(x)\n```"
    check = "interpreter\n ```python\nprint('x' in globals())\n```"
    model = script(tmp_path, [write, "\n Written.", check, "\n Checked."])
    workspace = tmp_path / "ws"
    lines = ["write", "/reset", "check", "/exit"]
    proc = glm_agent(
        "chat",
        "--model",
        model,
        "--code-interpreter",
        "--workspace",
        str(workspace),
        "--yes",
        input="\n".join(lines) + "\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert "│ 5 " in proc.stdout and "new conversation" in proc.stdout
    assert "│ False " in proc.stdout  # the kernel's state did not survive /reset
    assert (workspace / "note.txt").read_text() == "kept"  # the folder did, after exit too


def test_a_reader_that_leaves_early_is_not_a_traceback():
    # `glm-agent tools tools/ | head -1`: the pipe closes before all schemas are written
    proc = subprocess.Popen(
        [sys.executable, "-m", "glm_agent.cli", "tools", str(TOOLS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    proc.stdout.close()  # before the command has written anything: its first write meets a closed pipe
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"Traceback" not in err


def test_chat_resumes_a_saved_transcript(tmp_path):
    from glm_agent.messages import AssistantMessage, SystemMessage, UserMessage, save_jsonl

    saved = save_jsonl(
        [
            SystemMessage(content="You are terse."),
            UserMessage(content="my name is Ada"),
            AssistantMessage(content="Hi Ada."),
        ],
        tmp_path / "web.jsonl",
    )
    after = tmp_path / "after.jsonl"
    model = script(tmp_path, ["\n Your name is Ada."])
    proc = glm_agent("chat", "--model", model, "--resume", str(saved), input=f"my name?\n/save {after}\n")
    assert proc.returncode == 0, proc.stderr
    assert f"resumed {saved}: 1 question so far" in proc.stdout and "Your name is Ada." in proc.stdout
    rows = [json.loads(line) for line in after.read_text().splitlines()]
    assert rows[0]["content"] == "You are terse."  # the transcript's own system prompt is kept
    assert [r["role"] for r in rows] == ["system", "user", "assistant", "user", "assistant"]


def test_chat_resume_of_a_bad_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"role": "user", "content": "hi"}\nnot json\n')
    proc = glm_agent("chat", "--model", script(tmp_path, ["\n Hi."]), "--resume", str(bad), input="")
    assert proc.returncode == 2 and "line 2: not JSON" in proc.stderr
    proc = glm_agent(
        "chat", "--model", script(tmp_path, ["\n Hi."]), "--resume", str(tmp_path / "none.jsonl"), input=""
    )
    assert proc.returncode == 2 and "no conversation file" in proc.stderr


def test_the_local_engine_flags_become_local_model_options():
    import argparse

    from glm_agent.cli._agent import add_local_model_arguments, local_model_options

    parser = argparse.ArgumentParser()
    add_local_model_arguments(parser)
    assert local_model_options(parser.parse_args([])) == {}  # unset flags leave LocalModel's defaults
    options = local_model_options(parser.parse_args(["--max-batch", "4", "--share-prefill"]))
    assert options == {"max_batch": 4, "share_prefill": True}
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-batch", "0"])
    from glm_agent.errors import ModelError
    from glm_agent.models import load_chat_model

    with pytest.raises(ModelError, match="--max-batch, --share-prefill apply to local weights only"):
        load_chat_model("http://127.0.0.1:9/v1", **options)  # not passed on silently to a server's client
