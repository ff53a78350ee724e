"""Many conversations come and go on one LocalModel with a small KV budget; prints resident memory (for
tests/test_kv_cache.py). A random GLM model of ChatGLM3's vocabulary with wide keys and values (16 KiB a
token), so that the churn is large next to the weights."""

from __future__ import annotations

import json
import random
import sys

import torch
from transformers import GlmConfig, GlmForCausalLM

from glm_agent.chatglm3 import ChatGLM3Tokenizer
from glm_agent.models import LocalModel
from tests._data import TOKENIZER

CONFIG = {
    "vocab_size": 65024,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 8,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "max_position_embeddings": 2048,
    "attention_bias": True,
    "partial_rotary_factor": 0.5,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": [2, 64795, 64797],
}


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def main() -> None:
    budget, conversations = int(sys.argv[1]), int(sys.argv[2])
    torch.manual_seed(0)
    weights = GlmForCausalLM(GlmConfig(**CONFIG)).eval()
    model = LocalModel(weights, ChatGLM3Tokenizer(TOKENIZER), kv_cache_bytes=budget, temperature=0, max_new_tokens=2)
    rng = random.Random(0)
    shared = [rng.randrange(100, 60000) for _ in range(200)]

    def converse(length: int | None = None) -> None:
        own = length if length is not None else rng.randrange(200, 900)
        prompt = shared + [rng.randrange(100, 60000) for _ in range(own)]
        "".join(model.stream_ids(prompt))

    for _ in range(3):  # the working buffer at its largest, the allocator warm
        converse(900)
    model.reset_cache()
    start = resident_bytes()
    peak = start
    for _ in range(conversations):
        converse()
        peak = max(peak, resident_bytes())
    store = model.kv_store
    assert store is not None
    churned = conversations * 550 * model._cache.runner.kv_bytes_per_token
    print(
        json.dumps(
            {"start": start, "peak": peak, "store_bytes": store.bytes, "evicted": store.evicted, "churned": churned}
        )
    )


if __name__ == "__main__":
    main()
