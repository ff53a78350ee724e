"""Jupyter: the %%agent magic in real kernels (nbclient), rich reprs, put/get, notebook continue, terminal IPython."""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

from glm_agent import Agent, CodeInterpreter, tool
from glm_agent._transcript import Transcript
from glm_agent.chatglm3 import ChatGLM3Tokenizer
from glm_agent.errors import InterpreterError
from glm_agent.interpreter import PNGImage, check_fits, notebook_history, read_notebook
from glm_agent.interpreter._transfer import decode
from glm_agent.messages import UserMessage
from glm_agent.models import ScriptedModel
from tests._data import REPO, TOKENIZER

PROBE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
#: a real tag that runs or loads something (escaped text has no raw "<")
RAW_HTML = re.compile(r"<(script|iframe|img(?![^>]*src=\"data:image/(png|jpeg);base64,))|<[^>]*\son\w+=", re.IGNORECASE)


def markdown_loads_nothing(text: str) -> bool:
    """True when a CommonMark renderer that allows raw HTML finds none in ``text``, and no image."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(text)
    found = [t.type for t in tokens] + [c.type for t in tokens for c in t.children or []]
    return not {"html_block", "html_inline", "image"} & set(found)


def execute(cells: list[str], tmp_path: Path, *, allow_errors: bool = False) -> list:
    """Run code cells in a real kernel (cwd ``tmp_path``) as nbclient does; return the executed cells."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    return notebook.cells


def replies(tmp_path: Path, items: list[str]) -> str:
    path = tmp_path / "replies.json"
    path.write_text(json.dumps(items))
    return f"scripted:{path}"


def html_of(cell) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)


def text_of(cell) -> str:
    return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in cell.outputs)


# -- the magic, headless ---------------------------------------------------------------------------
@pytest.mark.kernel
def test_magic_renders_cards_inline_images_and_escapes_a_probe(tmp_path, monkeypatch):
    monkeypatch.delenv("GLM_AGENT_MODEL", raising=False)
    spec = replies(
        tmp_path,
        [
            "lookup\n ```python\ntool_call(city='Paris')\n```",
            "interpreter\n ```python\nimport matplotlib.pyplot as plt\nprint('drawing <b>bold</b>')\n"
            "plt.plot([1, 3, 2]); plt.show()\nout = data.assign(double=data.a * 2)\n```",
            "\n Done: " + PROBE,
        ],
    )
    cells = execute(
        [
            "%load_ext glm_agent\nimport pandas as pd\nfrom glm_agent import tool\n\n"
            "@tool\ndef lookup(city: str) -> str:\n    '''Look a city up.'''\n"
            f"    return {PROBE!r} + city\n\ndata = pd.DataFrame({{'a': [1, 2, 3]}})",
            f"%%agent --model {spec} --tools lookup --with data\nLook Paris up, then plot.",
            "%agent --get out\nout.to_dict('list')",
        ],
        tmp_path,
    )
    run = html_of(cells[1])
    assert run.count('class="glm-agent-card"') == 2
    assert "Tool: lookup · ok" in run and "Code interpreter · ok" in run
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in run  # the observation, as text
    assert "drawing &lt;b&gt;bold&lt;/b&gt;" in run  # kernel output, as text
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="output image">', run)
    assert not RAW_HTML.search(run), RAW_HTML.search(run)
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in cells[1].outputs)
    assert "Done: &lt;script&gt;" in markdown and markdown_loads_nothing(markdown)
    assert "In the sandbox now: out (DataFrame)" in text_of(cells[1])
    assert "{'a': [1, 2, 3], 'double': [2, 4, 6]}" in text_of(cells[2])  # --get: Arrow back into the notebook


@pytest.mark.kernel
def test_magic_keeps_the_conversation_resets_and_reports_bad_options(tmp_path, monkeypatch):
    monkeypatch.delenv("GLM_AGENT_MODEL", raising=False)
    spec = replies(tmp_path, ["\n First answer.", "\n Second answer.", "\n After the reset."])
    cells = execute(
        [
            "%load_ext glm_agent",
            "%agent --model nowhere:/x -- hi",
            "%agent hi",  # no model at all
            f"%agent --model {spec} -- one",
            "%agent two",
            "from glm_agent.jupyter import session\n[m.role for m in session().agent.messages]",
            "%agent --reset",
            "%agent three\nlen(session().agent.messages)",
            "%agent --with missing -- hi",
            "%agent --max-steps x",
        ],
        tmp_path,
        allow_errors=True,
    )
    assert "UsageError" in text_of(cells[2]) or any(o.get("ename") == "UsageError" for o in cells[2].outputs)
    assert "GLM_AGENT_MODEL" in json.dumps(cells[2].outputs)
    assert "First answer." in text_of(cells[3]) and "Second answer." in text_of(cells[4])
    assert "['system', 'user', 'assistant', 'user', 'assistant']" in text_of(cells[5])
    assert "The conversation starts over." in text_of(cells[6])
    assert "After the reset." in text_of(cells[7]) and text_of(cells[7]).rstrip().endswith("3")
    assert "no variable missing in this notebook" in json.dumps(cells[8].outputs)
    assert "invalid int value" in json.dumps(cells[9].outputs)


@pytest.mark.kernel
def test_live_display_sends_the_first_and_final_render_under_a_long_throttle(tmp_path):
    spec = replies(tmp_path, ["\n " + " ".join(f"word{i}" for i in range(200))])
    cells = execute(
        [
            "from glm_agent import Agent\nfrom glm_agent.jupyter import LiveDisplay\nfrom glm_agent.models import load_chat_model\n"
            f"agent = Agent(load_chat_model({spec!r}))\nview = LiveDisplay(interval=3600)\n"
            "result = agent.run('go', on_event=view.add)\nview.updates, len(result.events)"
        ],
        tmp_path,
    )
    displays = [o for o in cells[0].outputs if o.output_type == "display_data"]
    assert len(displays) == 1 and "word199" in displays[0]["data"]["text/html"]
    value = next(o for o in cells[0].outputs if o.output_type == "execute_result")["data"]["text/plain"]
    updates, events = ast.literal_eval(value)
    assert updates == 2 and events > 50  # the first render, then the final one: nothing between


@pytest.mark.kernel
def test_cells_option_puts_the_agent_code_into_a_new_cell(tmp_path):
    from jupyter_client.manager import start_new_kernel

    spec = replies(tmp_path, ["interpreter\n ```python\nprint(6 * 7)\n```", "\n 42."])
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        client.execute_interactive("%load_ext glm_agent", timeout=60)
        reply = client.execute_interactive(
            f"%%agent --model {spec} --code-interpreter --cells\nSix times seven", timeout=120
        )
        payloads = reply["content"]["payload"]
        assert [p["source"] for p in payloads] == ["set_next_input"]
        assert payloads[0]["replace"] is False and "print(6 * 7)" in payloads[0]["text"]
        assert payloads[0]["text"].startswith("# agent code 1 of 1 (review before running)")
    finally:
        client.execute_interactive("%unload_ext glm_agent", timeout=60)
        client.stop_channels()
        manager.shutdown_kernel(now=True)


@pytest.mark.kernel
@pytest.mark.slow
def test_terminal_ipython_gets_plain_text(tmp_path):
    spec = replies(tmp_path, ["interpreter\n ```python\nprint('from the sandbox')\n```", "\n All " + PROBE])
    script = (
        "get_ipython().run_line_magic('load_ext', 'glm_agent')\n"
        f"get_ipython().run_cell_magic('agent', '--model {spec} --code-interpreter', 'go')\n"
    )
    (tmp_path / "go.ipy").write_text(script)
    proc = subprocess.run(
        [sys.executable, "-m", "IPython", "--no-banner", "--colors=nocolor", str(tmp_path / "go.ipy")],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "print('from the sandbox')" in proc.stdout and "from the sandbox\n" in proc.stdout
    assert "All <script>" in proc.stdout  # plain text is shown as it is
    assert "<div" not in proc.stdout and "<details" not in proc.stdout


# -- reprs ------------------------------------------------------------------------------------------
@tool
def echo(text: str) -> str:
    """Say it back."""
    return text


def test_run_result_event_and_agent_reprs_escape_everything():
    agent = Agent(
        ScriptedModel(
            [
                f"echo\n ```python\ntool_call(text={PROBE!r})\n```",
                f"\n Answer {PROBE} ![x](http://127.0.0.1:9/leak.png) <http://127.0.0.1:9/a>",
            ]
        ),
        tools=[echo],
    )
    result = agent.run(PROBE)
    forms = [result._repr_html_(), agent._repr_html_()] + [e._repr_html_() for e in result.events]
    for form in forms:
        assert not RAW_HTML.search(form), form
        assert "<a href" not in form or 'rel="noopener noreferrer nofollow"' in form
    for form in [result._repr_markdown_(), agent._repr_markdown_()] + [e._repr_markdown_() for e in result.events]:
        assert markdown_loads_nothing(form), form
    assert "stopped: answer, 2 steps, 1 call" in result._repr_html_()
    assert "Answer <script>" in Transcript.of(result.events).text()


def test_transcript_cards_follow_the_calls_of_a_step():
    from glm_agent import events as ev
    from glm_agent.messages import CodeCall, ToolCall

    a, b = ToolCall(name="t", arguments={"n": 1}), ToolCall(name="t", arguments={"n": 2})
    transcript = Transcript.of(
        [
            ev.TextDelta(1, "Thinking."),
            ev.CallStarted(1, "t"),
            ev.ToolCalled(1, a),
            ev.ToolCalled(1, b),
            ev.ToolReturned(1, b, False, "bad", "tool_error"),
            ev.ToolReturned(1, a, True, "good"),
            ev.CallStarted(2, "interpreter"),
            ev.CodeStarted(2, CodeCall(code="print(1)")),
            ev.CallRefused(2, CodeCall(code="print(1)"), "refused", None),
            ev.ParseFailed(3, "weird<name>", "could not parse"),
            ev.RunError(3, "max_steps", "stopped after 3 steps"),
        ]
    )
    text = transcript.text()
    assert text.index('{"n": 1}') < text.index('{"n": 2}')
    assert re.search(r'\{"n": 1\}\ngood', text) and re.search(r'\{"n": 2\}\nbad', text)
    assert "Code interpreter · refused" in text and "Not run: the call was not approved." in text
    assert "weirdname: the call could not be parsed" in text and "Stopped (max_steps)" in text
    assert transcript.html().count("<details") == 4


def test_execution_result_reprs_show_outputs_without_the_kernels_html(tmp_path):
    with CodeInterpreter(workspace=tmp_path / "ws") as interpreter:
        result = interpreter.run(
            "from IPython.display import HTML, display\nprint('<b>x</b>')\n"
            f"display(HTML({PROBE!r}))\nimport matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()\n1 / 0"
        )
    shown = result._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in shown and "ZeroDivisionError" in shown
    assert "data:image/png;base64," in shown and not RAW_HTML.search(shown)
    assert "&lt;IPython.core.display.HTML object&gt;" in shown  # the kernel's HTML by its plain-text form
    assert "ZeroDivisionError" in result._repr_markdown_()


# -- put / get --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    with CodeInterpreter(workspace=tmp_path_factory.mktemp("ws")) as interpreter:
        yield interpreter


VALUES = {
    "number": 3.5,
    "whole": 12,
    "flag": True,
    "nothing": None,
    "text": "héllo <b>",
    "blob": b"\x00\xffbytes",
    "nested": {"a": [1, 2.5, None, "s", {"b": False}]},
    "array": np.arange(12, dtype=np.float32).reshape(3, 4),
    "ints": np.array([1, 2, 3], dtype=np.int64),
    "frame": pd.DataFrame(
        {"x": [1, 2], "y": ["a", "b"], "t": pd.to_datetime(["2024-01-01", "2024-02-01"])}, index=[5, 6]
    ),
    "series": pd.Series([1.5, 2.5], name="s"),
}


@pytest.mark.kernel
@pytest.mark.parametrize("name", list(VALUES))
def test_put_then_get_round_trips(sandbox, name):
    value = VALUES[name]
    header = sandbox.put(name, value)
    assert header.startswith(f"#Variable: {name}\n#Type: ") and header.endswith("#Variable loaded\n")
    back = sandbox.get(name)
    if isinstance(value, np.ndarray):
        assert back.dtype == value.dtype and np.array_equal(back, value)
    elif isinstance(value, pd.DataFrame):
        pd.testing.assert_frame_equal(back, value)
    elif isinstance(value, pd.Series):
        pd.testing.assert_series_equal(back, value)
    else:
        assert back == value and type(back) is type(value)


@pytest.mark.kernel
def test_get_brings_a_figure_as_png_and_refuses_what_has_no_safe_format(sandbox):
    sandbox.run(
        "import matplotlib.pyplot as plt\nfig = plt.figure(); plt.plot([1, 2])\nclass Thing: pass\nthing = Thing()"
    )
    figure = sandbox.get("fig")
    assert isinstance(figure, PNGImage) and figure.data.startswith(b"\x89PNG")
    with pytest.raises(InterpreterError, match="cannot bring back a __main__.Thing"):
        sandbox.get("thing")
    with pytest.raises(InterpreterError, match="NameError"):
        sandbox.get("not_there")
    with pytest.raises(TypeError, match="cannot put a builtins.object"):
        sandbox.put("o", object())
    with pytest.raises(TypeError, match="array of Python objects"):
        sandbox.put("o", np.array([object()], dtype=object))
    with pytest.raises(InterpreterError, match="not a variable name"):
        sandbox.put("x = 1; import os", 1)
    with pytest.raises(InterpreterError, match="over max_bytes"):
        sandbox.run("big = b'x' * 100_000")
        sandbox.get("big", max_bytes=1000)


@pytest.mark.kernel
def test_a_pickle_written_by_the_kernel_is_never_unpickled(sandbox, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    payload = pickle.dumps(Evil())
    # the model's code replaces numpy.save in the sandbox, so the kernel answers "npy" with a pickle
    sandbox.run(
        "import numpy, io\n"
        f"_payload = {payload!r}\n"
        "numpy.save = lambda buffer, value, allow_pickle=False: buffer.write(_payload)\n"
        "trap = numpy.zeros(3)"
    )
    with pytest.raises(InterpreterError, match="pickled"):
        sandbox.get("trap")
    assert not marker.exists()
    with pytest.raises(InterpreterError, match="unknown format"):
        decode("pickle", payload)
    with pytest.raises(InterpreterError, match="not a PNG"):
        decode("png", payload)
    assert not marker.exists()
    sandbox.run("import importlib; importlib.reload(numpy)")


# -- notebook continue ------------------------------------------------------------------------------
def _source_notebook(path: Path) -> Path:
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# Numbers\nA small notebook."),
            nbformat.v4.new_code_cell("x = [3, 1, 2]\nprint(sorted(x))"),
            nbformat.v4.new_code_cell("1 / 0"),
            nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot(x); plt.show()"),
        ]
    )
    nbformat.write(notebook, str(path))
    return path


def _glm_agent(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GLM_AGENT_MODEL"}
    return subprocess.run(
        [sys.executable, "-m", "glm_agent.cli", *args], capture_output=True, text=True, timeout=240, cwd=cwd, env=env
    )


@pytest.mark.kernel
@pytest.mark.slow
def test_notebook_continue_runs_the_notebook_and_appends_the_agent_turn(tmp_path):
    source = _source_notebook(tmp_path / "in.ipynb")
    spec = replies(tmp_path, ["interpreter\n ```python\nprint(sum(x) * 10)\n```", "\n The sum of x times ten is 60."])
    proc = _glm_agent(
        "notebook", "continue", str(source), "Sum x times ten.", "-o", "out.ipynb", "--model", spec, "-y", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    out = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    nbformat.validate(out)
    sources = [c.source for c in out.cells]
    assert sources[:4] == [c.source for c in nbformat.read(str(source), as_version=4).cells]
    assert sources[4:] == [
        "**User**\n\nSum x times ten.",
        "print(sum(x) * 10)",
        "**Assistant**\n\nThe sum of x times ten is 60.",
    ]
    kinds = [[o.output_type for o in c.get("outputs", [])] for c in out.cells]
    assert kinds[1] == ["stream"] and kinds[2] == ["error"] and kinds[3] == ["display_data"] and kinds[5] == ["stream"]
    assert "image/png" in out.cells[3].outputs[0]["data"] and out.cells[5].outputs[0]["text"] == "60\n"
    # OUT re-executes to the same outputs (the deterministic cells)
    rerun = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    NotebookClient(rerun, timeout=120, kernel_name="python3", allow_errors=True).execute()
    for before, after in zip(out.cells, rerun.cells, strict=True):
        if before.cell_type == "code":
            assert [o.output_type for o in before.outputs] == [o.output_type for o in after.outputs]
            assert [o.get("text") for o in before.outputs] == [o.get("text") for o in after.outputs]
            assert [o.get("ename") for o in before.outputs] == [o.get("ename") for o in after.outputs]


@pytest.mark.kernel
def test_the_model_sees_the_notebook_as_calls_and_observations(tmp_path):
    notebook = read_notebook(_source_notebook(tmp_path / "in.ipynb"))
    with CodeInterpreter(workspace=tmp_path / "ws") as interpreter:
        history = notebook_history(notebook, interpreter, name="in.ipynb")
        model = ScriptedModel(["interpreter\n ```python\nprint(len(x))\n```", "\n 3."])
        agent = Agent(model, code_interpreter=interpreter)
        agent.load_messages(history.messages, kernel_state_kept=True)
        result = agent.run("How long is x?")
    assert result.calls[0].observation == "```result\n3\n```"  # the notebook's variables are there
    prompt = model.prompts[0]
    roles = [(m.role, m.metadata) for m in prompt[1:]]
    assert roles[:8] == [
        ("user", ""),
        ("assistant", ""),
        ("assistant", "interpreter"),
        ("observation", ""),
        ("assistant", "interpreter"),
        ("observation", ""),
        ("assistant", "interpreter"),
        ("observation", ""),
    ]
    observations = [m.content for m in prompt if m.role == "observation"]
    assert observations[0] == "```result\n[1, 2, 3]\n```"
    assert "ZeroDivisionError" in observations[1] and "[Image]" in observations[2]
    assert "earlier variables" not in prompt[-1].content  # no note that the kernel's state was lost


def test_saved_outputs_are_used_and_a_cut_is_marked(tmp_path):
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("a = 1", outputs=[]),
            nbformat.v4.new_code_cell(
                "print(a)",
                outputs=[nbformat.v4.new_output("stream", name="stdout", text="1\n")],
            ),
            nbformat.v4.new_code_cell(
                "oops",
                outputs=[
                    nbformat.v4.new_output(
                        "error", ename="NameError", evalue="oops", traceback=["\x1b[31mNameError\x1b[0m: oops"]
                    )
                ],
            ),
        ]
    )
    history = notebook_history(notebook, None, last_cells=2)
    contents = [m.content for m in history.messages]
    assert history.left_out == 1 and "[1 earlier cells of the notebook are not shown]" in contents
    assert "```result\n1\n```" in contents and "```result\nNameError: oops\n```" in contents
    assert not any("a = 1" in c for c in contents)


def test_a_notebook_too_long_for_the_context_is_refused_with_its_token_count():
    class Counted:  # what check_fits reads of a model: its real tokenizer and a small context
        tokenizer = ChatGLM3Tokenizer.from_pretrained(TOKENIZER)
        context_length = 40

    messages = [UserMessage(content="word " * 100)]
    with pytest.raises(InterpreterError, match=r"needs \d{3} tokens with the question; the model's context holds 40"):
        check_fits(messages, "and?", Counted())
    Counted.context_length = 10_000
    check_fits(messages, "and?", Counted())


def test_notebook_continue_refuses_a_file_that_is_not_a_notebook(tmp_path):
    (tmp_path / "bad.ipynb").write_text("{not json")
    proc = _glm_agent(
        "notebook", "continue", "bad.ipynb", "q", "-o", "o.ipynb", "--model", "scripted:x.json", cwd=tmp_path
    )
    assert proc.returncode == 2 and "not a valid Jupyter notebook" in proc.stderr and "Traceback" not in proc.stderr
    proc = _glm_agent("notebook", "continue", "none.ipynb", "q", "-o", "o.ipynb", cwd=tmp_path)
    assert proc.returncode == 2 and "none.ipynb: no such notebook" in proc.stderr


def test_the_old_notebook_form_still_works(tmp_path):
    agent = Agent(ScriptedModel(["\n Hi."]))
    agent.run("Hello")
    agent.save(tmp_path / "s.jsonl")
    proc = _glm_agent("notebook", "s.jsonl", "-o", "s.ipynb", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "**Assistant**\n\nHi." in [c.source for c in nbformat.read(str(tmp_path / "s.ipynb"), as_version=4).cells]


def test_the_extension_loads_from_the_package_root():
    import glm_agent

    assert callable(glm_agent.load_ipython_extension) and callable(glm_agent.unload_ipython_extension)
    assert (REPO / "glm_agent" / "jupyter" / "__init__.py").is_file()


@pytest.mark.kernel
def test_stopping_the_notebook_kernel_stops_the_run_and_the_next_question_works(tmp_path):
    from jupyter_client.manager import start_new_kernel

    spec = replies(
        tmp_path,
        [
            "interpreter\n ```python\nimport time\nprint('waiting', flush=True)\nwhile True:\n    time.sleep(0.05)\n```",
            "\n Next.",
        ],
    )
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        client.execute_interactive("%load_ext glm_agent", timeout=60)
        msg_id = client.execute(f"%%agent --model {spec} --code-interpreter\nLoop")
        while True:  # the live display shows the sandbox's output while the code runs
            msg = client.get_iopub_msg(timeout=120)
            data = msg["content"].get("data", {})
            if msg["parent_header"].get("msg_id") == msg_id and "waiting" in data.get("text/plain", ""):
                break
        manager.interrupt_kernel()
        reply = client.get_shell_msg(timeout=120)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = client.get_shell_msg(timeout=120)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        outputs: list = []
        reply = client.execute_interactive(
            "%agent Go on\nfrom glm_agent.jupyter import session\nprint(session().interpreter.run('print(40 + 2)').observation)",
            timeout=120,
            output_hook=outputs.append,
        )
        assert reply["content"]["status"] == "ok"
        shown = json.dumps([o["content"] for o in outputs])
        assert "Next." in shown and "42" in shown  # the conversation and the sandbox go on
    finally:
        client.execute_interactive("%unload_ext glm_agent", timeout=60)
        client.stop_channels()
        manager.shutdown_kernel(now=True)
