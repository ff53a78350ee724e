"""bfloat16 linear layers pre-packed for oneDNN: the CPU decode path where glm-agent's own kernel cannot run.

``F.linear`` on bfloat16 CPU tensors pays a large fixed cost per call on top of the product
(oneDNN sets up the product for a plain row-major weight each time): measured at ChatGLM3-6B's
shapes on 2 cores, one token's qkv product (4608x4096) took 8.0 ms through ``F.linear`` and
1.2 ms pre-packed; gate/up (27392x4096) 13.8 ms and 7.1 ms; down (4096x13696) 6.8 and 4.4 ms.
Results are identical (same kernel). Packing reorders each weight once into oneDNN's blocked
layout (``torch.ops.mkldnn._reorder_linear_weight``) and replaces the ``nn.Linear`` by a
:class:`PackedLinear` whose forward runs ``torch.ops.mkldnn._linear_pointwise``; the model's own
forward keeps working, ``save_pretrained`` does not (the lean engine's ``relayout`` contract).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["PackedLinear", "RowSlice", "packing_available", "pack_linear"]


def packing_available(dtype: torch.dtype) -> bool:
    """Whether bfloat16 weights can be packed for oneDNN on this CPU (AVX-512 with bf16 support)."""
    if dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    ops = torch.ops.mkldnn
    try:
        return bool(ops._is_mkldnn_bf16_supported()) and hasattr(ops, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(torch.nn.Module):
    """``y = x W^T + b`` over a weight held in oneDNN's blocked layout (same values as the ``nn.Linear`` it replaces)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = (int(n) for n in weight.shape)
        self.dtype = weight.dtype
        self.packed: torch.Tensor
        self.bias: torch.nn.Parameter | None
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1), persistent=False)
        self.register_parameter(
            "bias", torch.nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != self.dtype:
            flat = flat.to(self.dtype)
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            flat.contiguous(), self.packed, self.bias, "none", [None], ""
        )
        return out.view(*x.shape[:-1], self.out_features)


class RowSlice(torch.nn.Module):
    """Rows ``[start, end)`` of another layer's output: q, k and v as parts of one fused packed product.

    Only the model's own forward calls these (three fused products where one would do); the
    lean engine calls the fused layer once.
    """

    def __init__(self, fused: PackedLinear, start: int, end: int) -> None:
        super().__init__()
        self.fused = fused
        self.start, self.end = start, end
        self.in_features, self.out_features = fused.in_features, end - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fused(x)[..., self.start : self.end]
        return out


def pack_linear(owner: Any, name: str) -> PackedLinear:
    """Replace ``owner.<name>`` (an ``nn.Linear``) by its packed twin; returns the new module."""
    linear = getattr(owner, name)
    packed = PackedLinear(linear.weight, linear.bias)
    setattr(owner, name, packed)
    linear.weight = None  # in case someone else still holds the old module: its weight goes now
    return packed


def pack_fused_qkv(attn: Any) -> PackedLinear:
    """q, k and v as one packed product; the attention module's q/k/v become :class:`RowSlice` views of it."""
    current = attn.q_proj
    if isinstance(current, RowSlice):
        return current.fused
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    with torch.no_grad():
        weight = torch.cat([p.weight for p in projections], dim=0)
        has_bias = projections[0].bias is not None
        bias = torch.cat([p.bias for p in projections], dim=0) if has_bias else None
    fused = PackedLinear(weight, bias)
    del weight
    start = 0
    for name, p in zip(("q_proj", "k_proj", "v_proj"), projections, strict=True):
        end = start + p.weight.shape[0]
        setattr(attn, name, RowSlice(fused, start, end))
        p.weight = None
        start = end
    return fused
