"""Many conversations on one local model: the KV store for all of them and the prompt cache on disk.

Four conversations share a system prompt with tool schemas (about 1,000 tokens) and take turns
round robin, five turns each: a short user turn, then a 32-token greedy reply. The same
schedule runs twice on the same random weights, each in a fresh process: with the KV store
(ours) and with a one-conversation cache (``kv_cache_bytes=0``: the KV cache of the last prompt
and reply only, the behaviour before the store: the baseline).

Then the prompt cache on disk: a fresh process asks a new question with an empty cache
directory (cold; it writes the system prompt's prefix), another fresh process asks another
question with that directory (warm). ``prefix_load_ms`` is reading and checking the stored
system prompt and putting it in the engine's buffer.

Prints one JSON object. ``interleaved_ttft_ratio``: median time to first token, ours /
baseline; ``prefilled_tokens_ratio``: prompt tokens computed, ours / baseline; ``reused_fraction``: prompt tokens served from the cache after each conversation's
first turn; ``disk_warm_ttft_ratio``: warm / cold first turn; peak RSS against weights + budget.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONVERSATIONS = 4
TURNS = 5
NEW_TOKENS = 32
SYSTEM_TOKENS = 1000


def system_message(tok: Any, target: int = SYSTEM_TOKENS) -> dict[str, Any]:
    """A tools system message of about ``target`` tokens (tool schemas added until it is that long)."""
    tools: list[dict[str, Any]] = []
    message: dict[str, Any] = {"role": "system", "content": "Answer as best you can. You may use these tools:"}
    while len(tok.apply_chat_template([{**message, "tools": tools}], add_generation_prompt=False)) < target:
        i = len(tools)
        tools.append(
            {
                "name": f"lookup_{i}",
                "description": f"Look up records in catalogue {i}: items, prices, stock levels and suppliers, "
                "filtered by the query and returned as a JSON list.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "query": {"type": "string", "description": "what to look for"},
                        "limit": {"type": "integer", "description": "how many records at most"},
                    },
                    "required": ["query"],
                },
            }
        )
    return {**message, "tools": tools}


def user_turn(conversation: int, turn: int) -> dict[str, str]:
    return {"role": "user", "content": f"Customer {conversation}, message {turn}: what about order {1000 + 7 * turn}?"}


def build(shape: str, quantize: str) -> tuple[Any, Any]:
    import torch
    from _chatglm3_shaped import random_model, random_model_6b, tokenizer

    if shape == "chatglm3-6b":
        return random_model_6b(quantize if quantize != "none" else "bf16"), tokenizer()
    return random_model(torch.float32), tokenizer()  # 100m: float32 (--quantize is for the 6B shape)


def local_model(weights: Any, tok: Any, **options: Any) -> Any:
    from glm_agent.models import LocalModel

    model = LocalModel(weights, tok, temperature=0, max_new_tokens=NEW_TOKENS, **options)
    model.stop_ids = frozenset()  # random weights: always NEW_TOKENS tokens, as in decode.py
    return model


def weight_bytes(weights: Any) -> int:
    from _chatglm3_shaped import weight_bytes_held

    return int(weight_bytes_held(weights))


def measure_schedule(shape: str, quantize: str, kv_cache_bytes: int, queue: Any) -> None:  # in a child process
    """The round robin, with each conversation's prompt as token ids: the history holds every reply as the
    ids the model generated, as a real model's replies re-encode (random weights' replies would not)."""
    weights, tok = build(shape, quantize)
    model = local_model(weights, tok, kv_cache_bytes=kv_cache_bytes)
    system = tok.apply_chat_template([system_message(tok)], add_generation_prompt=False)
    histories = [list(system) for _ in range(CONVERSATIONS)]
    turns = []
    for turn in range(TURNS):
        for c in range(CONVERSATIONS):
            user = user_turn(c, turn)
            prompt = [*histories[c], *tok.encode_message("user", "", user["content"]), tok.assistant_id]
            "".join(model.stream_ids(prompt))
            stats = model.last_stats
            turns.append(
                {
                    "conversation": c,
                    "turn": turn,
                    "prompt_tokens": stats.prompt_tokens,
                    "reused_tokens": stats.reused_tokens,
                    "ttft_s": stats.time_to_first_token,
                    "output_ids": stats.output_ids,
                }
            )
            histories[c] = [*prompt, *stats.output_ids]
    store = model.kv_store
    queue.put(
        {
            "system_tokens": len(system),
            "turns": turns,
            "weight_bytes": weight_bytes(weights),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "store_bytes": store.bytes if store is not None else 0,
            "buffer_bytes": model._cache.runner.buffer_bytes(),
        }
    )


def measure_disk(shape: str, quantize: str, directory: str, question: int, queue: Any) -> None:  # in a child process
    weights, tok = build(shape, quantize)
    model = local_model(weights, tok, prompt_cache_dir=directory)
    system = system_message(tok)
    out: dict[str, Any] = {}
    disk, cache = model.prompt_cache, model._cache
    system_ids = tok.apply_chat_template([system], add_generation_prompt=False)
    start = time.perf_counter()
    segments = disk.load(system_ids, longer_than=0, limit=len(system_ids))
    for segment in segments:
        cache.runner.write_kv(segment.start, segment.kv)
    out["prefix_load_ms"] = (time.perf_counter() - start) * 1000
    out["prefix_loaded_tokens"] = segments[-1].end if segments else 0
    cache.reset()  # the timed turn below starts from the disk, as a fresh process does
    "".join(model.stream([system, user_turn(question, 0)], max_new_tokens=1))
    stats = model.last_stats
    out.update(ttft_s=stats.time_to_first_token, reused_tokens=stats.reused_tokens, reused_from=stats.reused_from)
    out["files_bytes"] = sum(p.stat().st_size for p in Path(directory).glob("*.safetensors"))
    queue.put(out)


def in_child(target: Any, *args: Any) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result: dict[str, Any] = queue.get()
    proc.join()
    return result


def summary(run: dict[str, Any]) -> dict[str, Any]:
    later = [t for t in run["turns"] if t["turn"] > 0 or t["conversation"] > 0]
    after_first = [t for t in run["turns"] if t["turn"] > 0]
    return {
        "median_ttft_s": round(statistics.median(t["ttft_s"] for t in later), 3),
        "reused_fraction": round(
            sum(t["reused_tokens"] for t in after_first) / sum(t["prompt_tokens"] for t in after_first), 3
        ),
        "prompt_tokens": sum(t["prompt_tokens"] for t in run["turns"]),
        "reused_tokens": sum(t["reused_tokens"] for t in run["turns"]),
        "peak_rss_bytes": run["peak_rss_bytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("100m", "chatglm3-6b"), default="100m", help="model shape (default 100m)")
    parser.add_argument("--quantize", choices=("none", "int8", "int4"), default="none", help="weights (default none)")
    parser.add_argument("--kv-cache-size", type=int, default=2**30, help="ours: the KV budget in bytes (default 1 GiB)")
    args = parser.parse_args()
    if args.quantize != "none" and args.shape != "chatglm3-6b":
        parser.error("--quantize is for --shape chatglm3-6b (the 100m shape runs in float32)")
    ours = in_child(measure_schedule, args.shape, args.quantize, args.kv_cache_size)
    print(json.dumps({"ours": summary(ours)}), file=sys.stderr, flush=True)
    baseline = in_child(measure_schedule, args.shape, args.quantize, 0)
    print(json.dumps({"baseline": summary(baseline)}), file=sys.stderr, flush=True)
    same = [a["output_ids"] == b["output_ids"] for a, b in zip(ours["turns"], baseline["turns"], strict=True)]
    with tempfile.TemporaryDirectory(prefix="glm-agent-prompt-cache-") as directory:
        cold = in_child(measure_disk, args.shape, args.quantize, directory, 0)
        warm = in_child(measure_disk, args.shape, args.quantize, directory, 1)
    ours_summary, base_summary = summary(ours), summary(baseline)
    budget_bound = ours["weight_bytes"] + args.kv_cache_size
    out = {
        "benchmark": "conversations",
        "shape": args.shape,
        "quantize": args.quantize,
        "schedule": f"{CONVERSATIONS} conversations x {TURNS} turns round robin, {NEW_TOKENS}-token greedy replies, "
        f"a {ours['system_tokens']}-token tools system prompt shared by all",
        "baseline": "the same schedule with kv_cache_bytes=0 (the last prompt and reply only), in its own process",
        "interleaved_ttft_ratio": round(ours_summary["median_ttft_s"] / base_summary["median_ttft_s"], 3),
        "reused_fraction": ours_summary["reused_fraction"],
        "prefilled_tokens_ratio": round(
            (ours_summary["prompt_tokens"] - ours_summary["reused_tokens"])
            / (base_summary["prompt_tokens"] - base_summary["reused_tokens"]),
            3,
        ),
        "baseline_reused_fraction": base_summary["reused_fraction"],
        "same_tokens_as_baseline": all(same),
        "turns_with_the_baseline_tokens": f"{sum(same)} of {len(same)}",
        "disk_warm_ttft_ratio": round(warm["ttft_s"] / cold["ttft_s"], 3),
        "prefix_load_ms": round(warm["prefix_load_ms"], 1),
        "prefix_loaded_tokens": warm["prefix_loaded_tokens"],
        "disk_cold": cold,
        "disk_warm": warm,
        "ours": ours_summary,
        "baseline_run": base_summary,
        "kv_cache_bytes": args.kv_cache_size,
        "store_bytes_at_end": ours["store_bytes"],
        "working_buffer_bytes": ours["buffer_bytes"],
        "weight_bytes": ours["weight_bytes"],
        "peak_rss_over_weights_plus_budget": round(ours["peak_rss_bytes"] / budget_bound, 3),
        "peak_rss_over_baseline": round(ours["peak_rss_bytes"] / baseline["peak_rss_bytes"], 3),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
