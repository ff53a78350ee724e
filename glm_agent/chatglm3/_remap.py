"""The official ChatGLM3 layout mapped onto transformers' native GLM model: config and weight names.

ChatGLM3 and ``GlmForCausalLM`` are the same network: rotary on the first half of each head's
dimensions in interleaved pairs, grouped KV heads, qkv projections with bias, a fused gate/up
MLP, RMSNorm and an untied output layer. Only names differ, and the fused qkv matrix is split.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

from glm_agent.errors import CheckpointError

logger = logging.getLogger(__name__)

__all__ = ["CHATGLM3_PADDED_VOCAB", "CHATGLM3_STOP_IDS", "check_chatglm3_config", "glm_config_kwargs", "remap_tensor"]

#: ChatGLM3's embedding rows (64,798 real ids, padded).
CHATGLM3_PADDED_VOCAB = 65024
#: eos, <|user|>, <|observation|>
CHATGLM3_STOP_IDS = [2, 64795, 64797]

_REQUIRED = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "kv_channels",
    "multi_query_group_num",
    "ffn_hidden_size",
    "padded_vocab_size",
)

_LAYER = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
#: checkpoint tensors that the native model recomputes
_DROPPED = ("transformer.rotary_pos_emb.inv_freq",)


def check_chatglm3_config(cfg: Mapping[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` unless ``cfg`` (an official config.json) describes a ChatGLM3 network."""
    if "position_encoding_2d" in cfg or "inner_hidden_size" in cfg:
        raise CheckpointError(
            f"{source} is a ChatGLM-6B (v1) checkpoint (2D position encoding); glm-agent runs ChatGLM3 only: "
            "use THUDM/chatglm3-6b (or -base, -32k)"
        )
    vocab = cfg.get("padded_vocab_size")
    if isinstance(vocab, int) and vocab > CHATGLM3_PADDED_VOCAB:
        raise CheckpointError(
            f"{source} has padded_vocab_size {vocab}: this looks like a GLM-4 checkpoint, whose tokenizer and chat format "
            "differ from ChatGLM3's; glm-agent runs ChatGLM3 only: use THUDM/chatglm3-6b (or -base, -32k)"
        )
    missing = [key for key in _REQUIRED if key not in cfg]
    if missing:
        raise CheckpointError(
            f"{source} lacks {', '.join(missing)}: not a ChatGLM3 config (model_type chatglm, as THUDM/chatglm3-6b)"
        )
    if not cfg.get("multi_query_attention", True):
        raise CheckpointError(
            f"{source}: multi_query_attention is false; glm-agent supports ChatGLM3's grouped KV heads only"
        )
    if cfg.get("add_bias_linear", False) or not cfg.get("add_qkv_bias", True):
        raise CheckpointError(
            f"{source}: unsupported bias layout (add_bias_linear/add_qkv_bias differ from ChatGLM3's)"
        )
    if not cfg.get("rmsnorm", True) or not cfg.get("post_layer_norm", True):
        raise CheckpointError(f"{source}: LayerNorm variants other than ChatGLM3's final RMSNorm are not supported")
    if cfg.get("apply_residual_connection_post_layernorm", False):
        raise CheckpointError(
            f"{source}: apply_residual_connection_post_layernorm is not supported (ChatGLM3 uses false)"
        )
    if cfg.get("pre_seq_len"):
        raise CheckpointError(
            f"{source}: P-tuning prefix checkpoints (pre_seq_len) are not supported; merge the prefix first"
        )


def glm_config_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``transformers.GlmConfig`` equivalent to the official ``ChatGLMConfig``."""
    rope_theta = 10000.0 * float(cfg.get("rope_ratio", 1.0) or 1.0)
    return {
        "vocab_size": int(cfg["padded_vocab_size"]),
        "hidden_size": int(cfg["hidden_size"]),
        "intermediate_size": int(cfg["ffn_hidden_size"]),
        "num_hidden_layers": int(cfg["num_layers"]),
        "num_attention_heads": int(cfg["num_attention_heads"]),
        "num_key_value_heads": int(cfg["multi_query_group_num"]),
        "head_dim": int(cfg["kv_channels"]),
        "hidden_act": "silu",
        "max_position_embeddings": int(cfg.get("seq_length", 8192)),
        "rms_norm_eps": float(cfg.get("layernorm_epsilon", 1e-5)),
        "attention_bias": bool(cfg.get("add_qkv_bias", True)),
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "pad_token_id": int(cfg.get("pad_token_id", 0) or 0),
        "eos_token_id": list(CHATGLM3_STOP_IDS),
        "bos_token_id": None,
        "rope_theta": rope_theta,
        "partial_rotary_factor": 0.5,
    }


def remap_tensor(key: str, tensor: Any, cfg: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """The native ``(name, tensor)`` pairs of one official tensor (none for dropped buffers).

    Raises :class:`CheckpointError` for a name that is not part of ChatGLM3.
    """
    if key in _DROPPED:
        return
    if key in _TOP_NAMES:
        yield _TOP_NAMES[key], tensor
        return
    match = _LAYER.match(key)
    if match is None:
        raise CheckpointError(f"unexpected tensor {key!r}: not part of a ChatGLM3 checkpoint")
    index, rest = match.groups()
    prefix = f"model.layers.{index}."
    if rest in _LAYER_NAMES:
        yield prefix + _LAYER_NAMES[rest], tensor
        return
    if rest in ("self_attention.query_key_value.weight", "self_attention.query_key_value.bias"):
        kind = rest.rsplit(".", 1)[1]
        head_dim = int(cfg["kv_channels"])
        q_size = int(cfg["num_attention_heads"]) * head_dim
        kv_size = int(cfg["multi_query_group_num"]) * head_dim
        if tensor.shape[0] != q_size + 2 * kv_size:
            raise CheckpointError(
                f"tensor {key!r} has {tensor.shape[0]} rows; the config implies {q_size + 2 * kv_size} "
                f"(q {q_size} + k {kv_size} + v {kv_size}): config and weights do not match"
            )
        q, k, v = tensor.split([q_size, kv_size, kv_size], dim=0)
        yield prefix + f"self_attn.q_proj.{kind}", q
        yield prefix + f"self_attn.k_proj.{kind}", k
        yield prefix + f"self_attn.v_proj.{kind}", v
        return
    raise CheckpointError(f"unexpected tensor {key!r}: not part of a ChatGLM3 checkpoint")
