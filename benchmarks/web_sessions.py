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

``--model local`` runs the local engine instead of the scripted model: the 100M ChatGLM3-shaped
model in bfloat16 (random weights, stop ids off, 32 sampled tokens a reply), one model shared by
every session, in Chat mode. The web UI runs twice, with ``max_batch`` = N (its sessions decode
together) and with ``max_batch`` = 1 (one generation at a time, the others wait in the UI's
queue), and the baseline is N threads streaming from one such model in this process. Adds
``aggregate_tokens_per_s`` per side and ``batched_vs_one_at_a_time`` = the web's aggregate with
max_batch N / with max_batch 1.

    python benchmarks/web_sessions.py --sessions 8
    python benchmarks/web_sessions.py --sessions 8 --model local
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
from web_sessions import PacedScriptedModel, local_model
from glm_agent.web import ModelSource, WebConfig, mount_web_ui
if {local_batch!r}:
    config = WebConfig(ModelSource(local_model({local_batch!r})), code_interpreter=False,
                       max_sessions={n} + 2, max_sessions_per_client={n} + 2)
else:
    config = WebConfig(ModelSource(factory=lambda: PacedScriptedModel({chunk_s!r})), code_interpreter=True,
                       pool_size={n}, max_sessions={n} + 2, max_sessions_per_client={n} + 2)
app = FastAPI()
ui = None

@app.get("/bench/pool-ready")  # the benchmark starts timing once the pool is full, as the baseline does
def pool_ready() -> int:
    return int(ui.sessions.pool.ready) if ui.sessions.pool is not None else 1 << 30

ui = mount_web_ui(app, config, path="/ui")  # the UI's door covers /ui; /bench stays the benchmark's
try:
    uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning")
finally:
    ui.close()
"""

QUESTION = "What is the mean of these numbers?"
SEND_INPUTS = [QUESTION, "Code Interpreter", False, "", 0.8, 0.8, 1024]  # box, mode, ask, system, temperature...
LOCAL_NEW_TOKENS = 32  # --model local: tokens a reply (the UI's slider moves in steps of 16)
LOCAL_INPUTS = [QUESTION, "Chat", False, "", 0.8, 0.8, LOCAL_NEW_TOKENS]  # --model local: a Chat message


def local_model(max_batch: int) -> Any:
    """The 100M ChatGLM3-shaped model in bfloat16 on the local engine: random weights, stop ids off."""
    import torch
    from _chatglm3_shaped import random_model, tokenizer

    from glm_agent.models import LocalModel

    model = LocalModel(random_model(torch.bfloat16), tokenizer(), prefix_cache=False, max_batch=max_batch)
    model.stop_ids = frozenset()
    return model


def in_process_local(n: int, max_new: int) -> tuple[list[float], list[float]]:
    """N threads streaming one reply each from one shared local model (max_batch N)."""
    model = local_model(n)
    messages = [{"role": "user", "content": QUESTION}]

    def episode(i: int) -> tuple[float, float]:
        start = time.perf_counter()
        first = None
        stream = model.stream(messages, max_new_tokens=max_new, temperature=0.8, top_p=0.8)
        for _ in stream:
            if first is None:
                first = time.perf_counter() - start
        assert len(stream.stats.output_ids) == max_new, stream.stats  # stop ids are off: every reply is full
        return first or 0.0, time.perf_counter() - start

    episode(0)  # warm: buffers grown, kernels built
    results = concurrently(n, episode)
    return [r[0] for r in results], [r[1] for r in results]


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

    def send(self, start: float, inputs: list[Any]) -> tuple[float | None, Any]:
        """Run one ``/send``; (seconds from ``start`` to the first streamed reply text, final chatbot)."""
        from gradio_client.utils import apply_diff  # type: ignore[import-untyped]

        payload = {"data": inputs, "fn_index": self.fn_index, "session_hash": self.session_hash}
        self.http.post("/gradio_api/queue/join", json=payload).raise_for_status()
        first: float | None = None
        chat: Any = None
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.session_hash}) as resp:
            for line in sse_lines(resp.iter_bytes()):
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


def sse_lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """An event stream's lines, split at line ends only as a browser's EventSource splits them (httpx's
    ``iter_lines`` also splits at U+2028, U+0085 and the like, which a model's text may hold raw)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode()
    if pending:
        yield pending.rstrip(b"\r").decode()


class GradioClientSession:
    """The same, through ``gradio_client`` (its reader polls every 50 ms and its job iterator every 1 ms)."""

    def __init__(self, url: str, fn_index: int) -> None:
        from gradio_client import Client  # type: ignore[import-untyped]

        self.client = Client(url, download_files=False, verbose=False)

    def send(self, start: float, inputs: list[Any]) -> tuple[float | None, Any]:
        first: float | None = None
        final: Any = None
        job = self.client.submit(*inputs, api_name="/send")
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


def web_episodes(url: str, fn_index: int, n: int, client: str, local: bool = False) -> list[tuple[float, float]]:
    """N new sessions at once, each sending the question; (time to first text, episode time) each."""
    sessions = [CLIENTS[client](url, fn_index) for _ in range(n)]

    def episode(i: int) -> tuple[float, float]:
        start = time.perf_counter()
        first, chat = sessions[i].send(start, LOCAL_INPUTS if local else SEND_INPUTS)
        elapsed = time.perf_counter() - start
        assert has_answer_text(chat) if local else "3.875" in json.dumps(chat), chat
        return first or elapsed, elapsed

    try:
        return concurrently(n, episode)
    finally:
        for session in sessions:
            session.close()


def through_web(
    n: int, chunk_s: float, client: str, local_batch: int = 0
) -> tuple[list[float], list[float], list[float], int]:
    """The UI served by its own process (as ``glm-agent web`` does); its sessions driven from this one.

    Returns the single session's time to first text, then the N concurrent sessions' times to
    first text and episode times, and the kernels left once the server stopped. ``local_batch``:
    the local model with that ``max_batch`` instead of the scripted one.
    """
    import httpx

    port = free_port()
    code = _SERVER.format(
        repo=str(REPO), bench=str(REPO / "benchmarks"), chunk_s=chunk_s, n=n, port=port, local_batch=local_batch
    )
    server = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)})
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/ui"
    descendants: list[psutil.Process] = []
    try:
        wait_for_pool(server, base, n)
        config = httpx.get(f"{url}/config", timeout=10).json()
        fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "send")
        local = bool(local_batch)
        web_episodes(url, fn_index, 1, client, local)  # warm-up: the server's first request imports things
        wait_for_pool(server, base, n)  # the warm-up session keeps its kernel; the pool refills
        single = web_episodes(url, fn_index, 1, client, local)
        wait_for_pool(server, base, n)
        results = web_episodes(url, fn_index, n, client, local)
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
    parser.add_argument("--model", choices=("scripted", "local"), default="scripted")
    args = parser.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    chunk_s = args.chunk_ms / 1000
    if args.model == "local":
        print(json.dumps(local_report(args.sessions, args.client), indent=2))
        return
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


def local_report(n: int, client: str) -> dict[str, Any]:
    """``--model local``: the web UI with its sessions decoding together, one at a time, and in-process."""
    base_single, _ = in_process_local(1, LOCAL_NEW_TOKENS)
    base_ttft, base_episode = in_process_local(n, LOCAL_NEW_TOKENS)
    web_single, web_ttft, web_episode, _ = through_web(n, 0.0, client, local_batch=n)
    _, one_ttft, one_episode, _ = through_web(n, 0.0, client, local_batch=1)
    tokens = n * LOCAL_NEW_TOKENS
    aggregate = {
        "web_batched": tokens / max(web_episode),
        "web_one_at_a_time": tokens / max(one_episode),
        "in_process": tokens / max(base_episode),
    }
    return {
        "benchmark": "web_sessions",
        "model": "local: 100M ChatGLM3-shaped, bfloat16, random weights",
        "sessions": n,
        "new_tokens": LOCAL_NEW_TOKENS,
        "client": client,
        "measures": "N new browser sessions send one Chat message each at once; seconds to the first streamed "
        "text (ttft) and to the end of the reply (episode); aggregate = N x new tokens / the last episode's end",
        "aggregate_tokens_per_s": {k: round(v, 2) for k, v in aggregate.items()},
        "batched_vs_one_at_a_time": round(aggregate["web_batched"] / aggregate["web_one_at_a_time"], 3),
        "web_vs_in_process": round(aggregate["web_batched"] / aggregate["in_process"], 3),
        "ttft_median_s": {
            "web_batched": statistics.median(web_ttft),
            "web_one_at_a_time": statistics.median(one_ttft),
            "in_process": statistics.median(base_ttft),
        },
        "ttft_p95_s": {"web_batched": p95(web_ttft), "web_one_at_a_time": p95(one_ttft), "in_process": p95(base_ttft)},
        "single_session_ttft_s": {"web": web_single[0], "in_process": base_single[0]},
        "episode_p95_s": {
            "web_batched": p95(web_episode),
            "web_one_at_a_time": p95(one_episode),
            "in_process": p95(base_episode),
        },
    }


if __name__ == "__main__":
    main()
