"""Every example runs, as a user would run it, with its scripted replies (and real tools, a real kernel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests._data import REPO

EXAMPLES = REPO / "examples"
TESTED = {"tools_agent.py", "code_analysis.py", "official_demo_tools.py", "agent_notebook.ipynb"}


def run_example(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GLM_AGENT_MODEL"}  # the example's own scripted replies
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )


def test_every_example_is_tested_here():
    found = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".ipynb") and not p.name.startswith("_")}
    assert found == TESTED


def test_every_scripted_reply_file_is_a_list_of_strings():
    for path in (EXAMPLES / "scripted").glob("*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        if path.name != "open_meteo_sample.json":
            assert isinstance(data, list) and all(isinstance(r, str) for r in data), path


def test_tools_agent_weather_and_arithmetic():
    proc = run_example("tools_agent.py")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("[scripted model] scripted:tools_agent.json")
    assert "[offline] get_weather reads examples/scripted/open_meteo_sample.json" in out
    # the real tool code parsed the sample response, the real calculator did the conversion
    assert '"weather": "overcast", "temperature": "24.3 °C"' in out
    assert "<- calculate (ok): 75.7" in out
    assert out.rstrip().endswith("75.7 °F (it feels like 25.1 °C), with 58 % humidity and a light wind of 9.4 km/h.")


def test_official_demo_tools_run_unchanged():
    proc = run_example("official_demo_tools.py")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    schemas = json.loads(out[out.index("[\n") : out.index("\n]\n") + 2])
    assert [s["name"] for s in schemas] == ["random_number_generator", "get_weather"]
    assert schemas[0]["parameters"]["required"] == ["seed", "range"]
    assert schemas[0]["parameters"]["properties"]["seed"] == {
        "type": "integer",
        "description": "The random seed used by the generator",
    }
    # the official body checks isinstance(range, tuple): the call passed it, so the list became a tuple
    assert "<- random_number_generator (ok): 82" in out and out.rstrip().endswith("is 82.")


@pytest.mark.slow
@pytest.mark.kernel
def test_code_analysis_runs_code_draws_a_plot_and_saves_a_notebook(tmp_path):
    proc = run_example("code_analysis.py", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("[scripted model] scripted:code_analysis.json")
    # the kernel really computed what the scripted answer quotes
    for line in ("mean: 179.2", "std: 40.1", "best month: Dec (260)", "largest growth: Nov (+33.3%)", "trend: +9.5"):
        assert line in out
    answer = next(line for line in out.splitlines() if line.startswith("answer:"))
    assert "179.2" in answer and "40.1" in answer and "+33.3%" in answer
    image = Path(next(line for line in out.splitlines() if line.startswith("image:")).split(None, 1)[1])
    assert image.is_file() and image.read_bytes().startswith(b"\x89PNG") and tmp_path in image.parents
    notebook_path = Path(next(line for line in out.splitlines() if line.startswith("notebook:")).split(None, 1)[1])
    notebook = nbformat.read(str(notebook_path), as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert len(code) == 1 and "np.polyfit" in code[0].source
    assert [o.output_type for o in code[0].outputs] == ["stream", "display_data"]
    assert "mean: 179.2" in code[0].outputs[0].text and "image/png" in code[0].outputs[1].data


@pytest.mark.slow
def test_an_example_with_a_missing_model_says_so_in_one_line(tmp_path):
    proc = run_example("tools_agent.py", "--model", str(tmp_path / "no-checkpoint"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error:") and "no-checkpoint" in proc.stderr


@pytest.mark.kernel
def test_agent_notebook_executes(monkeypatch):
    monkeypatch.delenv("GLM_AGENT_MODEL", raising=False)  # the kernel inherits the environment
    notebook = nbformat.read(str(EXAMPLES / "agent_notebook.ipynb"), as_version=4)
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in outputs)
    html_text = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "[scripted model] scripted:scripted/agent_notebook.json" in text
    assert '{"km": 42.165, "mi": 26.2}' in text and "42.165 km." in text  # the %%agent card and answer
    assert '{"km": 10.0, "mi": 6.214}' in text and "6.214 miles." in text  # %agent continued the conversation
    assert "total: 1234" in text and "data:image/png;base64," in html_text  # --with sales, the chart inline
    assert "In the sandbox now: total (int)" in text and "\n1234" in "\n" + text  # --get total
    assert (
        "March sold best (522)." in text and "Agent('scripted:agent_notebook.json', 1 tools, code interpreter" in text
    )
