"""A randomly initialised ChatGLM3-shaped model of about 100M parameters, shared by the local-model benchmarks.

Same architecture and vocabulary as ChatGLM3-6B (65,024 rows, head_dim 128, 2 KV groups,
ffn/hidden ratio 3.34, untied output layer), scaled down: hidden 512, 4 heads, 10 layers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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


#: ChatGLM3-6B's real shape (6.24B parameters); GLM_AGENT_BENCH_LAYERS=2 makes a quick smoke run
CONFIG_6B = {
    **CONFIG,
    "hidden_size": 4096,
    "intermediate_size": 13696,
    "num_hidden_layers": int(os.environ.get("GLM_AGENT_BENCH_LAYERS", "28")),
    "num_attention_heads": 32,
}


def _random_bf16(module_name: str, name: str, shape: torch.Size) -> torch.Tensor:
    """One parameter of the bf16 6B-shaped model: norms ones, weights uniform in +-0.03, biases in +-0.01."""
    value = torch.empty(shape, dtype=torch.bfloat16)
    if "norm" in module_name:
        value.fill_(1.0)
    else:
        value.uniform_(-0.03, 0.03) if name == "weight" else value.uniform_(-0.01, 0.01)
    return value


def random_bf16_tensors_6b(seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """The parameters of ``random_model_6b("bf16", seed)`` one at a time, same names and values, in the
    order it draws them: for writing them elsewhere (a GGUF file) without holding the 12.5 GB model.
    """
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = GlmForCausalLM(GlmConfig(**CONFIG_6B))
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            yield f"{module_name}.{name}", _random_bf16(module_name, name, param.shape)


def random_model_6b(precision: str, seed: int = 0, group_size: int = 128) -> GlmForCausalLM:
    """ChatGLM3-6B's shape with random weights built directly in ``precision`` (bf16, int8 or int4).

    Each tensor is allocated and filled in place, one at a time: bf16 weights are uniform in
    +-0.03 (std 0.017, about ChatGLM3's); int8/int4 weights are random codes with scales of the
    same magnitude, never a bf16 copy. Norms are ones, biases small.
    """
    from glm_agent.quantization import PortableWeight, QuantizedLinear

    torch.manual_seed(seed)
    with torch.device("meta"):
        model = GlmForCausalLM(GlmConfig(**CONFIG_6B))
    for module_name, module in list(model.named_modules()):
        for name, param in list(module.named_parameters(recurse=False)):
            if name == "weight" and isinstance(module, torch.nn.Linear) and precision != "bf16":
                continue
            value = _random_bf16(module_name, name, param.shape)
            module._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
        if isinstance(module, torch.nn.Linear) and precision != "bf16":
            n, k = module.out_features, module.in_features
            scheme = "int8" if precision == "int8" or module_name == "lm_head" else "int4"
            if scheme == "int8":
                q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
                portable = PortableWeight("int8", n, k, 0, q, torch.full((n,), 0.03 / 127, dtype=torch.bfloat16))
            else:
                groups = k // group_size
                q = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8)
                step = 0.06 / 15
                scales = torch.full((n, groups), step, dtype=torch.bfloat16)
                # w = (q - 8) * step + zero has mean -step / 2 + zero: zeros around step / 2 keep it unbiased
                zeros = torch.empty((n, groups), dtype=torch.bfloat16).uniform_(step / 2 - 0.001, step / 2 + 0.001)
                portable = PortableWeight("int4", n, k, group_size, q, scales, zeros)
            bias = module.bias
            quantized = QuantizedLinear(portable, bias.data if bias is not None else None)
            del portable, q
            owner_name, _, attr = module_name.rpartition(".")
            setattr(model.get_submodule(owner_name) if owner_name else model, attr, quantized)
    with torch.device("cpu"):
        model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def weight_bytes_read(model: torch.nn.Module) -> int:
    """Bytes of weights one decoded token reads: every parameter and quantized buffer, one embedding row."""
    embed = model.get_submodule("model.embed_tokens").weight
    return weight_bytes_held(model) - embed.numel() * embed.element_size() + embed.shape[1] * embed.element_size()


def weight_bytes_held(model: torch.nn.Module) -> int:
    """Bytes of every weight the model holds (the whole embedding table included)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total + sum(b.numel() * b.element_size() for name, b in model.named_buffers() if "rotary" not in name)


def quantized_backends(model: torch.nn.Module) -> dict[str, int]:
    """How many quantized layers run on which kernels (``int4_native``: glm-agent's, ``int4_cpu``: torch's, ...)."""
    from glm_agent.quantization import QuantizedLinear

    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            counts[module.backend] = counts.get(module.backend, 0) + 1
    return counts
