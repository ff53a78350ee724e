"""A process that answers one conversation on the tiny checkpoint with a prompt cache (for tests/test_kv_cache.py).

Prints one JSON line: the reply's ids and how much of the prompt was reused, from where.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys

from glm_agent.chatglm3 import ChatGLM3Tokenizer
from glm_agent.chatglm3.checkpoint import load_model
from glm_agent.models import LocalModel
from tests._data import TINY_CHECKPOINT
from tests.kv_conversations import conversation


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache")
    parser.add_argument("--question", type=int, default=0)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quantize", default=None)
    parser.add_argument("--perturb", action="store_true", help="other weights: one weight changed by a little")
    parser.add_argument("--file-size-limit", type=int, default=0, help="RLIMIT_FSIZE: writes past it fail (disk full)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    tokenizer = ChatGLM3Tokenizer.from_pretrained(TINY_CHECKPOINT)
    weights = load_model(
        TINY_CHECKPOINT, dtype=args.dtype, device="cpu", quantize=args.quantize, group_size=32, progress=False
    )
    if args.perturb:
        with __import__("torch").no_grad():
            weights.model.layers[0].mlp.down_proj.weight.mul_(1.01)
    if args.file_size_limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.file_size_limit, args.file_size_limit))
    model = LocalModel(weights, tokenizer, prompt_cache_dir=args.cache, temperature=0, max_new_tokens=12)
    for _ in range(args.repeat):
        "".join(model.stream(conversation(args.question)))
        stats = model.last_stats
        assert stats is not None
        print(
            json.dumps({"ids": stats.output_ids, "reused": stats.reused_tokens, "source": stats.reused_from}),
            flush=True,
        )


if __name__ == "__main__":
    main()
