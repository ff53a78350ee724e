"""The interpreter's pure parts: observation text, bounded capture, limits, exit descriptions, notebook building."""

from __future__ import annotations

import base64
import json
import os
import signal
import struct

import nbformat
import pytest

from glm_agent.interpreter import Limits
from glm_agent.interpreter._capture import OutputCollector
from glm_agent.interpreter._launcher import describe_exit, read_oom_kills
from glm_agent.interpreter._limits import GiB, MiB
from glm_agent.interpreter._notebook import build_notebook
from glm_agent.interpreter._observation import format_observation, report_notices, truncate_middle
from glm_agent.interpreter._outcome import CellReport
from glm_agent.interpreter._results import DisplayOutput, ExecutionResult, OmittedOutput, StreamOutput, strip_ansi
from glm_agent.interpreter._stream_log import (
    LOG_BYTES,
    StreamLog,
    log_from_json,
    log_tail,
    log_to_json,
    new_log,
    read_log,
)
from glm_agent.messages import AssistantMessage, UserMessage

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def _msg(kind: str, **content) -> dict:
    return {"msg_type": kind, "content": content, "parent_header": {"msg_id": "m"}}


def test_strip_ansi_removes_colour_and_cursor_codes():
    assert strip_ansi("\x1b[0;31mZeroDivisionError\x1b[0m: x\x1b[2K\x1b]0;title\x07") == "ZeroDivisionError: x"


def test_truncate_middle_keeps_head_and_tail_within_the_limit():
    text = "".join(f"line {i}\n" for i in range(1000))
    cut = truncate_middle(text, 300)
    assert len(cut) <= 300
    assert cut.startswith("line 0\nline 1\n") and cut.endswith("line 999\n")
    omitted = int(cut.split("[")[1].split(" characters")[0].replace(",", ""))
    assert len(cut) - len(f"\n... [{omitted:,} characters omitted] ...\n") + omitted == len(text)
    assert truncate_middle("short", 300) == "short"


def test_observation_is_a_result_fence_with_notices_after_it():
    assert format_observation("5050\n", [], 100) == "```result\n5050\n```"
    assert format_observation("", ["[Timed out]"], 100) == "```result\n\n```\n[Timed out]"
    assert format_observation("10%\r50%\r100%\ndone\n", [], 100) == "```result\n100%\ndone\n```"  # progress bars


def test_collector_merges_streams_and_keeps_order_of_rich_outputs(tmp_path):
    collector = OutputCollector(tmp_path, "run001", max_chars=1000)
    collector.add(_msg("stream", name="stdout", text="a"))
    collector.add(_msg("stream", name="stdout", text="b\n"))
    collector.add(_msg("display_data", data={"image/png": PNG, "text/plain": "<Figure>"}, metadata={}))
    collector.add(_msg("stream", name="stderr", text="warn\n"))
    collector.add(_msg("execute_result", data={"text/plain": "3"}, metadata={}, execution_count=4))
    collector.add(_msg("status", execution_state="idle"))
    outputs = collector.finish()
    assert [o.kind for o in outputs] == ["stream", "display_data", "stream", "execute_result"]
    assert outputs[0].text == "ab\n"
    assert outputs[1].image == tmp_path / "run001-1.png"
    assert outputs[1].image.read_bytes().startswith(b"\x89PNG")
    assert outputs[3].execution_count == 4


def test_collector_bounds_memory_and_counts_what_it_dropped(tmp_path):
    collector = OutputCollector(tmp_path, "run", max_chars=100, max_outputs=3)
    for i in range(10_000):
        collector.add(_msg("stream", name="stdout", text=f"{i:05d}\n"))
    for _ in range(5):
        collector.add(_msg("display_data", data={"text/plain": "x"}, metadata={}))
    outputs = collector.finish()
    kept = sum(len(o.text) for o in outputs if isinstance(o, StreamOutput))
    assert kept == 100
    assert collector.dropped_chars == 60_000 - 100
    assert outputs[0].text.startswith("00000\n")
    assert isinstance(outputs[1], OmittedOutput) and outputs[1].chars == 60_000 - 100
    assert outputs[2].text.endswith("09999\n")
    assert sum(isinstance(o, DisplayOutput) for o in outputs) == 3
    assert isinstance(outputs[-1], OmittedOutput) and outputs[-1].outputs == 2


def test_collector_honours_clear_output(tmp_path):
    collector = OutputCollector(tmp_path, "run", max_chars=1000)
    collector.add(_msg("stream", name="stdout", text="old\n"))
    collector.add(_msg("clear_output", wait=True))
    collector.add(_msg("stream", name="stdout", text="new\n"))
    assert [o.text for o in collector.finish()] == ["new\n"]


def test_limits_defaults_and_validation():
    limits = Limits()
    assert limits.rlimits() == {
        "memory_bytes": 4 * 1024**3,
        "cpu_seconds": 3600,
        "open_files": 1024,
        "file_size_bytes": 1024**3,
    }
    assert Limits(memory_bytes=None).rlimits()["memory_bytes"] is None
    with pytest.raises(ValueError, match="at least 64"):
        Limits(open_files=3)
    with pytest.raises(TypeError):
        Limits(cpu_seconds=1.5)


def test_describe_exit_names_signals_and_limits():
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV (segmentation fault)"
    assert (
        describe_exit(-signal.SIGXCPU, Limits(cpu_seconds=60))
        == "killed by SIGXCPU (its CPU time limit of 60 s was reached)"
    )
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(None) == "still running"
    limits = Limits(total_memory_bytes=3 << 29)
    assert describe_exit(-signal.SIGKILL, limits, oom_killed=True) == (
        "killed by SIGKILL: the session's memory limit of 1.5 GiB (Limits.total_memory_bytes) was reached"
    )
    assert describe_exit(-signal.SIGKILL, limits).startswith("killed by SIGKILL")
    assert "memory limit" not in describe_exit(-signal.SIGKILL, limits)


def test_oom_kill_counts_are_read_without_following_links(tmp_path):
    assert read_oom_kills(tmp_path) == 0
    (tmp_path / "elsewhere").write_text("7")
    (tmp_path / "oom_kills").symlink_to(tmp_path / "elsewhere")  # planted by the kernel: not followed
    assert read_oom_kills(tmp_path) == 0
    (tmp_path / "oom_kills").unlink()
    (tmp_path / "oom_kills").write_text("2")
    assert read_oom_kills(tmp_path) == 2


def test_build_notebook_matches_calls_to_runs_and_keeps_unmatched_code():
    run = ExecutionResult(code="print(1)", outputs=[StreamOutput("stdout", "1\n")], status="ok", text="1\n",
                          observation="```result\n1\n```", execution_count=1)  # fmt: skip
    conversation = [
        UserMessage(content="go"),
        AssistantMessage(metadata="interpreter", content="```python\nprint(1)\n```"),
        {"role": "observation", "content": "```result\n1\n```"},
        AssistantMessage(metadata="interpreter", content="```python\nprint(2)\n```"),  # ran elsewhere
        {"role": "observation", "content": "```result\n2\n```"},
        AssistantMessage(metadata="get_weather", content="```python\ntool_call(city='Beijing')\n```"),
        {"role": "observation", "content": '{"temperature": 20}'},
    ]
    notebook = build_notebook([run], conversation)
    nbformat.validate(notebook)
    cells = [(c.cell_type, c.source) for c in notebook.cells]
    assert cells[0] == ("markdown", "**User**\n\ngo")
    assert cells[1] == ("code", "print(1)") and notebook.cells[1].outputs[0].text == "1\n"
    assert cells[2] == ("code", "print(2)") and notebook.cells[2].outputs == []
    assert cells[3] == ("markdown", "**Observation**\n\n```result\n2\n```")  # not shown by any run
    assert cells[4][1].startswith("**Tool call** `get_weather`")
    assert cells[5] == ("markdown", '**Observation**\n\n{"temperature": 20}')
    assert len(cells) == 6


def test_the_sandbox_shows_the_kernels_python_and_not_the_checkout_around_it(tmp_path, monkeypatch):
    # a CI clone with its venv under /tmp: the venv (prefix, site-packages) is shown, the checkout is not
    import site
    import sys

    from glm_agent.interpreter._launcher import python_paths

    venv = tmp_path / "checkout" / ".venv"
    packages = venv / "lib" / "python3" / "site-packages"
    packages.mkdir(parents=True)
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "exec_prefix", str(venv))
    monkeypatch.setattr(sys, "path", [str(tmp_path / "checkout"), str(packages), "/tmp", ""])
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(packages)])
    shown = python_paths()
    assert str(venv) in shown and str(packages) in shown and sys.base_prefix in shown
    assert str(tmp_path / "checkout") not in shown and "/tmp" not in shown


def test_kernel_environment_is_an_allowlist(monkeypatch):
    from glm_agent.interpreter._environment import check_env, kernel_environment

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("FOO", "bar")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    env = kernel_environment(home="/mnt/data", tmpdir="/tmp", scratch="/run/kernel/scratch", extra={"FOO": "mine"})
    assert "OPENAI_API_KEY" not in env
    assert env["FOO"] == "mine"  # only because the caller passed it
    assert env["LC_ALL"] == "C.UTF-8" and env["OMP_NUM_THREADS"] == "2" and env["HOME"] == "/mnt/data"
    with pytest.raises(ValueError, match="invalid environment variable name"):
        check_env({"A=B": "x"})
    with pytest.raises(ValueError, match="without NUL"):
        check_env({"A": 1})
    with pytest.raises(TypeError, match="mapping"):
        check_env(["A"])


def test_seccomp_filter_is_well_formed():
    from glm_agent.interpreter._seccomp import DENIED, build_filter

    program = build_filter()
    assert len(program) < 4096  # the kernel's limit on a classic BPF program
    assert all(0 <= code < 2**16 and 0 <= jt < 256 and 0 <= jf < 256 for code, jt, jf, _k in program)
    assert program[-1] == (0x06, 0, 0, 0x7FFF0000)  # default: allow
    assert {"mount", "unshare", "ptrace", "bpf", "keyctl", "chroot", "setns"} <= set(DENIED)


def test_limits_session_fields_are_validated():
    limits = Limits(max_processes=64, total_memory_bytes=1 * GiB, workspace_bytes=64 * MiB)
    assert limits.rlimits() == {
        "memory_bytes": limits.memory_bytes, "cpu_seconds": 3600, "open_files": 1024, "file_size_bytes": 1 * GiB,
    }  # fmt: skip
    with pytest.raises(ValueError, match="max_processes"):
        Limits(max_processes=2)
    with pytest.raises(TypeError, match="workspace_bytes"):
        Limits(workspace_bytes=1.5)  # type: ignore[arg-type]


def test_a_listing_cut_short_is_said():
    notices = report_notices(CellReport(["/mnt/data/a.txt"], more_files=True), Limits(), "/mnt/data")
    assert notices[0] == "[Files written in /mnt/data: a.txt]"
    assert "more than 5,000 files and folders" in notices[1]
    assert report_notices(CellReport(), Limits(), "/mnt/data") == []


def _stream(name: str, text: str) -> dict:
    return _msg("stream", name=name, text=text)


def test_a_stream_log_adds_only_what_never_arrived(tmp_path):
    collector = OutputCollector(tmp_path, "run", max_chars=1000)
    collector.add(_stream("stdout", "one\ntw"))
    log = StreamLog([("stdout", "one\n"), ("stderr", "err\n"), ("stdout", "two\n"), ("stdout", "three\n")])
    assert collector.recover(log) == len("err\no\nthree\n")
    assert [(o.name, o.text) for o in collector.finish()] == [
        ("stdout", "one\ntw"),
        ("stderr", "err\n"),
        ("stdout", "o\nthree\n"),
    ]


def test_a_stream_log_that_does_not_line_up_adds_nothing(tmp_path):
    collector = OutputCollector(tmp_path, "run", max_chars=1000)
    collector.add(_stream("stdout", "from this cell\n"))
    # a thread of an earlier cell printed into the log too (its output went to that cell)
    log = StreamLog([("stdout", "thread says hi\n"), ("stdout", "from this cell\nlost\n")])
    assert collector.recover(log) == 0
    assert collector.recover(StreamLog([("stdout", "short")])) == 0  # less than arrived: not this cell
    assert [o.text for o in collector.finish()] == ["from this cell\n"]


def test_a_stream_log_that_starts_late_marks_the_gap(tmp_path):
    collector = OutputCollector(tmp_path, "run", max_chars=1000)
    collector.add(_stream("stdout", "a" * 10))
    log = StreamLog([("stdout", "tail\n")], skipped={"stdout": 25})
    assert collector.recover(log) == 5
    outputs = collector.finish()
    assert [type(o).__name__ for o in outputs] == ["StreamOutput", "OmittedOutput", "StreamOutput"]
    assert outputs[1].chars == 15 and collector.dropped_chars == 15 and outputs[2].text == "tail\n"


def test_the_stream_log_file_is_read_with_bounds_and_stops_at_garbage():
    def record(tag: bytes, body: bytes) -> bytes:
        return struct.pack("<cI", tag, len(body)) + body

    fd = new_log()
    try:
        assert os.fstat(fd).st_size == LOG_BYTES
        assert read_log(fd) == StreamLog()  # nothing written yet
        skipped = record(b"s", struct.pack("<QQ", 2, 0))
        good = skipped + record(b"o", b"abc") + record(b"e", "é".encode())
        os.pwrite(fd, good + b"\0" + record(b"o", b"after the end"), 0)
        log = read_log(fd)
        assert log.skipped == {"stdout": 2, "stderr": 0}
        assert log.records == [("stdout", "abc"), ("stderr", "é")]
        os.pwrite(fd, good + struct.pack("<cI", b"o", 2**31), 0)  # a length past the file's end
        assert read_log(fd).records == [("stdout", "abc"), ("stderr", "é")]
        os.pwrite(fd, record(b"o", b"x") + skipped, 0)  # a count of skipped characters only comes first
        assert read_log(fd) == StreamLog([("stdout", "x")])
    finally:
        os.close(fd)


def test_a_stream_log_travels_as_bounded_json():
    log = StreamLog([("stdout", "x" * 100_000), ("stderr", "\x01" * 10), ("stdout", "end\n")], {"stdout": 7})
    value = log_to_json(log, 4096)
    assert len(json.dumps(value)) <= 4096
    back = log_from_json(json.loads(json.dumps(value)))
    assert back.records[-2:] == [("stderr", "\x01" * 10), ("stdout", "end\n")]
    kept = sum(len(text) for _, text in back.records)
    assert back.skipped["stdout"] + back.skipped.get("stderr", 0) + kept == 7 + 100_000 + 10 + 4  # nothing unaccounted
    assert log_from_json({"records": [["stdin", "x"]], "skipped": {}}) == StreamLog()
    assert log_from_json("nonsense") == StreamLog()
    assert log_tail(log, 3) == StreamLog([("stdout", "nd\n")], {"stdout": 100_008, "stderr": 10})


def test_a_notebook_attaches_only_images_from_the_tools_own_folder(tmp_path):
    from glm_agent.messages import ObservationMessage

    tools, elsewhere = tmp_path / "tools", tmp_path / "home"
    tools.mkdir()
    elsewhere.mkdir()
    (tools / "chart.png").write_bytes(b"\x89PNG chart")
    (elsewhere / "private.png").write_bytes(b"\x89PNG private")
    (tools / "link.png").symlink_to(elsewhere / "private.png")
    # the observation is text a tool (or the web page it fetched) wrote: it may name any path
    text = (
        f"[Image 1x1 saved to {tools / 'chart.png'}] [Image 1x1 saved to {elsewhere / 'private.png'}] "
        f"[Image 1x1 saved to {tools / 'link.png'}]"
    )
    conversation = [
        UserMessage(content="draw"),
        AssistantMessage(metadata="chart", content="```python\ntool_call()\n```"),
        ObservationMessage(content=text),
    ]
    notebook = build_notebook([], conversation, observation_outputs=True, tool_outputs=tools)
    attached = [cell.attachments for cell in notebook.cells if cell.get("attachments")]
    assert attached == [{"chart.png": {"image/png": base64.b64encode(b"\x89PNG chart").decode()}}]
    assert build_notebook([], conversation, observation_outputs=True).cells[-1].get("attachments") is None
