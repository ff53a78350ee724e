"""The portable quantized checkpoint: which tensors are quantized, how they are named, and the writer.

A quantized checkpoint is a native GLM checkpoint (``config.json`` with ``model_type: glm``,
safetensors shards, ``tokenizer.model``) whose linear weights are stored as
``<module>.qweight`` / ``.scales`` (/ ``.zeros`` for int4) in the portable layout of
:mod:`glm_agent.quantization` (unpacked int8, or int4 two per byte; bfloat16 scales and zeros).
``config.json`` says so in ``quantization_config`` (``quant_method: glm-agent``, format version,
scheme, group size), as does each shard's header. Nothing in it is CPU-specific: the kernel
packing happens at load. The shards are named ``quantized-*.safetensors`` (index
``quantized.safetensors.index.json``) so that plain transformers finds no weights and refuses
the directory instead of loading it with random weights.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from glm_agent.errors import CheckpointError
from glm_agent.quantization import PortableWeight, QuantSpec, quantize

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "QUANT_METHOD",
    "QUANTIZED_INDEX",
    "OUTPUT_LAYER",
    "is_quantized_linear",
    "spec_for",
    "checkpoint_spec",
    "PartsCollector",
    "write_quantized_checkpoint",
]

QUANT_METHOD = "glm-agent"
QUANTIZED_INDEX = "quantized.safetensors.index.json"
FORMAT_VERSION = 1
#: the output layer is int8 under both schemes: 8.5% of ChatGLM3-6B's bytes, and the layer whose
#: errors reach the logits directly (llama.cpp's 4-bit types likewise keep it at 6-8 bits)
OUTPUT_LAYER = "lm_head"
_LINEAR = re.compile(
    r"^(model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.gate_up_proj|mlp\.down_proj)|lm_head)\.weight$"
)
_PARTS = ("qweight", "scales", "zeros")


def is_quantized_linear(name: str) -> bool:
    """Whether the native parameter ``name`` is a linear weight that quantization replaces."""
    return _LINEAR.match(name) is not None


def spec_for(name: str, spec: QuantSpec) -> QuantSpec:
    """The scheme for one weight: the model's, except int8 for the output layer."""
    return QuantSpec("int8") if name.startswith(OUTPUT_LAYER + ".") else spec


def header(spec: QuantSpec) -> dict[str, Any]:
    return {
        "quant_method": QUANT_METHOD,
        "format_version": FORMAT_VERSION,
        "scheme": spec.scheme,
        "group_size": spec.group_size if spec.scheme == "int4" else None,
        "output_layer": "int8",
        "layout": "int8: w = q * scale per row; int4: w = (q - 8) * scale + zero per group, low nibble = even column",
    }


def checkpoint_spec(cfg: dict[str, Any], source: str) -> QuantSpec | None:
    """The scheme of a quantized checkpoint's ``config.json`` (``None`` for a full-precision one)."""
    q = cfg.get("quantization_config")
    if q is None:
        return None
    if not isinstance(q, dict) or q.get("quant_method") != QUANT_METHOD:
        method = q.get("quant_method") if isinstance(q, dict) else q
        raise CheckpointError(
            f"{source} is quantized with {method!r}, which glm-agent cannot read; use a full-precision checkpoint "
            "(glm-agent quantizes while loading) or one written by `glm-agent convert --quantize`"
        )
    version = q.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source} has quantized format version {version!r}; this glm-agent reads version {FORMAT_VERSION}: "
            "upgrade glm-agent or convert the original checkpoint again"
        )
    try:
        return QuantSpec(str(q["scheme"]), int(q.get("group_size") or 128))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{source} has an invalid quantization_config ({exc})") from None


class PartsCollector:
    """Gathers ``<module>.qweight/.scales/.zeros`` tensors (any order) into portable weights."""

    def __init__(self) -> None:
        self.pending: dict[str, dict[str, torch.Tensor]] = {}

    @staticmethod
    def split(name: str) -> tuple[str, str] | None:
        """``(module, part)`` for a quantized tensor name, else ``None``."""
        module, _, part = name.rpartition(".")
        return (module, part) if part in _PARTS and is_quantized_linear(module + ".weight") else None

    def add(self, module: str, part: str, tensor: torch.Tensor, in_features: int) -> PortableWeight | None:
        """Record one part; the portable weight once the module's parts are complete."""
        parts = self.pending.setdefault(module, {})
        parts[part] = tensor
        if "qweight" not in parts or "scales" not in parts:
            return None
        qweight, scales = parts["qweight"], parts["scales"]
        if qweight.dtype == torch.int8:
            weight = PortableWeight("int8", qweight.shape[0], in_features, 0, qweight, scales)
        else:
            if "zeros" not in parts:
                return None
            groups = scales.shape[1] if scales.dim() == 2 else 0
            group = qweight.shape[1] * 2 // groups if groups else 0
            weight = PortableWeight("int4", qweight.shape[0], in_features, group, qweight, scales, parts["zeros"])
        del self.pending[module]
        try:
            weight.check()
        except ValueError as exc:
            raise CheckpointError(f"{module}: {exc}; the quantized checkpoint is damaged, convert it again") from None
        return weight

    def incomplete(self) -> list[str]:
        return sorted(self.pending)


def _parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", text.upper())
    if match is None:
        raise CheckpointError(f"bad shard size {text!r}; write it like 2GB or 500MB")
    return int(float(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2)])


def write_quantized_checkpoint(
    tensors: Iterator[tuple[str, torch.Tensor]],
    config: dict[str, Any],
    target: Path,
    spec: QuantSpec,
    *,
    tokenizer: Path | None,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_size: str = "2GB",
) -> Path:
    """Write native-named ``tensors`` to ``target``, quantizing linear weights as they stream past.

    At most one shard's tensors are held at a time. Other tensors (embeddings, norms, biases)
    are stored in ``dtype``.
    """
    from safetensors.torch import save_file

    limit = _parse_size(max_shard_size)
    target.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "glm_agent_quantization": json.dumps(header(spec))}
    shard: dict[str, torch.Tensor] = {}
    written: list[tuple[str, list[str]]] = []
    size = 0

    def flush() -> None:
        nonlocal shard, size
        if not shard:
            return
        name = f"quantized-{len(written) + 1:05d}.safetensors"
        save_file(shard, str(target / name), metadata=meta)
        written.append((name, list(shard)))
        shard, size = {}, 0

    total = 0
    for name, tensor in tensors:
        if is_quantized_linear(name):
            portable = quantize(tensor, spec_for(name, spec))
            module = name.removesuffix(".weight")
            items = {f"{module}.qweight": portable.qweight, f"{module}.scales": portable.scales}
            if portable.zeros is not None:
                items[f"{module}.zeros"] = portable.zeros
        else:
            items = {name: tensor.to(dtype).contiguous()}
        nbytes = sum(t.numel() * t.element_size() for t in items.values())
        if shard and size + nbytes > limit:
            flush()
        shard.update(items)
        size += nbytes
        total += nbytes
    flush()
    names = [n for n, _ in written]
    final = [f"quantized-{i + 1:05d}-of-{len(names):05d}.safetensors" for i in range(len(names))]
    weight_map: dict[str, str] = {}
    for (old, keys), new in zip(written, final, strict=True):
        os.replace(target / old, target / new)
        weight_map.update(dict.fromkeys(keys, new))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (target / QUANTIZED_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    config = {**config, "quantization_config": header(spec), "torch_dtype": str(dtype).removeprefix("torch.")}
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if tokenizer is not None and tokenizer.is_file():
        shutil.copyfile(tokenizer, target / "tokenizer.model")
    else:
        logger.warning("the source has no tokenizer.model; copy it to %s before using LocalModel", target)
    return target
