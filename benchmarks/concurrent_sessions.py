"""N conversations on one local model at once: continuous batching against one conversation alone.

(Named ``concurrent_sessions.py``, not ``concurrent.py``: a script's folder comes first on the import
path, and a ``concurrent.py`` there would hide the standard library's ``concurrent`` package from
every other benchmark in it.)

Each session sends a ``--prompt``-token prompt (random ids) and reads ``--new`` greedy tokens, in a
thread of its own, through ``LocalModel.stream_ids``. Scenarios: ``together`` (all sessions start at
once) and ``staggered`` (each starts when the one before has its first token, so prompts join
while others decode). Random weights; the stop ids are off so every session reads ``--new`` tokens.
Per N, one JSON object:

- ``aggregate_tokens_per_s``: all sessions' tokens / the scenario's wall time (first send to last token),
  and ``all_decoding_tokens_per_s``: the same while all N sessions decode (their prompts are in),
- ``per_session_tokens_per_s``: each session's tokens / its time from first to last token (median),
- ``ttft_p50_s`` / ``ttft_p95_s``: time to first token,
- ``tbt_p50_s`` / ``tbt_p95_s``: time between tokens of running sessions, and the same only while
  another session's prompt was being prefilled (``tbt_during_prefill_p95_s``), against
  ``solo_step_s`` (a decode step of one session alone, measured first),
- ``compute_bound_tokens_per_s``: the prefill rate measured in the same run (one prompt alone),
- ``batch_efficiency`` = aggregate / min(N x single-session rate, compute bound), and
  ``decode_batch_efficiency`` the same for ``all_decoding_tokens_per_s``.

``--contention 1`` runs the same with one busy process beside it (``yes > /dev/null``) and adds
``contention_ratio`` = busy / quiet single-session decode rate (measured in the same run).

    python benchmarks/concurrent_sessions.py --shape chatglm3-6b --quantize int4 --sessions 1,2,4
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] if ordered else float("nan")


def build(shape: str, quantize: str) -> Any:
    import torch
    from _chatglm3_shaped import random_model, random_model_6b, tokenizer

    from glm_agent.models import LocalModel

    if shape == "chatglm3-6b":
        weights = random_model_6b(quantize if quantize != "none" else "bf16")
    else:  # the 100M model in bfloat16 (--quantize is for the 6B shape)
        weights = random_model(torch.bfloat16)
    model = LocalModel(weights, tokenizer(), prefix_cache=False, temperature=0, max_batch=16)
    model.stop_ids = frozenset()
    return model


def prompt(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, 60000) for _ in range(length)]


class Session:
    def __init__(self, model: Any, ids: list[int], new: int) -> None:
        self.model, self.ids, self.new = model, ids, new
        self.sent = 0.0
        self.times: list[float] = []
        self.first = threading.Event()

    def run(self, after: threading.Event | None) -> None:
        if after is not None:
            after.wait()
        self.sent = time.perf_counter()
        stream = self.model.stream_ids(self.ids, max_new_tokens=self.new)
        seen = 0
        for _ in stream:
            now = time.perf_counter()
            while seen < len(stream.stats.output_ids):
                self.times.append(now)
                seen += 1
            self.first.set()
        self.first.set()


def scenario(model: Any, n: int, args: argparse.Namespace, staggered: bool, seed: int) -> dict[str, Any]:
    sessions = [Session(model, prompt(seed + i, args.prompt), args.new) for i in range(n)]
    threads = []
    for i, session in enumerate(sessions):
        after = sessions[i - 1].first if staggered and i else None
        threads.append(threading.Thread(target=session.run, args=(after,)))
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    end = max(s.times[-1] for s in sessions)
    tokens = sum(len(s.times) for s in sessions)
    gaps: list[float] = []
    during: list[float] = []
    prefills = [(s.sent, s.times[0]) for s in sessions]
    for s in sessions:
        for a, b in zip(s.times, s.times[1:], strict=False):
            gaps.append(b - a)
            if any(p0 < b and a < p1 for (p0, p1) in prefills if (p0, p1) != (s.sent, s.times[0])):
                during.append(b - a)
    window = (max(s.times[0] for s in sessions), min(s.times[-1] for s in sessions))  # all N decoding
    in_window = sum(1 for s in sessions for t in s.times if window[0] < t <= window[1])
    steady = in_window / (window[1] - window[0]) if window[1] > window[0] and in_window else None
    return {
        "aggregate_tokens_per_s": round(tokens / (end - start), 3),
        "all_decoding_tokens_per_s": round(steady, 3) if steady else None,
        "per_session_tokens_per_s": round(
            statistics.median((len(s.times) - 1) / (s.times[-1] - s.times[0]) for s in sessions), 3
        ),
        "ttft_p50_s": round(statistics.median(s.times[0] - s.sent for s in sessions), 3),
        "ttft_p95_s": round(p95([s.times[0] - s.sent for s in sessions]), 3),
        "tbt_p50_s": round(statistics.median(gaps), 4),
        "tbt_p95_s": round(p95(gaps), 4),
        "tbt_during_prefill_p95_s": round(p95(during), 4) if during else None,
        "wall_s": round(end - start, 2),
    }


def solo(model: Any, args: argparse.Namespace) -> tuple[float, float]:
    """(decode tokens/s of one session alone, prefill tokens/s of one prompt alone)."""
    session = Session(model, prompt(999, args.prompt), args.new)
    session.run(None)
    decode = (len(session.times) - 1) / (session.times[-1] - session.times[0])
    prefill = args.prompt / (session.times[0] - session.sent)
    return decode, prefill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="100m", choices=["100m", "chatglm3-6b"])
    parser.add_argument("--quantize", default="int4", choices=["int4", "int8", "none"])
    parser.add_argument("--sessions", default="1,2,4,8")
    parser.add_argument("--prompt", type=int, default=600)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--contention", type=int, default=0, help="busy processes beside the run (yes > /dev/null)")
    parser.add_argument("--scenarios", default="together,staggered")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    model = build(args.shape, args.quantize)
    solo(model, argparse.Namespace(prompt=32, new=4))  # warm: kernels built, buffers grown
    decode_rate, prefill_rate = solo(model, args)
    out: dict[str, Any] = {
        "benchmark": "concurrent",
        "shape": args.shape,
        "quantize": args.quantize,
        "threads": args.threads,
        "prompt_tokens": args.prompt,
        "new_tokens": args.new,
        "single_session_tokens_per_s": round(decode_rate, 3),
        "solo_step_s": round(1 / decode_rate, 4),
        "compute_bound_tokens_per_s": round(prefill_rate, 3),
        "runs": {},
    }
    busy: list[subprocess.Popen[bytes]] = []
    try:
        if args.contention:
            busy = [subprocess.Popen(["sh", "-c", "exec yes > /dev/null"]) for _ in range(args.contention)]
            time.sleep(1.0)
            busy_rate, _ = solo(model, args)
            out["contention"] = args.contention
            out["contention_single_session_tokens_per_s"] = round(busy_rate, 3)
            out["contention_ratio"] = round(busy_rate / decode_rate, 3)
        for n in [int(v) for v in args.sessions.split(",")]:
            for name in args.scenarios.split(","):
                run = scenario(model, n, args, staggered=name == "staggered", seed=100 * n)
                bound = min(n * decode_rate, prefill_rate)
                run["batch_efficiency"] = round(run["aggregate_tokens_per_s"] / bound, 3)
                if run["all_decoding_tokens_per_s"]:  # the same while every session decodes (prefill left out)
                    run["decode_batch_efficiency"] = round(run["all_decoding_tokens_per_s"] / bound, 3)
                out["runs"][f"{name} N={n}"] = run
                print(json.dumps({f"{name} N={n}": run}), file=sys.stderr, flush=True)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
