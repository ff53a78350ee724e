"""Prefix cache over a 10-turn agent episode: time to first token, tokens prefilled, wall time.

The episode: a tools system prompt of about 600 tokens and a question; each turn the model
writes 32 tokens (greedy) and an observation of about 100 tokens follows. The same episode
runs on the same randomly initialised ChatGLM3-shaped model (~100M parameters, CPU,
float32) without the prefix cache (baseline: every turn prefills the whole conversation)
and with it. Prints one JSON object; ratios are baseline / cached.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _chatglm3_shaped import random_model, tokenizer

from glm_agent.models import LocalModel

TURNS = 10
NEW_TOKENS = 32


def tools() -> list[dict]:
    """Tool definitions: with the default tools prompt, about 600 tokens of system message."""
    specs = [
        (
            "get_weather",
            "Current weather for a city: temperature, sky, humidity and wind, from the nearest station.",
            {"city": "City name", "unit": "celsius or fahrenheit"},
        ),
        (
            "search_web",
            "Search the web and return the top results with titles, addresses and short snippets.",
            {"query": "Search terms", "limit": "Number of results"},
        ),
        (
            "read_file",
            "Read a text file from the shared workspace and return its content as UTF-8 text.",
            {"path": "Path inside the workspace"},
        ),
        (
            "write_file",
            "Write text to a file in the shared workspace, replacing any previous content of that file.",
            {"path": "Path inside the workspace", "text": "New content"},
        ),
    ]
    return [
        {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {key: {"type": "string", "description": text} for key, text in params.items()},
                "required": list(params),
            },
        }
        for name, description, params in specs
    ]


def observation(turn: int) -> str:
    """About 100 tokens of tool result."""
    rows = [
        {"id": turn * 10 + i, "city": ["Paris", "北京", "Lima", "Oslo"][i % 4], "temp_c": 12.5 + i, "sky": "clear"}
        for i in range(3)
    ]
    return json.dumps({"turn": turn, "status": "ok", "rows": rows}, ensure_ascii=False)


def episode(model: LocalModel) -> dict:
    tok = model.tokenizer
    messages: list[dict] = [
        {
            "role": "system",
            "content": "Answer the following questions as best as you can. You have access to the following tools:",
            "tools": tools(),
        },
        {"role": "user", "content": "Collect the weather for our four offices and summarise it for the weekly email."},
    ]
    ttft, prompt_tokens, prefilled, outputs = [], [], [], []
    start = time.perf_counter()
    for turn in range(TURNS):
        reply = "".join(model.stream(messages, temperature=0, max_new_tokens=NEW_TOKENS))
        stats = model.last_stats
        ttft.append(stats.time_to_first_token)
        prompt_tokens.append(stats.prompt_tokens)
        prefilled.append(stats.prefill_tokens)
        outputs.append(stats.output_ids)
        messages.append({"role": "assistant", "content": reply.strip()})
        messages.append({"role": "observation", "content": observation(turn)})
    wall = time.perf_counter() - start
    system_tokens = len(tok.apply_chat_template(messages[:1], add_generation_prompt=False))
    observation_tokens = len(tok.encode_message("observation", "", observation(0)))
    return {
        "wall": wall,
        "ttft": ttft,
        "prompt_tokens": prompt_tokens,
        "prefilled": prefilled,
        "outputs": outputs,
        "system_tokens": system_tokens,
        "observation_tokens": observation_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = tokenizer()
    weights = random_model(torch.float32)
    params = sum(p.numel() for p in weights.parameters())
    baseline_model = LocalModel(weights, tok, prefix_cache=False)
    cached_model = LocalModel(weights, tok, prefix_cache=True)
    cached_model.generate([{"role": "user", "content": "warm up"}], temperature=0, max_new_tokens=4)  # first-call costs
    baseline = episode(baseline_model)
    cached = episode(cached_model)
    later = slice(1, TURNS)
    mean_ttft_base = statistics.mean(baseline["ttft"][later])
    mean_ttft_cached = statistics.mean(cached["ttft"][later])
    result = {
        "benchmark": "prefix_cache",
        "model": {"parameters": params, "dtype": "float32", "device": "cpu", "threads": torch.get_num_threads()},
        "episode": {
            "turns": TURNS,
            "system_tokens": baseline["system_tokens"],
            "observation_tokens": baseline["observation_tokens"],
            "new_tokens_per_turn": [len(o) for o in baseline["outputs"]],
            "prompt_tokens_per_turn": baseline["prompt_tokens"],
        },
        "ttft_speedup": round(mean_ttft_base / mean_ttft_cached, 2),
        "prefill_ratio": round(sum(baseline["prefilled"]) / sum(cached["prefilled"]), 2),
        "prefill_ratio_turns_2_10": round(sum(baseline["prefilled"][later]) / sum(cached["prefilled"][later]), 2),
        "speedup": round(baseline["wall"] / cached["wall"], 2),
        "same_output": baseline["outputs"] == cached["outputs"],
        "baseline": {
            "mean_ttft_s_turns_2_10": round(mean_ttft_base, 4),
            "tokens_prefilled": sum(baseline["prefilled"]),
            "episode_s": round(baseline["wall"], 3),
        },
        "cached": {
            "mean_ttft_s_turns_2_10": round(mean_ttft_cached, 4),
            "tokens_prefilled": sum(cached["prefilled"]),
            "prefilled_per_turn": cached["prefilled"],
            "episode_s": round(cached["wall"], 3),
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
