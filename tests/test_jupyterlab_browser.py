"""%%agent in a real JupyterLab, driven by Playwright with Debian's chromium-headless-shell.

JupyterLab runs on 127.0.0.1 with a token and nothing outside this machine; the page's requests
to anywhere else are aborted and make the test fail. A cell asks the scripted model, which calls a
tool whose observation is an HTML/script probe, then runs code in the sandbox that prints, waits for
a file the test writes, and draws: the card and its live output are seen while the code runs,
the image after, and the probe never executes.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import psutil
import pytest

from tests.web_support import CHROMIUM_ARGS, chromium_path, needs_browser

pytestmark = [pytest.mark.browser, pytest.mark.kernel, pytest.mark.slow, needs_browser]

TOKEN = "glm-agent-test-token"
PROBE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><b id="probe">bold</b>'
WAIT_CODE = (
    "import os, time\nprint('waiting for go', flush=True)\n"
    "while not os.path.exists('/mnt/data/go'):\n    time.sleep(0.05)\n"
    "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2]); plt.show()\nprint('drawn')"
)


#: true when a card's summary starts with args[0] and the card's text holds args[1]
CARD_SAYS = """([title, text]) => [...document.querySelectorAll('details.glm-agent-card')].some(
    (card) => card.querySelector('summary').textContent.startsWith(title) && card.textContent.includes(text))"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_server(url: str, proc: subprocess.Popen) -> None:
    while True:  # waits on the server's answer (or its end), not on a deadline
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab ended with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    replies = [
        "probe\n ```python\ntool_call(name='x')\n```",
        f"interpreter\n ```python\n{WAIT_CODE}\n```",
        "\n All done.",
    ]
    (root / "replies.json").write_text(json.dumps(replies))
    setup = (
        "%load_ext glm_agent\nfrom glm_agent import tool\nfrom glm_agent.jupyter import session\n\n"
        f"@tool\ndef probe(name: str) -> str:\n    '''Probe.'''\n    return {PROBE!r}\n\n"
        f"%agent --model scripted:{root / 'replies.json'} --code-interpreter --tools probe\n"
        "print('WORKSPACE=' + str(session().interpreter.workspace) + '=END')"
    )
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(setup), nbformat.v4.new_code_cell("%%agent\nCheck the probe, then draw.")]
    )
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, str(root / "agent.ipynb"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "GLM_AGENT_MODEL"}
    env["JUPYTER_CONFIG_DIR"] = str(root / ".jupyter")  # no user settings
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
        ],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={TOKEN}", proc)
        yield f"http://127.0.0.1:{port}", root
    finally:
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for child in children:  # kernels, and the sandbox kernels they started
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(children, timeout=30)


def test_agent_cell_shows_cards_live_output_and_image_and_the_probe_stays_text(lab):
    from playwright.sync_api import sync_playwright

    base, _ = lab
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1600})

            def guard(route):
                if route.request.url.startswith((base, "data:", "blob:")):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            context.route("**/*", guard)
            page = context.new_page()
            page.goto(f"{base}/lab/tree/agent.ipynb?token={TOKEN}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext?.session?.kernel?.status === 'idle'",
                timeout=120_000,
            )
            # not awaited: the command's promise settles only when every cell has run
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

            # the setup cell says where the sandbox's workspace is
            page.wait_for_selector("text=/WORKSPACE=.*=END/", timeout=120_000)
            printed = page.inner_text(".jp-OutputArea-output >> text=/WORKSPACE=/")
            workspace = Path(re.search(r"WORKSPACE=(.*?)=END", printed).group(1))

            # while the code runs: the tool's card, the code card running with its live output
            page.wait_for_function(CARD_SAYS, arg=["Code interpreter · running", "waiting for go"], timeout=120_000)
            assert page.locator("details.glm-agent-card summary", has_text="Tool: probe · ok").count() == 1
            assert page.locator("details.glm-agent-card img").count() == 0
            (workspace / "go").write_text("go")

            # after: the image inline, the answer, and the probe as text
            page.wait_for_selector("details.glm-agent-card img[src^='data:image/png;base64,']", timeout=120_000)
            page.wait_for_selector(".glm-agent-run >> text=All done.", timeout=120_000)
            page.locator("details.glm-agent-card summary", has_text="Tool: probe").click()
            observation = page.locator("details.glm-agent-card pre", has_text="window.__pwned").first.inner_text()
            assert "<script>window.__pwned = 1</script>" in observation
            assert page.evaluate("() => window.__pwned") is None
            assert page.locator("#probe").count() == 0  # the probe's <b> is text, not an element
            assert page.locator(".glm-agent-run script, .glm-agent-run img:not([src^='data:image/'])").count() == 0
            context.close()
        finally:
            browser.close()
    assert outside == [], f"the page fetched from outside this machine: {outside}"
