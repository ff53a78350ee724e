"""Load on the OpenAI-compatible server: N concurrent async clients, scripted backend.

The server runs in its own process (``glm_agent.server.serve``) over a ScriptedModel that
replays a tool-call reply one character per ``--token-ms`` (a stand-in for decoding; 0 means
instant). Each client sends chat requests with tools and waits for the whole answer (streamed
with ``--stream``). The baseline, in this process and the same run: the same number of
concurrent tasks calling the same backend directly (``generate`` in a worker thread, as the
server does), then parsing the reply. ``overhead_ratio`` = p50 latency through the server /
p50 latency in-process. Prints one JSON object.

    python benchmarks/server_load.py --clients 8 --requests 400
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO.parent / "shared" / "chatglm3" / "tokenizer.model"
REPLY = "\n 好的，我查一下。<|assistant|>get_weather\n ```python\ntool_call(city='北京', days=3)\n```"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
        },
    }
]
MESSAGES = [{"role": "user", "content": "北京未来三天的天气？"}]

_SERVER = textwrap.dedent(
    """
    import sys, time
    from glm_agent.chatglm3 import ChatGLM3Tokenizer
    from glm_agent.models import ScriptedModel
    from glm_agent.server import serve

    class Paced(ScriptedModel):
        def _chunks(self, reply):
            for piece in super()._chunks(reply):
                if DELAY:
                    time.sleep(DELAY)
                yield piece

    DELAY = float(sys.argv[3]) / 1000
    model = Paced(lambda messages: sys.argv[4], chunk_size=1)
    serve(model, ChatGLM3Tokenizer.from_pretrained(sys.argv[1]), port=int(sys.argv[2]), log_level="error",
          max_concurrency=int(sys.argv[5]), max_queue=int(sys.argv[6]))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


async def _through_server(url: str, clients: int, requests: int, stream: bool) -> tuple[float, list[float]]:
    body = {"model": "scripted", "messages": MESSAGES, "tools": TOOLS, "stream": stream}
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            queue.get_nowait()
            t = time.perf_counter()
            if stream:
                async with http.stream("POST", url, json=body) as r:
                    r.raise_for_status()
                    lines = [line async for line in r.aiter_lines() if line]
                assert lines[-1] == "data: [DONE]" and '"tool_calls"' in "".join(lines)
            else:
                r = await http.post(url, json=body)
                r.raise_for_status()
                assert r.json()["choices"][0]["finish_reason"] == "tool_calls"
            latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - start, latencies


async def _in_process(clients: int, requests: int, delay_ms: float) -> tuple[float, list[float]]:
    from glm_agent.chatglm3 import parse_reply
    from glm_agent.models import ScriptedModel

    class Paced(ScriptedModel):
        def _chunks(self, reply):  # same pacing as the served backend
            for piece in super()._chunks(reply):
                if delay_ms:
                    time.sleep(delay_ms / 1000)
                yield piece

    model = Paced(lambda messages: REPLY, chunk_size=1)
    latencies: list[float] = []
    remaining = list(range(requests))

    async def client() -> None:
        while remaining:
            remaining.pop()
            t = time.perf_counter()
            raw = await asyncio.to_thread(model.generate, MESSAGES)
            assert parse_reply(raw).calls
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--token-ms", type=float, default=1.0, help="backend delay per character (0: instant)")
    parser.add_argument("--stream", action="store_true", help="stream the answers (SSE)")
    args = parser.parse_args()
    if not TOKENIZER.is_file():
        sys.exit(f"the ChatGLM3 tokenizer is needed at {TOKENIZER} (../shared/chatglm3)")

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SERVER,
            str(TOKENIZER),
            str(port),
            str(args.token_ms),
            REPLY,
            str(args.clients),
            str(args.clients),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                sys.exit(f"the server died: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                sys.exit("the server did not start")
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        asyncio.run(_through_server(url, args.clients, min(args.requests, 2 * args.clients), args.stream))  # warm-up
        served_s, served = asyncio.run(_through_server(url, args.clients, args.requests, args.stream))
    finally:
        proc.terminate()
        proc.wait(15)
        proc.stderr.close()
    base_s, base = asyncio.run(_in_process(args.clients, args.requests, args.token_ms))
    p50, p99 = _percentiles(served)
    b50, b99 = _percentiles(base)
    print(
        json.dumps(
            {
                "clients": args.clients,
                "requests": args.requests,
                "stream": args.stream,
                "token_ms": args.token_ms,
                "reply_chars": len(REPLY),
                "requests_per_s": round(args.requests / served_s, 1),
                "p50_ms": round(p50, 2),
                "p99_ms": round(p99, 2),
                "baseline_requests_per_s": round(args.requests / base_s, 1),
                "baseline_p50_ms": round(b50, 2),
                "baseline_p99_ms": round(b99, 2),
                "overhead_ratio": round(p50 / b50, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
