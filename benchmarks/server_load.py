"""Load on the OpenAI-compatible server: N concurrent async clients, scripted backend.

The server runs in its own process (``glm_agent.server.serve``) over a ScriptedModel that
replays a tool-call reply one character per ``--token-ms`` (a stand-in for decoding; 0 means
instant). Each client sends chat requests with tools and waits for the whole answer (streamed
with ``--stream``). The baseline, in this process and the same run: the same number of
concurrent tasks calling the same backend directly (``generate`` in a worker thread, as the
server does), then parsing the reply. ``overhead_ratio`` = p50 latency through the server /
p50 latency in-process. Prints one JSON object.

``--hostile N`` adds N clients sending worst-case requests for as long as the well-behaved clients
run (tool schemas nested 900 deep, tools nested just within the depth limit whose indented JSON
overflows the context, 4 MiB bodies, bodies dripped a byte at a time); the server then runs with
``--context-length 8192`` in both runs. ``p99_ratio`` = the well-behaved clients' p99 with the hostile
ones / their p99 in the same run without them (target <= 1.5).

    python benchmarks/server_load.py --clients 8 --requests 400
    python benchmarks/server_load.py --clients 8 --requests 400 --hostile 2

``--local`` serves the local engine instead: the 100M ChatGLM3-shaped model (random bf16 weights,
2 threads) in the server process, ``--clients`` clients each asking ``--requests`` short questions
for 32 greedy tokens; the same run serves them twice, with ``--max-batch 1`` (one generation at a
time, the server's behaviour before continuous batching: the baseline) and with ``--max-batch N``
(N = clients). ``batched_over_serial`` = output tokens/s batched / serial.

    python benchmarks/server_load.py --local --clients 4 --requests 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

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
          max_concurrency=int(sys.argv[5]), max_queue=int(sys.argv[6]), context_length=int(sys.argv[7]) or None)
    """
)


_LOCAL_SERVER = textwrap.dedent(
    """
    import sys
    import torch
    sys.path.insert(0, sys.argv[3])
    from _chatglm3_shaped import random_model, tokenizer
    from glm_agent.models import LocalModel
    from glm_agent.server import serve

    torch.set_num_threads(2)
    model = LocalModel(random_model(torch.bfloat16), tokenizer(), max_batch=int(sys.argv[2]), prefix_cache=False)
    model.stop_ids = frozenset()  # random weights: every request reads max_tokens tokens
    serve(model, model.tokenizer, port=int(sys.argv[1]), log_level="error", max_queue=256)
    """
)


def _local_run(batch: int, clients: int, requests: int) -> dict[str, float]:
    """Serve the 100M model with ``--max-batch batch``; clients x requests chat completions of 32 tokens."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOCAL_SERVER, str(port), str(batch), str(REPO / "benchmarks")],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_healthy(proc, port, 300)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"

        async def one_client(index: int, latencies: list[float], tokens: list[int]) -> None:
            async with httpx.AsyncClient(timeout=600) as http:
                for n in range(requests):
                    body = {
                        "model": "chatglm3-local",
                        "messages": [{"role": "user", "content": f"Question {index}.{n}: what is {index} + {n}?"}],
                        "max_tokens": 32,
                        "temperature": 0,
                    }
                    t = time.perf_counter()
                    response = await http.post(url, json=body)
                    reply = response.json()
                    if response.status_code != 200:
                        raise RuntimeError(f"the server answered {response.status_code}: {reply}")
                    latencies.append(time.perf_counter() - t)
                    tokens.append(reply["usage"]["completion_tokens"])

        async def all_clients() -> tuple[float, list[float], list[int]]:
            latencies: list[float] = []
            tokens: list[int] = []
            await one_client(-1, [], [])  # warm: the kernels built, the buffers grown
            start = time.perf_counter()
            await asyncio.gather(*(one_client(i, latencies, tokens) for i in range(clients)))
            return time.perf_counter() - start, latencies, tokens

        took, latencies, tokens = asyncio.run(all_clients())
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stderr.close()
    p50, p99 = _percentiles(latencies)
    return {
        "max_batch": health["engine"]["max_batch"],
        "output_tokens_per_s": round(sum(tokens) / took, 2),
        "request_p50_ms": round(p50, 1),
        "request_p99_ms": round(p99, 1),
        "seconds": round(took, 2),
    }


def _wait_healthy(proc: subprocess.Popen, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            sys.exit(f"the server died: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            sys.exit("the server did not start")
        time.sleep(0.2)


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


def _deep_request(depth: int, tools: int) -> bytes:
    schema = '{"type": "object", "properties": {"a": ' * depth + '{"type": "string"}' + "}}" * depth
    listed = ", ".join(
        f'{{"type": "function", "function": {{"name": "t{i}", "parameters": {schema}}}}}' for i in range(tools)
    )
    return f'{{"model": "scripted", "messages": {json.dumps(MESSAGES)}, "tools": [{listed}]}}'.encode()


def _hostile_bodies() -> dict[str, bytes]:
    big = json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "x" * (4 * 1024 * 1024 - 200)}]})
    return {
        "deep_900": _deep_request(900, 10),  # refused while parsing (nesting limit)
        "deep_within_limit": _deep_request(28, 200),  # parsed, then refused by the prompt-size bound
        "body_4mib": big.encode(),  # just under --max-request-bytes: parsed, then refused by the bound
    }


async def _slow_body(host: str, port: int, seconds: float) -> str:
    """Send a head and then one body byte every 0.2 s for ``seconds``; give up (the server keeps waiting)."""
    _, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n{"
        )
        await writer.drain()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(0.2)
            writer.write(b" ")
            await writer.drain()
        return "abandoned"
    except (ConnectionError, OSError):
        return "closed_by_server"
    finally:
        writer.close()


async def _hostile_client(url: str, port: int, stop: Any, counts: dict[str, int]) -> None:
    bodies = list(_hostile_bodies().items())
    async with httpx.AsyncClient(timeout=120) as http:
        turn = 0
        while not stop.is_set():
            kind, body = bodies[turn % len(bodies)] if turn % 4 != 3 else ("slow_body", b"")
            turn += 1
            if kind == "slow_body":
                outcome = await _slow_body("127.0.0.1", port, 2.0)
                key = f"slow_body:{outcome}"
            else:
                r = await http.post(url, content=body, headers={"Content-Type": "application/json"})
                key = f"{kind}:{r.status_code}"
            counts[key] = counts.get(key, 0) + 1


def _attack(url: str, port: int, hostile: int, started: Any, stop: Any, results: Any) -> None:
    """The hostile clients, in their own process (as other machines would be): runs until ``stop`` is set."""

    async def run() -> dict[str, int]:
        counts: dict[str, int] = {}
        attackers = [asyncio.ensure_future(_hostile_client(url, port, stop, counts)) for _ in range(hostile)]
        started.set()
        await asyncio.gather(*attackers)
        return counts

    results.put(asyncio.run(run()))


def _with_hostile(
    url: str, port: int, clients: int, requests: int, stream: bool, hostile: int
) -> tuple[float, list[float], dict[str, int]]:
    context = multiprocessing.get_context("spawn")
    started, stop, results = context.Event(), context.Event(), context.Queue()
    attacker = context.Process(target=_attack, args=(url, port, hostile, started, stop, results), daemon=True)
    attacker.start()
    try:
        started.wait(60)
        time.sleep(0.5)  # the attack is under way before the measured clients start
        served_s, served = asyncio.run(_through_server(url, clients, requests, stream))
    finally:
        stop.set()
        counts: dict[str, int] = results.get(timeout=60)
        attacker.join(30)
    return served_s, served, counts


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
    parser.add_argument("--hostile", type=int, default=0, help="clients sending worst-case requests alongside")
    parser.add_argument("--local", action="store_true", help="the local engine (100M model): batched vs serial")
    args = parser.parse_args()
    if args.local:
        serial = _local_run(1, args.clients, args.requests)
        batched = _local_run(args.clients, args.clients, args.requests)
        ratio = round(batched["output_tokens_per_s"] / serial["output_tokens_per_s"], 3)
        print(json.dumps({"benchmark": "server_load --local", "clients": args.clients, "requests": args.requests,
                          "serial": serial, "batched": batched, "batched_over_serial": ratio}, indent=2))  # fmt: skip
        return
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
            str(8192 if args.hostile else 0),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_healthy(proc, port, 60)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        asyncio.run(_through_server(url, args.clients, min(args.requests, 2 * args.clients), args.stream))  # warm-up
        served_s, served = asyncio.run(_through_server(url, args.clients, args.requests, args.stream))
        if args.hostile:
            attacked_s, attacked, counts = _with_hostile(
                url, port, args.clients, args.requests, args.stream, args.hostile
            )
            if proc.poll() is not None or httpx.get(f"http://127.0.0.1:{port}/health").status_code != 200:
                sys.exit("the server did not survive the hostile clients")
    finally:
        proc.terminate()
        proc.wait(15)
        proc.stderr.close()
    base_s, base = asyncio.run(_in_process(args.clients, args.requests, args.token_ms))
    p50, p99 = _percentiles(served)
    b50, b99 = _percentiles(base)
    report = {
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
    if args.hostile:
        h50, h99 = _percentiles(attacked)
        report |= {
            "hostile_clients": args.hostile,
            "context_length": 8192,
            "with_hostile_requests_per_s": round(args.requests / attacked_s, 1),
            "with_hostile_p50_ms": round(h50, 2),
            "with_hostile_p99_ms": round(h99, 2),
            "hostile_requests": dict(sorted(counts.items())),
            "p99_ratio": round(h99 / p99, 3),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
