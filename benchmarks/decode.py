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

``--shape chatglm3-6b`` measures the real ChatGLM3-6B shape (28 layers, hidden 4096, FFN 13696,
32 heads, 2 KV groups, vocab 65024) with random weights built directly in bf16, int8 and int4
(group 128; the output layer int8), one precision per process, one at a time (the bf16 model
alone is 12.5 GB): decode tokens/s (59-token prompt, greedy, median step), bandwidth efficiency,
peak RSS (load and decode; ``peak_rss_over_weights`` is over every weight byte the process holds,
the whole embedding table included), weight bytes, which kernels the quantized layers ran on,
time to first token for a 600-token prompt, and
``speedup_vs_generate`` against transformers' ``generate()`` on the bf16 model in the same run
(with a check that both chose the same tokens), plus a profile of where a bf16 token's time goes.
Run it alone (``flock /tmp/glm-heavy.lock``): it needs about 14 GB of memory.

``--peer llama.cpp`` (opt-in, with ``--shape chatglm3-6b``) adds llama.cpp side by side on the same random
weights: the bf16 model's tensors are streamed one at a time (never the whole model) into GGUF files in
llama.cpp's ``chatglm`` layout at q8_0 and q4_0, written with the ``gguf`` package's quantizers (how the
names, fused q/k/v, gate/up order, rope, tokenizer metadata and per-tensor types map is in
``benchmarks/_llama_cpp_peer.py``), then each file is decoded by llama.cpp's CPU kernels through
node-llama-cpp's prebuilt binary (``benchmarks/llama_cpp_decode.mjs``: same 59 token ids, greedy, same
thread count, median step excluding the first token, with a check that it loaded the chatglm
architecture). The JSON gains ``peer`` (per GGUF type: ``tokens_per_s``, weight bytes, bandwidth
efficiency, the tokens it chose; ``how``) and ``results.int8.peer_ratio`` = ours int8 / llama.cpp q8_0,
``results.int4.peer_ratio`` = ours int4 / q4_0 (tokens/s). It needs node >= 20 and, installed once into the
gitignored ``benchmarks/.peer/``::

    npm install --prefix benchmarks/.peer --omit=optional --ignore-scripts \
        node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1
    pip install gguf

``--precisions none`` runs only the peer. The default run needs neither node nor gguf.
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
    """Memory read bandwidth in bytes/s: the best of a float32 matrix-vector product over 256 MiB
    (row- and column-major) and a plain sum over the same 256 MiB (a pure streaming read).
    """
    import torch

    n = 8192
    weight = torch.randn(n, n)
    vector = torch.randn(n)
    transposed = weight.t().contiguous()
    best = float("inf")
    for _ in range(repeats):
        for product in (lambda: torch.mv(weight, vector), lambda: vector @ transposed, weight.sum):
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
    from _chatglm3_shaped import weight_bytes_read

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
    read = weight_bytes_read(model)
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
    result = queue.get(timeout=1800)
    child.join()
    return result


SIX_B_PROMPT = 59
SIX_B_TTFT_PROMPT = 600
SIX_B_NEW_TOKENS = 8


def _prompt(tok, length: int) -> list[int]:
    return (
        [tok.gmask_id, tok.sop_id, tok.user_id]
        + [1000 + (i * 37) % 30000 for i in range(length - 4)]
        + [tok.assistant_id]
    )


def _generate_6b(model, prompt: list[int]) -> tuple[float, list[int]]:
    """Seconds per decoded token of generate() ((1 + n tokens) - (1 token)) and the tokens it chose."""
    import torch

    ids = torch.tensor([prompt])
    kwargs = {"do_sample": False, "eos_token_id": None, "pad_token_id": 0}

    def timed(new: int):
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kwargs)
        return time.perf_counter() - start, out[0, len(prompt) :].tolist()

    timed(1)  # warm: the first call pays one-time setup (oneDNN primitives, first touches) that is not decoding
    short = min(timed(1)[0] for _ in range(2))
    long, tokens = timed(SIX_B_NEW_TOKENS + 1)
    return (long - short) / SIX_B_NEW_TOKENS, tokens


def _profile_tokens(runner, tokens: list[int]) -> dict:
    """Where a decoded token's time goes: the lean engine's stage clock over a few single-token forwards."""
    from glm_agent.engine._runner import StageClock

    runner.forward([tokens[0]])  # warm
    clock = StageClock()
    runner.clock = clock
    start = time.perf_counter()
    for token in tokens[1:]:
        runner.forward([token])
    wall = (time.perf_counter() - start) / (len(tokens) - 1)
    runner.clock = None
    stages = {k: v / (len(tokens) - 1) for k, v in sorted(clock.seconds.items(), key=lambda kv: -kv[1])}
    timed = sum(stages.values())
    return {
        "ms_per_token": round(wall * 1000, 1),
        "stages_ms": {k: round(v * 1000, 2) for k, v in stages.items()},
        "share": {k: round(v / wall, 3) for k, v in stages.items()},
        "outside_stages_ms": round((wall - timed) * 1000, 2),
        "note": "wall time per stage summed over the 28 layers (torch ops on CPU are synchronous); "
        "outside = sampling-free Python around the forward (token tensor, loop, logits to float32)",
    }


def measure_6b(precision: str, threads: int | None, queue) -> None:  # runs in a child process
    import torch

    if threads:
        torch.set_num_threads(threads)
    from _chatglm3_shaped import quantized_backends, random_model_6b, tokenizer, weight_bytes_held, weight_bytes_read

    from glm_agent.models import LocalModel
    from glm_agent.models.base import GenerationParams

    tok = tokenizer()
    bandwidth_before = memory_bandwidth()  # before the model takes memory; again at the end, the best counts
    start = time.perf_counter()
    model = random_model_6b(precision)
    build_s = time.perf_counter() - start
    read = weight_bytes_read(model)
    held = weight_bytes_held(model)
    prompt = _prompt(tok, SIX_B_PROMPT)
    out: dict = {"build_s": round(build_s, 1), "weight_bytes": read, "weight_bytes_held": held}
    out["kernels"] = quantized_backends(model)
    reference = None
    if precision == "bf16":
        per_token, reference = _generate_6b(model, prompt)
        out["generate_tokens_per_s"] = round(1 / per_token, 3)
    local = LocalModel(model, tok)
    local.stop_ids = frozenset()
    for _delta in local._stream(prompt, GenerationParams(temperature=0, max_new_tokens=SIX_B_NEW_TOKENS + 1)):
        pass
    stats = local.last_stats
    steps = sorted(b - a for a, b in itertools.pairwise(stats.token_times))
    per_token = steps[len(steps) // 2]
    ours = list(stats.output_ids)
    if reference is not None:
        out["same_tokens_as_generate"] = ours == reference
    out["tokens_per_s"] = round(1 / per_token, 3)
    out["ms_per_token"] = round(per_token * 1000, 1)
    out["decode_prompt_ttft_s"] = round(stats.time_to_first_token, 2)
    if precision == "bf16":
        out["profile"] = _profile_tokens(local._engine.runner, ours[:4])
    local.reset_cache()
    ttft_prompt = _prompt(tok, SIX_B_TTFT_PROMPT)
    for _delta in local._stream(ttft_prompt, GenerationParams(temperature=0, max_new_tokens=1)):
        pass
    out["ttft_s"] = round(local.last_stats.time_to_first_token, 2)
    out["ttft_prompt_tokens"] = SIX_B_TTFT_PROMPT
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the bandwidth probe's 512 MiB
    bandwidth = max(bandwidth_before, memory_bandwidth())
    out["seconds_per_token"] = per_token
    out["memory_bandwidth_gb_s"] = round(bandwidth / 1e9, 2)
    out["achieved_gb_s"] = round(read / per_token / 1e9, 2)
    out["bandwidth_efficiency"] = round(read / per_token / bandwidth, 3)
    out["peak_rss_bytes"] = peak
    out["peak_rss_over_weights"] = round(peak / held, 3)  # every weight the process holds, the embedding included
    out["peak_rss_over_weights_read"] = round(peak / read, 3)
    out["threads"] = torch.get_num_threads()
    queue.put(out)


def measure_peer(_unused: str, threads: int | None, queue) -> None:  # runs in a child process
    import torch
    from _chatglm3_shaped import tokenizer
    from _llama_cpp_peer import peer_6b

    threads = threads or torch.get_num_threads()  # what our runs use by default
    out = peer_6b(_prompt(tokenizer(), SIX_B_PROMPT), SIX_B_NEW_TOKENS, threads)
    out["memory_bandwidth_gb_s"] = round(memory_bandwidth() / 1e9, 2)
    queue.put(out)


PEER_HOW = (
    "llama.cpp {version} (node-llama-cpp {nlc} prebuilt CPU binary, {threads} threads) on GGUF files written from "
    "the same random bf16 weights as our bf16 model (seed 0), streamed tensor by tensor into llama.cpp's chatglm "
    "layout as convert_hf_to_gguf.py names them (q/k/v fused into attn_qkv, gate+up in ffn_up, rope on 64 dims, "
    "the genuine ChatGLM3 vocabulary), quantized with the gguf package: q8_0 = every matrix Q8_0, the token "
    "embedding and output layer included (as convert_hf_to_gguf.py --outtype q8_0); q4_0 = every matrix Q4_0, the "
    "token embedding included, the output layer Q8_0 (llama-quantize would choose Q6_K, which gguf cannot write; "
    "our int4 model's output layer is int8 too); norms and biases F32. Same 59 token ids, greedy, median step "
    "after the first token. peer_ratio = ours / llama.cpp tokens/s (int8 vs q8_0, int4 vs q4_0)."
)


def main_6b(args) -> None:
    if args.peer:
        from _llama_cpp_peer import PeerUnavailable, check_available

        try:
            check_available()
        except PeerUnavailable as error:
            raise SystemExit(str(error)) from None
    results = {}
    for precision in [p for p in args.precisions.split(",") if p and p != "none"]:
        results[precision] = _in_child(measure_6b, precision, args.threads)
        print(json.dumps({precision: results[precision]}), file=sys.stderr, flush=True)
    peer = None
    if args.peer:
        threads = max((r["threads"] for r in results.values()), default=args.threads)
        peer = _in_child(measure_peer, "", threads)
        print(json.dumps({"peer": peer}), file=sys.stderr, flush=True)
    baseline = results.get("bf16", {}).get("generate_tokens_per_s")
    bandwidths = [r["memory_bandwidth_gb_s"] for r in results.values()] + (
        [peer["memory_bandwidth_gb_s"]] if peer else []
    )
    bandwidth = max(bandwidths) * 1e9  # the run's best read bandwidth
    for r in results.values():
        r["bandwidth_efficiency_own_process"] = r["bandwidth_efficiency"]
        r["bandwidth_efficiency"] = round(r["weight_bytes"] / r.pop("seconds_per_token") / bandwidth, 3)
        if baseline:
            r["speedup_vs_generate"] = round(r["tokens_per_s"] / baseline, 3)
    if "bf16" in results:
        for name in ("int8", "int4"):
            if name in results:
                results[name]["tokens_per_s_over_bf16"] = round(
                    results[name]["tokens_per_s"] / results["bf16"]["tokens_per_s"], 2
                )
    out = {
        "benchmark": "decode",
        "shape": "chatglm3-6b",
        "model": {
            "parameters": 6243584000,
            "shape": "ChatGLM3-6B: hidden 4096, 28 layers, 32 heads x 128, 2 KV groups, FFN 13696, vocab 65024",
            "weights": "random, built directly in each precision; int4 at group 128; the output layer int8 in int8 and int4",
        },
        "prompt_tokens": SIX_B_PROMPT,
        "new_tokens": SIX_B_NEW_TOKENS,
        "baseline": "transformers generate() on the bf16 model, same process as bf16, same prompt, greedy",
        "memory_bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "memory_bandwidth_range_gb_s": [min(bandwidths), max(bandwidths)],  # the probe's swing between processes
        "bandwidth_note": "best read bandwidth of the run (each process measures before loading and after decoding); "
        "bandwidth_efficiency = weight bytes per token / seconds per token / that; "
        "bandwidth_efficiency_own_process: over that process's own best probe (on a VM the probe swings between "
        "processes: see memory_bandwidth_range_gb_s)",
        "results": results,
    }
    if peer is not None:
        from _llama_cpp_peer import NODE_LLAMA_CPP_VERSION

        for kind, ours in (("q8_0", "int8"), ("q4_0", "int4")):
            peer[kind]["bandwidth_efficiency"] = round(
                peer[kind]["weight_bytes"] * peer[kind]["tokens_per_s"] / bandwidth, 3
            )
            if ours in results:
                results[ours]["peer_ratio"] = round(results[ours]["tokens_per_s"] / peer[kind]["tokens_per_s"], 3)
        peer.pop("memory_bandwidth_gb_s")
        peer["how"] = PEER_HOW.format(
            version=peer["q8_0"]["llama_cpp_release"], nlc=NODE_LLAMA_CPP_VERSION, threads=peer["q8_0"]["threads"]
        )
        out["peer"] = peer
    print(json.dumps(out, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--shape", choices=("100m", "chatglm3-6b"), default="100m", help="model shape (default 100m)")
    parser.add_argument(
        "--precisions", default="bf16,int8,int4", help="for chatglm3-6b: which, comma-separated ('none': only --peer)"
    )
    parser.add_argument(
        "--peer",
        choices=("llama.cpp",),
        default=None,
        help="for chatglm3-6b: also decode the same weights in llama.cpp at q8_0 and q4_0 (needs node, node-llama-cpp, gguf)",
    )
    args = parser.parse_args()
    if args.peer and args.shape != "chatglm3-6b":
        parser.error("--peer needs --shape chatglm3-6b")
    if args.shape == "chatglm3-6b":
        main_6b(args)
        return
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
