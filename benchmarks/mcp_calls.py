"""Cost of calling an MCP tool through ToolRegistry vs the SDK's own ClientSession.call_tool.

Two processes of the same echo server (stdio), one per client, measured in the same run,
in interleaved rounds. ``registry.call`` is the sync path (argument check against the
server's schema, the hop to the background loop, the result turned into an observation);
``registry.acall`` the async one. Prints one JSON object; ``overhead_ratio`` is the
median registry call over the median SDK call (target <= 1.2); ``loop_round_trip_median_us``
is the cost of the thread hop alone (an empty coroutine on the background loop), which
grows with the machine's load (thread wake-up latency).
Run: python benchmarks/mcp_calls.py [--calls 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from mcp import Client, StdioServerParameters

from glm_agent.mcp import MCPServerStdio, connect_mcp
from glm_agent.mcp._loop import run_on_loop

SERVER = [str(Path(__file__).resolve().parent / "_mcp_echo_server.py")]
ARGS = {"text": "hello, MCP"}


async def _nothing() -> None:
    return None


async def main(calls: int, rounds: int) -> dict[str, object]:
    sdk: list[float] = []
    ours: list[float] = []
    ours_async: list[float] = []
    hop: list[float] = []
    params = StdioServerParameters(command=sys.executable, args=SERVER)
    with connect_mcp({"bench": MCPServerStdio(sys.executable, SERVER)}) as registry:
        async with Client(params, mode="legacy", cache=None) as client:
            session = client.session
            for _ in range(20):  # warm both paths
                await session.call_tool("echo", ARGS)
                registry.call("bench__echo", ARGS)
                await registry.acall("bench__echo", ARGS)
            for _ in range(rounds):
                for _ in range(calls):
                    start = time.perf_counter()
                    result = await session.call_tool("echo", ARGS)
                    sdk.append(time.perf_counter() - start)
                assert result.content[0].text == ARGS["text"]  # type: ignore[union-attr]
                for _ in range(calls):
                    start = time.perf_counter()
                    answer = registry.call("bench__echo", ARGS)
                    ours.append(time.perf_counter() - start)
                assert answer.ok and answer.observation == ARGS["text"], answer.observation
                for _ in range(calls):
                    start = time.perf_counter()
                    answer = await registry.acall("bench__echo", ARGS)
                    ours_async.append(time.perf_counter() - start)
                assert answer.ok and answer.observation == ARGS["text"]
                for _ in range(calls):
                    start = time.perf_counter()
                    run_on_loop(_nothing(), 10)
                    hop.append(time.perf_counter() - start)
    sdk_ms = statistics.median(sdk) * 1000
    ours_ms = statistics.median(ours) * 1000
    async_ms = statistics.median(ours_async) * 1000
    return {
        "benchmark": "mcp_calls",
        "calls": calls * rounds,
        "sdk_call_tool_median_ms": round(sdk_ms, 4),
        "registry_call_median_ms": round(ours_ms, 4),
        "registry_acall_median_ms": round(async_ms, 4),
        "overhead_us": round((ours_ms - sdk_ms) * 1000, 1),
        "overhead_ratio": round(ours_ms / sdk_ms, 3),
        # the part of the overhead that is the hop to the connection's loop thread and back
        "loop_round_trip_median_us": round(statistics.median(hop) * 1e6, 1),
        "async_overhead_ratio": round(async_ms / sdk_ms, 3),
        "target_ratio": 1.2,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per client per round")
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    print(json.dumps(asyncio.run(main(options.calls, options.rounds)), indent=2))
