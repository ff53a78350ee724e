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
- ``batch_efficiency`` = aggregate / min(N x single-session rate, compute bound), counting every token a
  session puts through the model (its prompt and its reply, in the same unit as the prefill rate):
  N x (prompt + new) / wall time, against N x (prompt + new) / one session's wall time alone (so N = 1
  gives about 1, and a prompt-heavy run is held to the compute bound, not to N x one session's decode
  rate, which no amount of batching reaches while 600-token prompts are being computed), and
  ``decode_batch_efficiency`` = ``all_decoding_tokens_per_s`` / min(N x solo decode rate, compute bound):
  how much of N x one session's decode speed N sessions decoding together get.

``--share-prefill`` sets LocalModel's ``share_prefill``: prompts that wait at once are prefilled
together in shares of each step, finish together and then decode together (the default takes them
in the order they came).

``--contention 1`` runs the same with one busy process beside it (``yes > /dev/null``) and adds
``contention_ratio`` = busy / quiet single-session decode rate (measured in the same run).

``--peer llama.cpp`` then runs the same scenarios with the same prompts in llama.cpp (one context with a
sequence per session, node-llama-cpp batching their steps, its default 512-token batch) on the
same-shaped random weights at q4_0 (for int4) or q8_0 (int8), written as ``decode.py --peer`` writes
them and with what it needs installed, and adds ``peer`` (the same figures) and per run
``peer_ratio`` = ours / llama.cpp ``aggregate_tokens_per_s``.

    python benchmarks/concurrent_sessions.py --shape chatglm3-6b --quantize int4 --sessions 1,2,4
"""

from __future__ import annotations

import argparse
import itertools
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


def build(shape: str, quantize: str, step_ratio: float, share_prefill: bool = False) -> Any:
    import torch
    from _chatglm3_shaped import random_model, random_model_6b, tokenizer

    from glm_agent.models import LocalModel

    if shape == "chatglm3-6b":
        weights = random_model_6b(quantize if quantize != "none" else "bf16")
    else:  # the 100M model in bfloat16 (--quantize is for the 6B shape)
        weights = random_model(torch.bfloat16)
    model = LocalModel(
        weights,
        tokenizer(),
        prefix_cache=False,
        temperature=0,
        max_batch=16,
        step_ratio=step_ratio,
        share_prefill=share_prefill,
    )
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
    return measures([(s.sent - start, [t - start for t in s.times]) for s in sessions])


def measures(sessions: list[tuple[float, list[float]]]) -> dict[str, Any]:
    """The figures of one scenario from each session's (send time, token times), in seconds since the start."""
    end = max(times[-1] for _, times in sessions)
    tokens = sum(len(times) for _, times in sessions)
    gaps: list[float] = []
    during: list[float] = []
    prefills = [(sent, times[0]) for sent, times in sessions]
    for sent, times in sessions:
        for a, b in itertools.pairwise(times):
            gaps.append(b - a)
            if any(p0 < b and a < p1 for (p0, p1) in prefills if (p0, p1) != (sent, times[0])):
                during.append(b - a)
    window = (max(times[0] for _, times in sessions), min(times[-1] for _, times in sessions))  # all N decoding
    in_window = sum(1 for _, times in sessions for t in times if window[0] < t <= window[1])
    steady = in_window / (window[1] - window[0]) if window[1] > window[0] and in_window else None
    return {
        "aggregate_tokens_per_s": round(tokens / end, 3),
        "all_decoding_tokens_per_s": round(steady, 3) if steady else None,
        "per_session_tokens_per_s": round(
            statistics.median((len(times) - 1) / (times[-1] - times[0]) for _, times in sessions), 3
        ),
        "ttft_p50_s": round(statistics.median(times[0] - sent for sent, times in sessions), 3),
        "ttft_p95_s": round(p95([times[0] - sent for sent, times in sessions]), 3),
        "tbt_p50_s": round(statistics.median(gaps), 4),
        "tbt_p95_s": round(p95(gaps), 4),
        "tbt_during_prefill_p95_s": round(p95(during), 4) if during else None,
        "wall_s": round(end, 2),
    }


def peer_runs(args: argparse.Namespace, plan: list[tuple[int, str]]) -> dict[str, Any]:
    """The same scenarios (same prompts) in llama.cpp on the same-shaped random weights (see ``--peer``)."""
    import tempfile

    from _llama_cpp_peer import converted_6b, run_llama_cpp_sessions

    precision = {"int4": "q4_0", "int8": "q8_0"}[args.quantize]
    out: dict[str, Any] = {"precision": precision}
    with tempfile.TemporaryDirectory(prefix="glm-agent-peer-") as workdir:
        gguf = converted_6b(Path(workdir), precision)
        for n, name in plan:
            prompts = [prompt(100 * n + i, args.prompt) for i in range(n)]
            run = measures(run_llama_cpp_sessions(gguf, prompts, args.new, args.threads, name == "staggered"))
            out[f"{name} N={n}"] = run
            print(json.dumps({f"llama.cpp {name} N={n}": run}), file=sys.stderr, flush=True)
    return out


def solo(model: Any, args: argparse.Namespace) -> tuple[float, float, float]:
    """(decode tokens/s of one session alone, prefill tokens/s of one prompt alone, its whole time)."""
    session = Session(model, prompt(999, args.prompt), args.new)
    session.run(None)
    decode = (len(session.times) - 1) / (session.times[-1] - session.times[0])
    prefill = args.prompt / (session.times[0] - session.sent)
    return decode, prefill, session.times[-1] - session.sent


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
    parser.add_argument(
        "--step-ratio",
        type=float,
        default=2.0,
        help="LocalModel's step_ratio: a step with prefill vs a decode-only step",
    )
    parser.add_argument(
        "--share-prefill",
        action="store_true",
        help="LocalModel's share_prefill: prompts waiting at once prefill together, then decode together",
    )
    parser.add_argument(
        "--peer",
        choices=("llama.cpp",),
        help="also run the scenarios in llama.cpp (6B shape, int4 -> q4_0, int8 -> q8_0; needs what decode.py --peer needs)",
    )
    args = parser.parse_args()
    if args.peer and (args.shape != "chatglm3-6b" or args.quantize == "none" or args.contention):
        parser.error("--peer llama.cpp runs with --shape chatglm3-6b, --quantize int4 or int8, and no --contention")
    import torch

    torch.set_num_threads(args.threads)
    model = build(args.shape, args.quantize, args.step_ratio, args.share_prefill)
    solo(model, argparse.Namespace(prompt=32, new=4))  # warm: kernels built, buffers grown
    decode_rate, prefill_rate, solo_wall = solo(model, args)
    work = args.prompt + args.new  # tokens a session puts through the model: its prompt, then its replies
    out: dict[str, Any] = {
        "benchmark": "concurrent",
        "shape": args.shape,
        "quantize": args.quantize,
        "threads": args.threads,
        "prompt_tokens": args.prompt,
        "new_tokens": args.new,
        "step_ratio": args.step_ratio,
        "share_prefill": args.share_prefill,
        "single_session_tokens_per_s": round(decode_rate, 3),
        "solo_step_s": round(1 / decode_rate, 4),
        "compute_bound_tokens_per_s": round(prefill_rate, 3),
        "single_session_wall_s": round(solo_wall, 2),
        "runs": {},
    }
    busy: list[subprocess.Popen[bytes]] = []
    try:
        if args.contention:
            busy = [subprocess.Popen(["sh", "-c", "exec yes > /dev/null"]) for _ in range(args.contention)]
            time.sleep(1.0)
            busy_rate, _, _ = solo(model, args)
            out["contention"] = args.contention
            out["contention_single_session_tokens_per_s"] = round(busy_rate, 3)
            out["contention_ratio"] = round(busy_rate / decode_rate, 3)
        scenarios = args.scenarios.split(",")
        for n in [int(v) for v in args.sessions.split(",")]:
            for name in scenarios:
                run = scenario(model, n, args, staggered=name == "staggered", seed=100 * n)
                through = n * work / run["wall_s"]  # prompt and reply tokens through the model per second
                run["batch_efficiency"] = round(through / min(n * work / solo_wall, prefill_rate), 3)
                if run["all_decoding_tokens_per_s"]:  # while every session decodes (prefill left out)
                    bound = min(n * decode_rate, prefill_rate)
                    run["decode_batch_efficiency"] = round(run["all_decoding_tokens_per_s"] / bound, 3)
                out["runs"][f"{name} N={n}"] = run
                print(json.dumps({f"{name} N={n}": run}), file=sys.stderr, flush=True)
        if args.peer:
            out["peer"] = peer_runs(args, [(int(v), name) for v in args.sessions.split(",") for name in scenarios])
            for key, run in out["runs"].items():
                run["peer_ratio"] = round(run["aggregate_tokens_per_s"] / out["peer"][key]["aggregate_tokens_per_s"], 3)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
