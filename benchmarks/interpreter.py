"""Code interpreter benchmark: prints one JSON object.

- ``roundtrip_ratio``: warm round trip of ``print(1)``, ``CodeInterpreter.run`` divided by raw
  ``jupyter_client`` ``execute_interactive`` on a plain ipykernel (the floor: the faster of a
  kernel on TCP, jupyter's default, and one on ipc, the transport we use), all measured in
  alternation in this process. Target <= 1.25.
- ``pool_speedup``: a new session's first run (session creation + ``print(1)``) with a cold
  kernel start divided by the same with a ``KernelPool``.
- ``sandbox_start_ratio``: that cold first run in the sandbox (isolated: allowlisted root, cgroups,
  session tmpfs, seccomp) divided by the same without isolation, alternating, in this process.
- ``stream_log_ratio``: a cell printing 100,000 lines (200,000 writes, the worst case) with the
  kernel's stream log on (``_stream_log.py``: output a dying kernel never sent is kept) divided by
  the same with it off, in alternation in one kernel (best of ``--print-rounds``).

Usage: python benchmarks/interpreter.py [--runs 200] [--sessions 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import shutil
import tempfile

from jupyter_client.manager import KernelManager

from glm_agent.interpreter import CodeInterpreter, KernelPool


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _raw_kernel(transport: str, scratch: str) -> tuple[KernelManager, object]:
    extra = {"transport": "ipc", "ip": f"{scratch}/raw"} if transport == "ipc" else {}
    manager = KernelManager(kernel_name="python3", **extra)
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    return manager, client


def roundtrip(runs: int) -> dict:
    scratch = tempfile.mkdtemp(prefix="bench-")
    kernels = {name: _raw_kernel(name, scratch) for name in ("tcp", "ipc")}
    interpreter = CodeInterpreter(timeout=30)
    try:
        sides = {
            name: (lambda c=client: c.execute_interactive("print(1)", timeout=30, output_hook=lambda _m: None))
            for name, (_manager, client) in kernels.items()
        }
        sides["ours"] = lambda: interpreter.run("print(1)")
        for _ in range(20):  # warm all
            for fn in sides.values():
                fn()
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(runs):
            for name, fn in sides.items():
                times[name].append(_timed(fn))
        assert interpreter.history[-1].text == "1\n", interpreter.history[-1].observation
        mean = {name: statistics.fmean(values) for name, values in times.items()}
        floor = min(mean["tcp"], mean["ipc"])
        return {
            "raw_tcp_execute_interactive_mean_s": mean["tcp"],
            "raw_ipc_execute_interactive_mean_s": mean["ipc"],
            "run_mean_s": mean["ours"],
            "raw_tcp_median_s": statistics.median(times["tcp"]),
            "raw_ipc_median_s": statistics.median(times["ipc"]),
            "run_median_s": statistics.median(times["ours"]),
            "roundtrip_ratio": mean["ours"] / floor,
            "isolation": interpreter.isolation.mode,
        }
    finally:
        interpreter.close()
        for manager, client in kernels.values():
            client.stop_channels()
            manager.shutdown_kernel(now=True)
        shutil.rmtree(scratch, ignore_errors=True)


def first_run(sessions: int) -> dict:
    def session(pool: KernelPool | None) -> None:
        with CodeInterpreter(pool=pool, timeout=30) as interpreter:
            assert interpreter.run("print(1)").text == "1\n"

    cold = [_timed(lambda: session(None)) for _ in range(sessions)]
    isolated, unisolated = [], []
    for _ in range(sessions):
        isolated.append(_timed(lambda: _plain_session(True)))
        unisolated.append(_timed(lambda: _plain_session(False)))
    pooled = []
    with KernelPool(size=2) as pool:
        for _ in range(sessions):
            pool.wait_ready(120)
            pooled.append(_timed(lambda: session(pool)))
    return {
        "cold_first_run_mean_s": statistics.fmean(cold),
        "pooled_first_run_mean_s": statistics.fmean(pooled),
        "pool_speedup": statistics.fmean(cold) / statistics.fmean(pooled),
        "isolated_first_run_median_s": statistics.median(isolated),
        "unisolated_first_run_median_s": statistics.median(unisolated),
        "sandbox_start_ratio": statistics.median(isolated) / statistics.median(unisolated),
    }


def stream_log(rounds: int) -> dict:
    code = "for i in range(100000): print(i)"
    times: dict[str, list[float]] = {"on": [], "off": []}
    with CodeInterpreter(timeout=300) as interpreter:
        interpreter.run("import sys; logs = (sys.stdout.echo, sys.stderr.echo)")
        for _ in range(rounds):
            for mode, switch in (
                ("on", "sys.stdout.echo, sys.stderr.echo = logs"),
                ("off", "sys.stdout.echo = sys.stderr.echo = None"),
            ):
                interpreter.run(switch)
                times[mode].append(_timed(lambda: interpreter.run(code)))
    return {
        "print_100k_lines_s": round(min(times["on"]), 3),
        "stream_log_ratio": round(min(times["on"]) / min(times["off"]), 3),
    }


def _plain_session(isolate: bool) -> None:
    with CodeInterpreter(isolate=isolate, timeout=30) as interpreter:
        assert interpreter.run("print(1)").text == "1\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200, help="warm round trips per side")
    parser.add_argument("--sessions", type=int, default=5, help="sessions per side for the first-run comparison")
    parser.add_argument("--print-rounds", type=int, default=3, help="rounds per side for the stream log comparison")
    args = parser.parse_args()
    result = {
        "benchmark": "interpreter",
        **roundtrip(args.runs),
        **first_run(args.sessions),
        **stream_log(args.print_rounds),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
