"""The Gradio Blocks: layout and event handlers. Every handler only forwards to the session it owns.

Every text the page shows is HTML made by :mod:`glm_agent._html` (Gradio's Markdown is off in
the chat and nowhere used for text a client or the model wrote). A handler acts only on a session
its request's owner opened (the client cookie and the login; the door has already refused
requests naming another client's session).
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterator
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no calls home

import gradio as gr

from glm_agent import _html
from glm_agent.errors import GlmAgentError
from glm_agent.models.base import GenerationParams
from glm_agent.web._door import COOKIE
from glm_agent.web._manager import SessionManager
from glm_agent.web._sessions import Owner, Snapshot, WebSession

__all__ = ["build_blocks", "THEME", "CSS"]

#: System fonts only: nothing is fetched from a font CDN.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)
CSS = """
#prompt-view .turn { border-left: 3px solid var(--color-accent); margin: 6px 0; padding-left: 8px; }
#prompt-view .turn-head { font-family: var(--font-mono); font-weight: 600; }
#prompt-view .turn-head span { font-weight: 400; opacity: .7; margin-left: .5em; }
#prompt-view pre { white-space: pre-wrap; margin: 2px 0; font-size: 12px; }
#status:empty { display: none; }
#downloads-list ul { margin: 4px 0; padding-left: 1.2em; }
"""

_DEFAULTS = GenerationParams.of()


def build_blocks(manager: SessionManager) -> gr.Blocks:
    """The UI for ``manager``'s sessions (one per browser tab, keyed by Gradio's session hash)."""
    config = manager.config
    modes = config.modes()
    model_label = config.models.label
    scripted = config.models.scripted

    demo: gr.Blocks
    with gr.Blocks(title=config.title, analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.HTML(
            f"<h3>{html.escape(config.title)} · ChatGLM3</h3><p>Model: <code>{html.escape(model_label)}</code>"
            + (" (<strong>scripted</strong>: prepared replies, not a live model)" if scripted else "")
            + "</p>"
        )
        status = gr.HTML("", elem_id="status")
        with gr.Row():
            mode = gr.Radio(modes, value=modes[-1], label="Mode", elem_id="mode", scale=3)
            ask = gr.Checkbox(label="Ask before running", value=False, elem_id="ask", scale=1)
        chatbot = gr.Chatbot(
            elem_id="chat",
            height="68vh",
            min_height=420,
            layout="panel",
            buttons=[],  # Gradio's copy button would copy the messages' HTML
            feedback_options=None,
            label="Conversation",
            show_label=False,
            render_markdown=False,  # the messages are inert HTML made on the server (web/_html.py)
            latex_delimiters=[],
        )
        with gr.Row(visible=False, elem_id="approval") as approval:
            approve_btn = gr.Button("Approve", variant="primary", elem_id="approve")
            deny_btn = gr.Button("Deny", variant="stop", elem_id="deny")
        with gr.Row():
            box = gr.Textbox(
                placeholder="Ask something (Enter to send)", show_label=False, elem_id="input", scale=8, lines=1
            )
            send = gr.Button("Send", variant="primary", elem_id="send", scale=1, min_width=80)
            stop = gr.Button("Stop", variant="stop", elem_id="stop", scale=1, min_width=80, interactive=False)
        with gr.Row():
            upload = gr.UploadButton("Upload files", file_count="multiple", elem_id="upload", size="sm")
            regenerate = gr.Button("Regenerate", elem_id="regenerate", size="sm")
            clear = gr.Button("Clear", elem_id="clear", size="sm")
        pending = gr.HTML("", elem_id="pending-files")
        with gr.Accordion("Downloads", open=False, elem_id="downloads"):
            downloads = gr.HTML(_NO_DOWNLOADS, elem_id="downloads-list")
        with gr.Accordion("Advanced", open=False, elem_id="advanced"):
            system = gr.Textbox(label="System prompt (ChatGLM3's official one for the mode)", lines=4, elem_id="system")
            with gr.Row():
                temperature = gr.Slider(0, 2, value=_DEFAULTS.temperature, step=0.05, label="temperature")
                top_p = gr.Slider(0.05, 1, value=_DEFAULTS.top_p, step=0.05, label="top_p")
                max_new_tokens = gr.Slider(16, 8192, value=_DEFAULTS.max_new_tokens, step=16, label="max new tokens")
        with gr.Accordion("Prompt (ChatGLM3 turns)", open=False, elem_id="prompt"):
            prompt_html = gr.HTML("", elem_id="prompt-view")

        # What a run streams to: as few components as possible. Gradio postprocesses every output
        # of every yield, and one a yield leaves out (a skip) or updates (gr.update) costs a rebuild
        # of the component and its config, JSON schema included: milliseconds per update. Downloads
        # and the prompt view change once, after the run (on_after_run), so they are not among them.
        run_outputs = [chatbot, status, approval, send, stop, box, pending]
        view_outputs = [*run_outputs, downloads, prompt_html]

        def session_of(request: gr.Request, *, browser: bool = False) -> WebSession:
            if not request.session_hash:
                raise GlmAgentError("this request names no session")
            return manager.open(str(request.session_hash), owner_of(request), browser=browser)

        def owned(request: gr.Request) -> WebSession | None:
            if not request.session_hash:
                return None
            return manager.get(str(request.session_hash), owner_of(request))

        def render(session: WebSession, snap: Snapshot, *, final: bool) -> dict[Any, Any]:
            out: dict[Any, Any] = {
                chatbot: snap.messages,
                status: snap.status,
                approval: gr.update(visible=snap.approval is not None),
                send: gr.update(interactive=not snap.running),
                stop: gr.update(interactive=snap.running),
            }
            if final:
                out.update(after_run(session))
            return out

        def after_run(session: WebSession) -> dict[Any, Any]:
            """What changes once a run is over: downloads, /mnt/data files, the prompt view."""
            return {
                downloads: render_downloads(session),
                prompt_html: render_prompt(session),
                pending: pending_text(session),
            }

        def on_after_run(request: gr.Request) -> dict[Any, Any]:
            session = owned(request)
            return {} if session is None or session.closed else after_run(session)

        def stream_run(session: WebSession) -> Iterator[dict[Any, Any]]:
            last: Snapshot | None = None
            for snap in session.follow():
                last = snap
                if snap.running:
                    yield render(session, snap, final=False)
            yield render(session, last or session.snapshot(), final=False)  # exports follow in on_after_run

        def failed(exc: Exception) -> dict[Any, Any]:
            return {status: error_html(exc)}

        def on_load(request: gr.Request) -> dict[Any, Any]:
            try:
                session = session_of(request, browser=True)
            except GlmAgentError as exc:
                return {
                    status: error_html(exc),
                    box: gr.update(interactive=False),
                    send: gr.update(interactive=False),
                    upload: gr.update(interactive=False),
                }
            out = render(session, session.snapshot(), final=True)
            out[system] = session.official_system()
            out[mode] = session.mode
            return out

        def on_unload(request: gr.Request) -> None:
            if request.session_hash:
                manager.close(str(request.session_hash), owner_of(request))

        def on_send(
            text: str,
            mode_: str,
            ask_: bool,
            system_: str,
            temp: float,
            top_p_: float,
            max_new: float,
            request: gr.Request,
        ) -> Iterator[dict[Any, Any]]:
            try:
                session = session_of(request)
                if not isinstance(text, str) or (not text.strip() and not session.uploads):
                    return
                session.configure(mode=mode_, system=system_ or None, generation=generation(temp, top_p_, max_new))
                session.start(text, ask=bool(ask_))
            except (GlmAgentError, ValueError, OSError) as exc:
                yield failed(exc)
                return
            first = render(session, session.snapshot(), final=False)
            first[box] = ""
            first[pending] = ""
            yield first
            yield from stream_run(session)

        def on_regenerate(ask_: bool, request: gr.Request) -> Iterator[dict[Any, Any]]:
            try:
                session = session_of(request)
                if not session.regenerate(ask=bool(ask_)):
                    yield failed(GlmAgentError("nothing to regenerate yet"))
                    return
            except (GlmAgentError, ValueError, OSError) as exc:
                yield failed(exc)
                return
            yield from stream_run(session)

        def on_clear(request: gr.Request) -> dict[Any, Any]:
            try:
                session = session_of(request)
                session.new_conversation()
            except (GlmAgentError, ValueError) as exc:
                return failed(exc)
            return render(session, session.snapshot(), final=True)

        def on_mode(mode_: str, request: gr.Request) -> dict[Any, Any]:
            try:
                session = session_of(request)
                session.configure(mode=mode_, system=None)
                session.new_conversation(fresh_kernel=False)
            except (GlmAgentError, ValueError) as exc:
                return failed(exc)
            out = render(session, session.snapshot(), final=True)
            out[system] = session.official_system()
            return out

        def on_upload(payload: Any, request: gr.Request) -> dict[Any, Any]:
            # The raw event data (preprocess=False): Gradio's own preprocessing would leave an empty
            # temporary file behind for every path a client names.
            try:
                session = session_of(request)
            except GlmAgentError as exc:
                return failed(exc)
            paths = upload_paths(payload)
            refused = [] if len(paths) <= MAX_FILES_PER_UPLOAD else [f"at most {MAX_FILES_PER_UPLOAD} files at once"]
            for path in paths[:MAX_FILES_PER_UPLOAD]:
                try:
                    session.add_upload(path)
                except (GlmAgentError, OSError) as exc:
                    refused.append(str(exc))
            problem = error_html(GlmAgentError("; ".join(refused))) if refused else ""
            return {pending: pending_text(session), status: problem}

        def on_stop(request: gr.Request) -> None:
            session = owned(request)
            if session is not None:
                session.stop()

        def on_answer(approved: bool) -> Any:
            def answer(request: gr.Request) -> None:
                session = owned(request)
                if session is not None:
                    session.answer_approval(approved)

            return answer

        run_inputs = [box, mode, ask, system, temperature, top_p, max_new_tokens]
        after_outputs = [downloads, prompt_html, pending]
        sent = gr.on(
            [box.submit, send.click], on_send, run_inputs, run_outputs, api_name="send", concurrency_limit=None
        )
        sent.then(on_after_run, None, after_outputs, api_visibility="private", concurrency_limit=None)
        regenerated = regenerate.click(on_regenerate, [ask], run_outputs, api_name="regenerate", concurrency_limit=None)
        regenerated.then(on_after_run, None, after_outputs, api_visibility="private", concurrency_limit=None)
        clear.click(on_clear, None, view_outputs, api_name="clear", concurrency_limit=None)
        mode.input(on_mode, [mode], [*view_outputs, system], api_name="mode", concurrency_limit=None)
        upload.upload(
            on_upload, [upload], [pending, status], api_name="upload", concurrency_limit=None, preprocess=False
        )
        stop.click(on_stop, None, None, api_name="stop", concurrency_limit=None)
        approve_btn.click(on_answer(True), None, None, api_name="approve", concurrency_limit=None)
        deny_btn.click(on_answer(False), None, None, api_name="deny", concurrency_limit=None)
        demo.load(
            on_load, None, [*view_outputs, system, mode, upload], api_visibility="private", concurrency_limit=None
        )
        demo.unload(on_unload)
    demo.queue(default_concurrency_limit=None)
    return demo


def generation(temperature: float, top_p: float, max_new_tokens: float) -> dict[str, Any]:
    """The advanced panel's values that differ from the defaults (the backend's own defaults stay otherwise)."""
    chosen = {"temperature": float(temperature), "top_p": float(top_p), "max_new_tokens": int(max_new_tokens)}
    return {k: v for k, v in chosen.items() if v != getattr(_DEFAULTS, k)}


_NO_DOWNLOADS = "<p>Nothing to download yet.</p>"
MAX_FILES_PER_UPLOAD = 32


def upload_paths(payload: Any) -> list[str]:
    """The paths an upload event names (Gradio's FileData dicts, one or a list); anything else names none."""
    items = payload if isinstance(payload, list) else [payload]
    return [item["path"] for item in items if isinstance(item, dict) and isinstance(item.get("path"), str)]


def owner_of(request: Any) -> Owner:
    """Who sent a request: its client cookie (set by the door) and its login."""
    cookies: Any = getattr(request, "cookies", None)  # a dict-like object of Gradio's
    client = cookies.get(COOKIE) if cookies is not None and hasattr(cookies, "get") else None
    if not isinstance(client, str) or not client:
        raise GlmAgentError("this request carries no client cookie; reload the page")
    user = getattr(request, "username", None)
    return Owner(client, user if isinstance(user, str) else None)


def error_html(exc: Exception) -> str:
    return f"<p><strong>Error:</strong> {_html.text(str(exc))}</p>"


def pending_text(session: WebSession) -> str:
    if not session.uploads:
        return ""
    names = ", ".join(f"<code>{html.escape(p.name)}</code>" for p in session.uploads)
    return f"<p>Sent with your next message into /mnt/data: {names}</p>"


def _link(url: str | None, label: str, element_id: str = "") -> str:
    if url is None:
        return html.escape(label)
    ident = f' id="{element_id}"' if element_id else ""
    return f'<a{ident} href="{html.escape(url, quote=True)}" download>{html.escape(label)}</a>'


def render_downloads(session: WebSession) -> str:
    """Links to the session as a notebook and a transcript, and to the files in /mnt/data (served by our route)."""
    exports = session.exports()
    parts = []
    if exports["notebook"] and exports["transcript"]:
        notebook = _link(session.file_url("session", exports["notebook"]), "Notebook (.ipynb)", "download-notebook")
        transcript = _link(
            session.file_url("session", exports["transcript"]), "Transcript (.jsonl)", "download-transcript"
        )
        parts.append(f"<p>{notebook} · {transcript}</p>")
    files = session.workspace_files()
    if files:
        items = "".join(
            f"<li>{_link(session.file_url('workspace', f.name), f.name)} <small>({f.size:,} bytes)</small></li>"
            for f in files[:200]
        )
        more = f"<p>… and {len(files) - 200} more</p>" if len(files) > 200 else ""
        parts.append(f'<p>Files in /mnt/data</p><ul id="files">{items}</ul>{more}')
    return "".join(parts) or _NO_DOWNLOADS


def render_prompt(session: WebSession) -> str:
    """The prompt view: each ChatGLM3 turn with its metadata line and token count."""
    view = session.prompt()
    if view.total_tokens is not None:
        of = f" of {view.context_length}" if view.context_length else ""
        head = f"<p><b>{view.total_tokens} tokens</b>{of} (the next reply's prompt adds 1 for <code>&lt;|assistant|&gt;</code>)</p>"
    else:
        head = "<p>Token counts need a ChatGLM3 tokenizer (pass --tokenizer).</p>"
    stats = session.last_generation()
    if stats is not None and stats.prompt_tokens:
        where = {"memory": "kept in memory", "disk": "read from the prompt cache on disk"}.get(stats.reused_from, "")
        source = f", {where}" if where and stats.reused_tokens else ""
        head += (
            f'<p id="prompt-cache">Last reply: {int(stats.reused_tokens)} of its {int(stats.prompt_tokens)} prompt tokens '
            f"came from the cache{html.escape(source)}; {int(stats.prefill_tokens)} were computed.</p>"
        )
    turns = []
    for turn in view.turns:
        count = f"<span>{turn.tokens} tokens</span>" if turn.tokens is not None else ""
        turns.append(
            f'<div class="turn turn-{html.escape(turn.role)}"><div class="turn-head">{html.escape(turn.header())}'
            f"{count}</div><pre>{html.escape(turn.content)}</pre></div>"
        )
    return head + "".join(turns)
