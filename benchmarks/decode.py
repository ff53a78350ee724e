"""Decode speed of LocalModel on CPU: tokens/s, peak RSS, and how close decoding runs to memory bandwidth.

For a randomly initialised ChatGLM3-shaped model (~100M parameters) in float32 and bfloat16,
each in its own process (so peak RSS is per dtype):

- ``tokens_per_s``: LocalModel greedy decoding (128-token prompt, 64 new tokens, 5 runs), from
  the median time between consecutive tokens (sampling and detokenization included);
  ``peak_rss_mib``: that process's peak resident memory (torch, model, KV cache, decoding);
- ``baseline_tokens_per_s``: transformers' ``generate()`` on the same weights, decode only
  (in its own process);
- ``bandwidth_efficiency``: (bytes of weights read per token / time per token) divided by the
  memory read bandwidth measured in the same process with a large float32 matrix-vector
  product (256 MiB, best of both memory layouts, best of several repeats).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT_TOKENS = 128
NEW_TOKENS = 64
REPEATS = 5


def memory_bandwidth(repeats: int = 10) -> float:
    """Bytes/s of a float32 matrix-vector product over 256 MiB, best of row- and column-major layouts."""
    import torch

    n = 8192
    weight = torch.randn(n, n)
    vector = torch.randn(n)
    transposed = weight.t().contiguous()
    best = float("inf")
    for _ in range(repeats):
        for product in (lambda: torch.mv(weight, vector), lambda: vector @ transposed):
            start = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - start)
    return weight.numel() * weight.element_size() / best


def baseline_decode_seconds(model, prompt: list[int]) -> float:
    """Seconds per decoded token of transformers' generate(): (64+1 tokens) - (1 token), best of repeats."""
    import torch

    ids = torch.tensor([prompt])
    kwargs = {"do_sample": False, "eos_token_id": None, "pad_token_id": 0}

    def timed(new: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kwargs)
        assert out.shape[1] == len(prompt) + new
        return time.perf_counter() - start

    timed(2)
    best_long = min(timed(NEW_TOKENS + 1) for _ in range(3))
    best_short = min(timed(1) for _ in range(3))
    return (best_long - best_short) / NEW_TOKENS


def _setup(dtype_name: str):
    import torch
    from _chatglm3_shaped import random_model, tokenizer

    tok = tokenizer()
    model = random_model(getattr(torch, dtype_name))
    prompt = (
        [tok.gmask_id, tok.sop_id, tok.user_id]
        + [1000 + (i * 37) % 30000 for i in range(PROMPT_TOKENS - 4)]
        + [tok.assistant_id]
    )
    return tok, model, prompt


def measure_local(dtype_name: str, threads: int | None, queue) -> None:  # runs in a child process
    import torch

    if threads:
        torch.set_num_threads(threads)
    from _chatglm3_shaped import weight_bytes_read_per_token

    from glm_agent.models import LocalModel
    from glm_agent.models.base import GenerationParams

    tok, model, prompt = _setup(dtype_name)
    local = LocalModel(model, tok)
    local.stop_ids = frozenset()  # decode a fixed number of tokens
    params = GenerationParams(temperature=0, max_new_tokens=NEW_TOKENS)
    per_run, steps = [], []
    for _ in range(REPEATS):
        local.reset_cache()
        for _delta in local._stream(prompt, params):
            pass
        times = local.last_stats.token_times
        per_run.append((times[-1] - times[0]) / (len(times) - 1))  # forwards after the first choice
        steps += [b - a for a, b in itertools.pairwise(times)]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bandwidth = memory_bandwidth()
    per_token = sorted(steps)[len(steps) // 2]  # median step: robust to other processes on a shared machine
    read = weight_bytes_read_per_token(model)
    queue.put(
        {
            "dtype": dtype_name,
            "tokens_per_s": round(1 / per_token, 1),
            "mean_tokens_per_s_best_run": round(1 / min(per_run), 1),
            "weight_bytes_per_token": read,
            "memory_bandwidth_gb_s": round(bandwidth / 1e9, 2),
            "achieved_gb_s": round(read / per_token / 1e9, 2),
            "bandwidth_efficiency": round(read / per_token / bandwidth, 3),
            "peak_rss_mib": round(peak_rss, 1),
            "threads": torch.get_num_threads(),
        }
    )


def measure_generate(dtype_name: str, threads: int | None, queue) -> None:  # runs in a child process
    import torch

    if threads:
        torch.set_num_threads(threads)
    _tok, model, prompt = _setup(dtype_name)
    queue.put({"baseline_tokens_per_s": round(1 / baseline_decode_seconds(model, prompt), 1)})


def _in_child(target, dtype_name: str, threads: int | None) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=target, args=(dtype_name, threads, queue))
    child.start()
    result = queue.get(timeout=900)
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    results = {}
    for dtype_name in ("float32", "bfloat16"):
        local = _in_child(measure_local, dtype_name, args.threads)
        baseline = _in_child(measure_generate, dtype_name, args.threads)
        local["baseline_tokens_per_s"] = baseline["baseline_tokens_per_s"]
        local["speedup_vs_generate"] = round(local["tokens_per_s"] / baseline["baseline_tokens_per_s"], 2)
        results[dtype_name] = local
    out = {
        "benchmark": "decode",
        "model": {
            "parameters": 100766208,
            "shape": "ChatGLM3, hidden 512, 10 layers, 4 heads x 128, 2 KV groups, vocab 65024",
        },
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": NEW_TOKENS,
        "bandwidth_efficiency": results["float32"]["bandwidth_efficiency"],
        **results,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
