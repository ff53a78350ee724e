"""A fingerprint of everything that changes a model's keys and values, for the prompt cache's names.

The weights count by content, not by path: every parameter and buffer contributes its name,
shape, dtype and a sample of its values spread over the whole tensor (4,096 values each), which
tells apart other checkpoints, fine-tunes and quantizations without reading 12 GB. Quantization
scheme, group size, kernel backend and build (glm-agent's kernels: their source and compiler), the
engine's layout, the configuration and the tokenizer count too.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

__all__ = ["model_fingerprint", "weights_digest"]

_SAMPLES = 4096


def model_fingerprint(model: Any, *, layout: str, tokenizer: bytes = b"") -> str:
    """A hex digest for ``model`` as the engine runs it (``layout``: the engine's KV layout and version)."""
    digest = hashlib.sha256()
    digest.update(weights_digest(model).encode())
    digest.update(layout.encode())
    digest.update(hashlib.sha256(tokenizer).digest())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        digest.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def weights_digest(model: Any) -> str:
    """The weights' part of the fingerprint, kept on the model: take it before the engine re-lays out the weights."""
    cached: str | None = getattr(model, "_glm_agent_weights_digest", None)
    if cached is None:
        cached = _weights_digest(model)
        model._glm_agent_weights_digest = cached
    return cached


@torch.inference_mode()
def _weights_digest(model: Any) -> str:
    digest = hashlib.sha256()
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        if tensor.is_meta or tensor.numel() == 0:
            continue
        digest.update(_sample(tensor))
    for name, module in sorted(model.named_modules(), key=lambda item: item[0]):
        scheme = [getattr(module, attr, None) for attr in ("scheme", "group_size", "backend", "kernel_build")]
        if any(value is not None for value in scheme):
            digest.update(f"{name} {scheme}".encode())
    return digest.hexdigest()


def _sample(tensor: torch.Tensor) -> bytes:
    """``_SAMPLES`` values spread evenly over ``tensor`` in logical order (whatever its strides), as bytes."""
    flat = tensor.detach()
    count = flat.numel()
    n = min(_SAMPLES, count)
    picks = torch.arange(n, device=flat.device) * (count - 1) // max(n - 1, 1)
    index = torch.unravel_index(picks, tuple(flat.shape)) if flat.dim() else ()
    values = flat[index].contiguous().cpu() if flat.dim() else flat.reshape(1).cpu()
    return bytes(values.view(torch.uint8).numpy()) if values.dtype != torch.bool else bytes(values.numpy())
