"""Concurrent browser sessions through the web UI vs the same episodes in-process.

N sessions at once (Gradio's Python client, one session each) run a scripted code episode:
a short thought streamed, code run in the session's own kernel, then the answer. The scripted
model replays each reply in 3-character chunks, one per ``--chunk-ms`` (a stand-in for
decoding). The baseline, in this process and the same run: N threads each running the same
episode with ``Agent.stream`` and a kernel from a ``KernelPool``. Reports
``ttft_ratio`` = median time to the first streamed text through the web app / in-process,
the same for one session alone (``single_session_ttft_ratio``: the fixed cost of the web
path, without 8 sessions sharing this machine's cores), ``episode_p95_s`` for both (and
their ratio), and ``kernels_left`` after the UI closed (must be 0). Prints one JSON object.

The sessions speak Gradio's queue protocol as the browser does (``--client sse``: join,
then read the event stream as it arrives); ``--client gradio_client`` uses Gradio's Python
client instead, whose reader sleeps 50 ms whenever no message is pending and whose job
iterator polls every millisecond: that measures the client as much as the UI. Both
sides start timing with their kernel pool full.

    python benchmarks/web_sessions.py --sessions 8
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from glm_agent import Agent
from glm_agent.events import TextDelta
from glm_agent.interpreter import CodeInterpreter, KernelPool
from glm_agent.models import ScriptedModel

REPO = Path(__file__).resolve().parents[1]

REPLIES = [
    "Let me compute the mean first.<|assistant|>interpreter\n```python\nimport statistics\n"
    "print(statistics.mean([3, 1, 4, 1, 5, 9, 2, 6]))\n```",
    "The mean is 3.875.",
]


class PacedScriptedModel(ScriptedModel):
    """The scripted replies, one chunk per ``chunk_s`` (labelled scripted: no model runs)."""

    def __init__(self, chunk_s: float) -> None:
        super().__init__(REPLIES, label="scripted:web-bench")
        self.chunk_s = chunk_s

    def _chunks(self, reply: str) -> Iterator[str]:
        for chunk in super()._chunks(reply):
            time.sleep(self.chunk_s)
            yield chunk


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def concurrently(n: int, fn: Any) -> list[Any]:
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def work(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def in_process(n: int, chunk_s: float) -> tuple[list[float], list[float]]:
    with KernelPool(n) as pool:
        pool.wait_ready(120)

        def episode(i: int) -> tuple[float, float]:
            with CodeInterpreter(pool=pool) as interpreter:
                agent = Agent(PacedScriptedModel(chunk_s), code_interpreter=interpreter)
                start = time.perf_counter()
                first = None
                for event in agent.stream("What is the mean of these numbers?"):
                    if first is None and isinstance(event, TextDelta):
                        first = time.perf_counter() - start
                assert "3.875" in agent.messages[-1].content
                return first or 0.0, time.perf_counter() - start

        results = concurrently(n, episode)
    return [r[0] for r in results], [r[1] for r in results]


_SERVER = """
import sys
sys.path[:0] = [{repo!r}, {bench!r}]
import uvicorn
from fastapi import FastAPI
from web_sessions import PacedScriptedModel
from glm_agent.web import ModelSource, WebConfig, mount_web_ui
config = WebConfig(ModelSource(factory=lambda: PacedScriptedModel({chunk_s!r})), code_interpreter=True,
                   pool_size={n}, max_sessions={n} + 2, max_sessions_per_client={n} + 2)
app = FastAPI()
ui = None

@app.get("/bench/pool-ready")  # the benchmark starts timing once the pool is full, as the baseline does
def pool_ready() -> int:
    return int(ui.sessions.pool.ready)

ui = mount_web_ui(app, config, path="/ui")  # the UI's door covers /ui; /bench stays the benchmark's
try:
    uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning")
finally:
    ui.close()
"""

QUESTION = "What is the mean of these numbers?"
SEND_INPUTS = [QUESTION, "Code Interpreter", False, "", 0.8, 0.8, 1024]  # box, mode, ask, system, temperature...


def has_answer_text(chat: Any) -> bool:
    """True once the chatbot holds streamed reply text (not a tool card)."""
    return isinstance(chat, list) and any(
        isinstance(m, dict) and m.get("role") == "assistant" and not m.get("metadata") and m.get("content")
        for m in chat
    )


class SseSession:
    """One browser tab, speaking Gradio's queue protocol the way its JavaScript client does.

    POST ``queue/join``, then read the event's Server-Sent Events as they arrive (no polling),
    applying each streamed diff to the chatbot. The HTTP connection is opened beforehand, as a
    loaded page's is, so the timing covers the request, not TCP setup or the client's imports.
    """

    def __init__(self, url: str, fn_index: int) -> None:
        import uuid

        import httpx

        self.url, self.fn_index = url, fn_index
        self.session_hash = uuid.uuid4().hex
        self.http = httpx.Client(base_url=url, timeout=httpx.Timeout(120.0))
        self.http.get("/config").raise_for_status()  # the page's client cookie, and the connection open

    def send(self, start: float) -> tuple[float | None, Any]:
        """Run one ``/send``; (seconds from ``start`` to the first streamed reply text, final chatbot)."""
        from gradio_client.utils import apply_diff  # type: ignore[import-untyped]

        payload = {"data": SEND_INPUTS, "fn_index": self.fn_index, "session_hash": self.session_hash}
        self.http.post("/gradio_api/queue/join", json=payload).raise_for_status()
        first: float | None = None
        chat: Any = None
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.session_hash}) as resp:
            for line in resp.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_generating":
                    value = msg["output"]["data"][0]
                    chat = value if chat is None else apply_diff(chat, value)  # sse_v3: diffs after the first
                    if first is None and has_answer_text(chat):
                        first = time.perf_counter() - start
                elif msg.get("msg") == "process_completed":
                    if not msg.get("success", True):
                        raise RuntimeError(f"the web UI failed: {msg.get('output')}")
                    return first, msg["output"]["data"][0]
        raise RuntimeError("the event stream ended before process_completed")

    def close(self) -> None:
        self.http.close()


class GradioClientSession:
    """The same, through ``gradio_client`` (its reader polls every 50 ms and its job iterator every 1 ms)."""

    def __init__(self, url: str, fn_index: int) -> None:
        from gradio_client import Client  # type: ignore[import-untyped]

        self.client = Client(url, download_files=False, verbose=False)

    def send(self, start: float) -> tuple[float | None, Any]:
        first: float | None = None
        final: Any = None
        job = self.client.submit(*SEND_INPUTS, api_name="/send")
        for output in job:
            chat = output[0] if isinstance(output, (list, tuple)) else None
            if first is None and has_answer_text(chat):
                first = time.perf_counter() - start
            final = output
        job.result()
        return first, final[0] if final is not None else None

    def close(self) -> None:
        self.client.close()


CLIENTS: dict[str, type[SseSession | GradioClientSession]] = {"sse": SseSession, "gradio_client": GradioClientSession}


def web_episodes(url: str, fn_index: int, n: int, client: str) -> list[tuple[float, float]]:
    """N new sessions at once, each sending the question; (time to first text, episode time) each."""
    sessions = [CLIENTS[client](url, fn_index) for _ in range(n)]

    def episode(i: int) -> tuple[float, float]:
        start = time.perf_counter()
        first, chat = sessions[i].send(start)
        elapsed = time.perf_counter() - start
        assert "3.875" in json.dumps(chat), chat
        return first or elapsed, elapsed

    try:
        return concurrently(n, episode)
    finally:
        for session in sessions:
            session.close()


def through_web(n: int, chunk_s: float, client: str) -> tuple[list[float], list[float], list[float], int]:
    """The UI served by its own process (as ``glm-agent web`` does); its sessions driven from this one.

    Returns the single session's time to first text, then the N concurrent sessions' times to
    first text and episode times, and the kernels left once the server stopped.
    """
    import httpx

    port = free_port()
    code = _SERVER.format(repo=str(REPO), bench=str(REPO / "benchmarks"), chunk_s=chunk_s, n=n, port=port)
    server = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)})
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/ui"
    descendants: list[psutil.Process] = []
    try:
        wait_for_pool(server, base, n)
        config = httpx.get(f"{url}/config", timeout=10).json()
        fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "send")
        web_episodes(url, fn_index, 1, client)  # warm-up: the server's first request imports things
        wait_for_pool(server, base, n)  # the warm-up session keeps its kernel; the pool refills
        single = web_episodes(url, fn_index, 1, client)
        wait_for_pool(server, base, n)
        results = web_episodes(url, fn_index, n, client)
        descendants = psutil.Process(server.pid).children(recursive=True)
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: the UI closes its sessions and kernels
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    _, alive = psutil.wait_procs(descendants, timeout=20)
    left = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    return [single[0][0]], [r[0] for r in results], [r[1] for r in results], len(left)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_pool(server: subprocess.Popen[bytes], url: str, ready: int, timeout: float = 180) -> None:
    """Until the server answers and its kernel pool holds ``ready`` started kernels (full, as the baseline's is)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the web UI process ended early")
        try:
            now = int(httpx.get(f"{url}/bench/pool-ready", timeout=2).json())
        except (httpx.HTTPError, ValueError):
            now = -1
        if now >= ready:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the web UI's kernel pool did not fill in {timeout:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--chunk-ms", type=float, default=10.0, help="pause per 3-character chunk (default 10)")
    parser.add_argument(
        "--client", choices=sorted(CLIENTS), default="sse",
        help="sse: Gradio's queue protocol read as it streams, as the browser does (default); "
        "gradio_client: Gradio's Python client, whose polling adds its own latency",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    chunk_s = args.chunk_ms / 1000
    base_single, _ = in_process(1, chunk_s)
    base_ttft, base_episode = in_process(args.sessions, chunk_s)
    web_single, web_ttft, web_episode, left = through_web(args.sessions, chunk_s, args.client)
    report = {
        "benchmark": "web_sessions",
        "sessions": args.sessions,
        "chunk_ms": args.chunk_ms,
        "client": args.client,
        "measures": "seconds from sending the question to the first streamed reply text (ttft), and to the "
        "answer (episode); web: a new browser session through the UI's server process, from the request "
        "to the event stream; in_process: Agent.stream in a thread with a kernel from a KernelPool; "
        "both start with a full kernel pool",
        "ttft_median_s": {"web": statistics.median(web_ttft), "in_process": statistics.median(base_ttft)},
        "ttft_ratio": statistics.median(web_ttft) / statistics.median(base_ttft),
        "single_session_ttft_s": {"web": web_single[0], "in_process": base_single[0]},
        "single_session_ttft_ratio": web_single[0] / base_single[0],
        "episode_p95_s": {"web": p95(web_episode), "in_process": p95(base_episode)},
        "episode_p95_ratio": p95(web_episode) / p95(base_episode),
        "kernels_left": left,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
