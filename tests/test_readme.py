"""The README's examples run as written: every Python block marked ``<!-- ci:example -->``.

Each runs in its own process, in an empty folder, with the checkout on ``PYTHONPATH``; what it
prints is checked where the README says what it shows.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from glm_agent.chatglm3.parser import parse_reply
from glm_agent.messages import CodeCall, ToolCall

REPO = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"<!-- ci:example -->\n```python\n(.*?)\n```", re.S)


def _examples() -> list[str]:
    return _BLOCK.findall((REPO / "README.md").read_text(encoding="utf-8"))


def _run(code: str, folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GLM_AGENT_WORKSPACE": str(folder)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_the_readme_marks_its_runnable_examples():
    examples = _examples()
    assert len(examples) >= 3
    assert any("Agent(" in code for code in examples) and any("CodeInterpreter(" in code for code in examples)


@pytest.mark.parametrize("index", range(len(_examples())))
def test_a_readme_example_runs_as_written(index, tmp_path):
    code = _examples()[index]
    done = _run(code, tmp_path)
    assert done.returncode == 0, f"README example {index + 1} failed:\n{code}\n--- stderr ---\n{done.stderr}"
    if "Agent(" in code:  # the agent example: the answer, an approved unmarked tool, a refused marked one
        assert "It is 21.5 °C in Paris. answer [('get_weather', True)] [] []" in done.stdout
        assert "send_email" in done.stdout and "refused" in done.stdout
        assert (tmp_path / "session.jsonl").exists()


def _scripted_format_rows() -> dict[str, str]:
    """The README's table of raw reply segments: description -> the raw text (a Python string literal)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| segment | raw text |") :].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:
        what, raw = (cell.strip() for cell in line.strip("|").split(" | "))
        rows[what] = ast.literal_eval(raw.strip("`").replace("\\|", "|"))
    return rows


def test_the_readme_scripted_reply_format_parses_as_it_says():
    rows = _scripted_format_rows()
    assert len(rows) == 4
    parsed = {what: parse_reply(raw) for what, raw in rows.items()}
    answer = next(r for what, r in parsed.items() if what.startswith("an answer"))
    assert answer.text == "The answer." and not answer.calls
    tool = next(r for what, r in parsed.items() if what == "a tool call")
    assert tool.calls == [ToolCall(name="get_weather", arguments={"city": "Paris"})]
    code = next(r for what, r in parsed.items() if what.startswith("code"))
    assert code.calls == [CodeCall(code="print(6 * 7)")]
    both = next(r for what, r in parsed.items() if what.startswith("a thought"))
    assert [s.metadata for s in both.segments] == ["", "get_weather"] and both.segments[0].content == "Let me look."
    assert both.calls == [ToolCall(name="get_weather", arguments={"city": "Paris"})]
