"""Kernel Gateway benchmark: prints one JSON object.

Starts a real ``jupyter kernelgateway`` on 127.0.0.1 with sandbox/'s configuration (the
helper in tests/gateway_server.py), and measures in this process, in alternation:

- ``roundtrip_ratio``: warm round trip of ``CodeInterpreter.run("print(1)")`` on a kernel
  behind the gateway divided by the same on a local kernel;
- ``session_start_ratio``: a new session and its first run (``CodeInterpreter(...)`` +
  ``run("print(1)")``; closing is not timed) through the gateway divided by local.

Both sides use the same launcher, limits and isolation (the gateway runs on this machine).

Usage: python benchmarks/gateway.py [--runs 200] [--sessions 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glm_agent.interpreter import CodeInterpreter
from tests.gateway_server import GatewayServer


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def roundtrip(server: GatewayServer, runs: int) -> dict:
    sessions = {
        "local": CodeInterpreter(timeout=30),
        "gateway": CodeInterpreter(gateway=server.url, token=server.token, timeout=30),
    }
    try:
        for _ in range(20):  # warm both
            for session in sessions.values():
                session.run("print(1)")
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(runs):
            for name, session in sessions.items():
                times[name].append(_timed(lambda s=session: s.run("print(1)")))
        for session in sessions.values():
            assert session.history[-1].observation == "```result\n1\n```", session.history[-1].observation
        mean = {name: statistics.fmean(values) for name, values in times.items()}
        return {
            "local_run_mean_s": mean["local"],
            "gateway_run_mean_s": mean["gateway"],
            "local_run_median_s": statistics.median(times["local"]),
            "gateway_run_median_s": statistics.median(times["gateway"]),
            "roundtrip_ratio": mean["gateway"] / mean["local"],
            "isolation": {name: session.isolation.mode for name, session in sessions.items()},
        }
    finally:
        for session in sessions.values():
            session.close()


def session_start(server: GatewayServer, count: int) -> dict:
    options = {"local": {}, "gateway": {"gateway": server.url, "token": server.token}}
    times: dict[str, list[float]] = {name: [] for name in options}
    for _ in range(count):
        for name, extra in options.items():
            started = time.perf_counter()
            session = CodeInterpreter(timeout=30, **extra)
            result = session.run("print(1)")
            times[name].append(time.perf_counter() - started)
            session.close()
            assert result.observation == "```result\n1\n```", result.observation
    mean = {name: statistics.fmean(values) for name, values in times.items()}
    return {
        "local_session_start_mean_s": mean["local"],
        "gateway_session_start_mean_s": mean["gateway"],
        "session_start_ratio": mean["gateway"] / mean["local"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200, help="warm round trips per side")
    parser.add_argument("--sessions", type=int, default=5, help="new sessions per side")
    args = parser.parse_args()
    server = GatewayServer()
    try:
        result = {"benchmark": "gateway", **roundtrip(server, args.runs), **session_start(server, args.sessions)}
        result["kernels_left_on_gateway"] = len(server.kernels())
    finally:
        server.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
