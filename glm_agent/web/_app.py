"""The Gradio Blocks: layout and event handlers. Every handler only forwards to the session."""

from __future__ import annotations

import html
import os
from collections.abc import Iterator
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no calls home

import gradio as gr

from glm_agent.errors import GlmAgentError, SessionLimitError
from glm_agent.models.base import GenerationParams
from glm_agent.web._sessions import SessionManager, Snapshot, WebSession

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
"""

_DEFAULTS = GenerationParams.of()


def build_blocks(manager: SessionManager) -> gr.Blocks:
    """The UI for ``manager``'s sessions (one per browser tab, keyed by Gradio's session hash)."""
    config = manager.config
    modes = config.modes()
    model_label = config.models.label
    scripted = "scripted" in model_label.lower()

    demo: gr.Blocks
    with gr.Blocks(title=config.title, analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            f"### {html.escape(config.title)} · ChatGLM3\nModel: `{model_label}`"
            + (" (**scripted**: prepared replies, not a live model)" if scripted else "")
        )
        status = gr.Markdown("", elem_id="status")
        with gr.Row():
            mode = gr.Radio(modes, value=modes[-1], label="Mode", elem_id="mode", scale=3)
            ask = gr.Checkbox(label="Ask before running", value=False, elem_id="ask", scale=1)
        chatbot = gr.Chatbot(
            elem_id="chat",
            height="68vh",
            min_height=420,
            layout="panel",
            buttons=["copy"],
            feedback_options=None,
            label="Conversation",
            show_label=False,
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
        pending = gr.Markdown("", elem_id="pending-files")
        with gr.Accordion("Downloads", open=False, elem_id="downloads"):
            with gr.Row():
                notebook = gr.DownloadButton("Notebook (.ipynb)", value=None, elem_id="download-notebook", size="sm")
                transcript = gr.DownloadButton(
                    "Transcript (.jsonl)", value=None, elem_id="download-transcript", size="sm"
                )
            files = gr.File(label="Files in /mnt/data", file_count="multiple", interactive=False, elem_id="files")
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
        view_outputs = [*run_outputs, notebook, transcript, files, prompt_html]

        def session_of(request: gr.Request) -> WebSession:
            return manager.open(str(request.session_hash))

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
            exports = session.exports()
            return {
                notebook: exports["notebook"],
                transcript: exports["transcript"],
                files: [str(p) for p in session.workspace_files()] or None,
                prompt_html: render_prompt(session),
                pending: pending_text(session),
            }

        def on_after_run(request: gr.Request) -> dict[Any, Any]:
            session = manager.get(str(request.session_hash))
            return {} if session is None or session.closed else after_run(session)

        def stream_run(session: WebSession) -> Iterator[dict[Any, Any]]:
            last: Snapshot | None = None
            for snap in session.follow():
                last = snap
                if snap.running:
                    yield render(session, snap, final=False)
            yield render(session, last or session.snapshot(), final=False)  # exports follow in on_after_run

        def failed(exc: Exception) -> dict[Any, Any]:
            return {status: f"**Error:** {exc}"}

        def on_load(request: gr.Request) -> dict[Any, Any]:
            try:
                session = session_of(request)
            except SessionLimitError as exc:
                return {
                    status: f"**Error:** {exc}",
                    box: gr.update(interactive=False),
                    send: gr.update(interactive=False),
                    upload: gr.update(interactive=False),
                }
            out = render(session, session.snapshot(), final=True)
            out[system] = session.official_system()
            out[mode] = session.mode
            return out

        def on_unload(request: gr.Request) -> None:
            manager.close(str(request.session_hash))

        def on_send(
            text: str, mode_: str, ask_: bool, system_: str, temp: float, top_p_: float, max_new: float,
            request: gr.Request,
        ) -> Iterator[dict[Any, Any]]:  # fmt: skip
            try:
                session = session_of(request)
                if not text.strip() and not session.uploads:
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

        def on_upload(paths: list[str] | None, request: gr.Request) -> dict[Any, Any]:
            try:
                session = session_of(request)
                for path in paths or []:
                    session.add_upload(path)
            except (GlmAgentError, OSError) as exc:
                return failed(exc)
            return {pending: pending_text(session)}

        def on_stop(request: gr.Request) -> None:
            session = manager.get(str(request.session_hash))
            if session is not None:
                session.stop()

        def on_answer(approved: bool) -> Any:
            def answer(request: gr.Request) -> None:
                session = manager.get(str(request.session_hash))
                if session is not None:
                    session.answer_approval(approved)

            return answer

        run_inputs = [box, mode, ask, system, temperature, top_p, max_new_tokens]
        after_outputs = [notebook, transcript, files, prompt_html, pending]
        sent = gr.on(
            [box.submit, send.click], on_send, run_inputs, run_outputs, api_name="send", concurrency_limit=None
        )
        sent.then(on_after_run, None, after_outputs, api_visibility="private", concurrency_limit=None)
        regenerated = regenerate.click(on_regenerate, [ask], run_outputs, api_name="regenerate", concurrency_limit=None)
        regenerated.then(on_after_run, None, after_outputs, api_visibility="private", concurrency_limit=None)
        clear.click(on_clear, None, view_outputs, api_name="clear", concurrency_limit=None)
        mode.input(on_mode, [mode], [*view_outputs, system], api_name="mode", concurrency_limit=None)
        upload.upload(on_upload, [upload], [pending, status], api_name="upload", concurrency_limit=None)
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


def pending_text(session: WebSession) -> str:
    if not session.uploads:
        return ""
    names = ", ".join(f"`{p.name}`" for p in session.uploads)
    return f"Sent with your next message into /mnt/data: {names}"


def render_prompt(session: WebSession) -> str:
    """The prompt view: each ChatGLM3 turn with its metadata line and token count."""
    view = session.prompt()
    if view.total_tokens is not None:
        of = f" of {view.context_length}" if view.context_length else ""
        head = f"<p><b>{view.total_tokens} tokens</b>{of} (the next reply's prompt adds 1 for <code>&lt;|assistant|&gt;</code>)</p>"
    else:
        head = "<p>Token counts need a ChatGLM3 tokenizer (pass --tokenizer).</p>"
    turns = []
    for turn in view.turns:
        count = f"<span>{turn.tokens} tokens</span>" if turn.tokens is not None else ""
        turns.append(
            f'<div class="turn turn-{html.escape(turn.role)}"><div class="turn-head">{html.escape(turn.header())}'
            f"{count}</div><pre>{html.escape(turn.content)}</pre></div>"
        )
    return head + "".join(turns)
