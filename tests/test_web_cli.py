"""``glm-agent web`` and ``glm-agent serve --ui`` as real processes, and their refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import psutil
import pytest

from glm_agent.cli import main
from tests._data import REPO, SHARED, needs_shared
from tests._helpers import free_port, wait_http

pytestmark = pytest.mark.timeout(120)


def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "glm_agent.cli", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C, as a user would; every kernel the process started must end with it."""
    descendants = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    _, alive = psutil.wait_procs(descendants, timeout=15)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []


@pytest.mark.slow
@pytest.mark.kernel
def test_web_serves_the_ui_with_a_scripted_model_and_a_kernel_pool(tmp_path):
    script = tmp_path / "demo.json"
    script.write_text(json.dumps(["Hello from the demo."]))
    port = free_port()
    proc = _start("web", "--model", f"scripted:{script}", "--code-interpreter", "--port", str(port), "--pool-size", "1")
    try:
        page = wait_http(f"http://127.0.0.1:{port}/", proc, status=200, output=proc.stdout.read)
        assert "<gradio-app" in page.text or "gradio" in page.text.lower()
        config = wait_http(f"http://127.0.0.1:{port}/config", proc, status=200, output=proc.stdout.read).json()
        labels = json.dumps(config)
        assert "Code Interpreter" in labels and "scripted" in labels
        assert "fonts.googleapis" not in page.text + labels
    finally:
        _stop(proc)


@pytest.mark.slow
@needs_shared
def test_serve_ui_mounts_the_ui_beside_the_api(tmp_path):
    script = tmp_path / "demo.json"
    script.write_text(json.dumps(["Hello."]))
    port = free_port()
    proc = _start(
        "serve", "--model", f"scripted:{script}", "--tokenizer", str(SHARED / "tokenizer.model"), "--ui",
        "--port", str(port), "--api-key", "sk-test",
    )  # fmt: skip
    try:
        ui = wait_http(
            f"http://127.0.0.1:{port}/ui/", proc, status=200, output=proc.stdout.read
        )  # the page: its login form asks for the key
        assert "gradio" in ui.text.lower()
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer sk-test"})
        assert models.status_code == 200 and models.json()["data"]
    finally:
        _stop(proc)


def test_a_public_host_without_a_login_is_refused(capsys, tmp_path):
    script = tmp_path / "demo.json"
    script.write_text("[]")
    assert main(["web", "--model", f"scripted:{script}", "--host", "0.0.0.0"]) == 2
    assert "--auth USER:PASS" in capsys.readouterr().err
    assert main(["web", "--model", f"scripted:{script}", "--auth", "nopassword"]) == 2
    assert "USER:PASS" in capsys.readouterr().err
    assert main(["web", "--model", f"scripted:{tmp_path / 'missing.json'}"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["web", "--model", f"scripted:{script}", "--gateway", "http://127.0.0.1:1"]) == 2
    assert "add --code-interpreter" in capsys.readouterr().err


def test_users_come_from_repeated_auth_and_an_auth_file(tmp_path, capsys):
    import argparse

    from glm_agent.cli._ui import parse_size, ui_login

    users = tmp_path / "users.txt"
    users.write_text("# the team\nalice:wonder:land\n\nbob:builder\n", encoding="utf-8")
    login = ui_login(argparse.Namespace(auth=["carol:c-pass"], auth_file=str(users)))
    assert login("alice", "wonder:land") and login("bob", "builder") and login("carol", "c-pass")
    assert not login("alice", "builder") and not login("mallory", "") and not login("", "x")
    keyed = ui_login(argparse.Namespace(auth=None, auth_file=None), api_key="sk-1")
    assert keyed("anyone", "sk-1") and not keyed("anyone", "sk-2")
    assert ui_login(argparse.Namespace(auth=None, auth_file=None)) is None
    users.write_text("alice\n", encoding="utf-8")
    script = tmp_path / "demo.json"
    script.write_text("[]")
    assert main(["web", "--model", f"scripted:{script}", "--auth-file", str(users)]) == 2
    assert "line 1: write USER:PASS" in capsys.readouterr().err
    assert parse_size("100MiB") == 100 * 2**20 and parse_size("2GB") == 2 * 10**9 and parse_size("512") == 512
    for bad in ("lots", "-1MB", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)
