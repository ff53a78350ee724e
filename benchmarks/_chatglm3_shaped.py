"""A randomly initialised ChatGLM3-shaped model of about 100M parameters, shared by the local-model benchmarks.

Same architecture and vocabulary as ChatGLM3-6B (65,024 rows, head_dim 128, 2 KV groups,
ffn/hidden ratio 3.34, untied output layer), scaled down: hidden 512, 4 heads, 10 layers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GlmConfig, GlmForCausalLM

from glm_agent.chatglm3 import ChatGLM3Tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "chatglm3"

CONFIG = {
    "vocab_size": 65024,
    "hidden_size": 512,
    "intermediate_size": 1712,
    "num_hidden_layers": 10,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "attention_bias": True,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": [2, 64795, 64797],
    "rope_theta": 10000.0,
    "partial_rotary_factor": 0.5,
}


def random_model(dtype: torch.dtype = torch.float32, seed: int = 0) -> GlmForCausalLM:
    """Weights drawn directly in ``dtype`` (no float32 copy on the way)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = GlmForCausalLM(GlmConfig(**CONFIG))
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def tokenizer() -> ChatGLM3Tokenizer:
    path = SHARED / "tokenizer.model"
    if not path.is_file():
        raise SystemExit(f"the ChatGLM3 tokenizer is expected at {path} (../shared/chatglm3 next to the checkout)")
    return ChatGLM3Tokenizer.from_pretrained(path)


def weight_bytes_read_per_token(model: GlmForCausalLM) -> int:
    """Every weight is read once per decoded token, except the embedding table (one row)."""
    embed = model.model.embed_tokens.weight
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total - embed.numel() * embed.element_size() + embed.shape[1] * embed.element_size()
