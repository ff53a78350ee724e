"""Concurrent browser sessions through the web UI vs the same episodes in-process.

N sessions at once (Gradio's Python client, one session each) run a scripted code episode:
a short thought streamed, code run in the session's own kernel, then the answer. The scripted
model replays each reply in 3-character chunks, one per ``--chunk-ms`` (a stand-in for
decoding). The baseline, in this process and the same run: N threads each running the same
episode with ``Agent.stream`` and a kernel from a ``KernelPool``. Reports
``ttft_ratio`` = median time to the first streamed text through the web app / in-process,
``episode_p95_s`` for both (and their ratio), and ``kernels_left`` after the UI closed (must
be 0). Prints one JSON object.

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
from web_sessions import PacedScriptedModel
from glm_agent.web import ModelSource, WebConfig, serve_web
config = WebConfig(ModelSource(factory=lambda: PacedScriptedModel({chunk_s!r})), code_interpreter=True,
                   pool_size={n}, max_sessions={n} + 1)
serve_web(config, port={port}, log_level="warning")
"""


def through_web(n: int, chunk_s: float) -> tuple[list[float], list[float], int]:
    """The UI served by its own process (as ``glm-agent web`` does); N Gradio clients in this one."""
    from gradio_client import Client

    port = free_port()
    code = _SERVER.format(repo=str(REPO), bench=str(REPO / "benchmarks"), chunk_s=chunk_s, n=n, port=port)
    server = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    descendants: list[psutil.Process] = []
    try:
        wait_for_pool(server, url, n)
        defaults = ("Code Interpreter", False, "", 0.8, 0.8, 1024)
        warm = Client(url, download_files=False, verbose=False)  # the server's first request imports things
        warm.predict("What is the mean of these numbers?", *defaults, api_name="/send")
        warm.close()
        wait_for_pool(server, url, n + 1)  # the warm-up session keeps its kernel; the pool refills
        clients = [Client(url, download_files=False, verbose=False) for _ in range(n)]

        def episode(i: int) -> tuple[float, float]:
            start = time.perf_counter()
            first = None
            final: Any = None
            job = clients[i].submit("What is the mean of these numbers?", *defaults, api_name="/send")
            for output in job:
                chat = output[0] if isinstance(output, (list, tuple)) else None
                if (
                    first is None
                    and chat
                    and any(m.get("role") == "assistant" and not m.get("metadata") and m.get("content") for m in chat)
                ):
                    first = time.perf_counter() - start
                final = output
            job.result()
            elapsed = time.perf_counter() - start
            assert final is not None and "3.875" in json.dumps(final[0]), final
            return first or elapsed, elapsed

        results = concurrently(n, episode)
        for client in clients:
            client.close()
        descendants = psutil.Process(server.pid).children(recursive=True)
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: the UI closes its sessions and kernels
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    _, alive = psutil.wait_procs(descendants, timeout=20)
    left = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    return [r[0] for r in results], [r[1] for r in results], len(left)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_pool(server: subprocess.Popen[bytes], url: str, kernels: int, timeout: float = 180) -> None:
    """Until the server answers and runs ``kernels`` started kernels (its pool full, as the baseline's is)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the web UI process ended early")
        try:
            up = httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            up = False
        running = 0
        for proc in psutil.Process(server.pid).children(recursive=True):
            try:
                running += "ipykernel_launcher" in " ".join(proc.cmdline())
            except psutil.Error:
                continue
        if up and running >= kernels:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the web UI's kernel pool did not fill in {timeout:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--chunk-ms", type=float, default=10.0, help="pause per 3-character chunk (default 10)")
    args = parser.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    chunk_s = args.chunk_ms / 1000
    base_ttft, base_episode = in_process(args.sessions, chunk_s)
    web_ttft, web_episode, left = through_web(args.sessions, chunk_s)
    report = {
        "benchmark": "web_sessions",
        "sessions": args.sessions,
        "chunk_ms": args.chunk_ms,
        "ttft_median_s": {"web": statistics.median(web_ttft), "in_process": statistics.median(base_ttft)},
        "ttft_ratio": statistics.median(web_ttft) / statistics.median(base_ttft),
        "episode_p95_s": {"web": p95(web_episode), "in_process": p95(base_episode)},
        "episode_p95_ratio": p95(web_episode) / p95(base_episode),
        "kernels_left": left,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
