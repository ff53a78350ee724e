"""Perplexity of a ChatGLM3 checkpoint in bf16 and quantized, on a text the repo ships (for users with real weights).

Strided evaluation as chatglm.cpp (and transformers' perplexity guide) measure it: windows of
``--length`` tokens (2048) moving ``--stride`` tokens (512) at a time; each window scores only
the tokens the previous one did not (the first window scores all but its first token). Each
precision is loaded on its own, one at a time (the full-precision model is never held next to a
quantized one). Prints JSON with the perplexity per precision and its ratio to bf16.

The default text, ``benchmarks/data/tang300.txt``, is the Three Hundred Tang Poems (唐诗三百首,
313 poems, compiled in 1763; the poems are in the public domain), taken from Debian's
``fortunes-zh`` package (file ``tang300``) with its terminal colours and separators removed:
27.5k ChatGLM3 tokens, 51 windows. ``--max-windows`` evaluates the first windows only (the
real 6B model on 2 CPU cores spends about a minute per window in bf16).

    python benchmarks/perplexity.py THUDM/chatglm3-6b --precisions bf16,int8,int4-g32,int4-g128
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

TEXT = Path(__file__).resolve().parent / "data" / "tang300.txt"


def windows(total: int, length: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, end, scored_from)`` per window: tokens ``[scored_from, end)`` are scored as next-token targets."""
    out, scored_until = [], 1  # token 0 has no context: never a target
    start = 0
    while True:
        end = min(start + length, total)
        out.append((start, end, max(scored_until, start + 1)))
        scored_until = end
        if end == total:
            return out
        start += stride


def perplexity(model, ids: list[int], length: int, stride: int, max_windows: int | None) -> dict:
    import torch

    nll, count = 0.0, 0
    plan = windows(len(ids), length, stride)[:max_windows]
    started = time.perf_counter()
    for start, end, scored_from in plan:
        tokens = torch.tensor([ids[start:end]])
        with torch.inference_mode():
            logits = model(input_ids=tokens).logits[0].float()
        targets = tokens[0, scored_from - start :]
        predicted = logits[scored_from - start - 1 : end - start - 1]
        nll += float(torch.nn.functional.cross_entropy(predicted, targets, reduction="sum"))
        count += len(targets)
    return {
        "perplexity": round(math.exp(nll / count), 4),
        "scored_tokens": count,
        "windows": len(plan),
        "seconds": round(time.perf_counter() - started, 1),
    }


def load(checkpoint: str, precision: str, dtype: str):
    from glm_agent.chatglm3.checkpoint import load_model

    if precision in ("bf16", "float32", "fp16"):
        names = {"bf16": "bfloat16", "float32": "float32", "fp16": "float16"}
        return load_model(checkpoint, dtype=names[precision], device="cpu")
    scheme, _, group = precision.partition("-g")
    return load_model(checkpoint, dtype=dtype, device="cpu", quantize=scheme, group_size=int(group or 128))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="ChatGLM3 checkpoint directory or cached hub id")
    parser.add_argument(
        "--precisions",
        default="bf16,int8,int4-g32,int4-g128",
        help="comma-separated: bf16, float32, int8, int4-gN (default bf16,int8,int4-g32,int4-g128)",
    )
    parser.add_argument("--quantize", help="shorthand for --precisions bf16,SCHEME (e.g. int8, int4-g128)")
    parser.add_argument("--text", default=str(TEXT), help="UTF-8 text file (default: the shipped Tang poems)")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--stride", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=None, help="evaluate only the first N windows")
    parser.add_argument("--dtype", default="bfloat16", help="activation dtype of the quantized models")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    import gc

    import torch

    from glm_agent.chatglm3 import ChatGLM3Tokenizer
    from glm_agent.chatglm3.checkpoint import resolve_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = f"bf16,{args.quantize}" if args.quantize else args.precisions
    directory = resolve_checkpoint(args.checkpoint)
    tokenizer = ChatGLM3Tokenizer.from_pretrained(directory)
    ids = tokenizer.encode(Path(args.text).read_text(encoding="utf-8"))
    results: dict[str, dict] = {}
    for precision in precisions.split(","):
        model = load(str(directory), precision, args.dtype)
        results[precision] = perplexity(model, ids, args.length, args.stride, args.max_windows)
        print(json.dumps({precision: results[precision]}), file=sys.stderr, flush=True)
        del model
        gc.collect()
    if "bf16" in results:
        base = results["bf16"]["perplexity"]
        for r in results.values():
            r["over_bf16"] = round(r["perplexity"] / base, 5)
    print(
        json.dumps(
            {
                "benchmark": "perplexity",
                "checkpoint": str(directory),
                "text": Path(args.text).name,
                "text_tokens": len(ids),
                "length": args.length,
                "stride": args.stride,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
