"""Portable int8 / int4 weight quantization: the math, independent of any kernel or CPU.

- ``int8``: symmetric, one scale per output row: ``w = q * scale``, ``q`` in [-127, 127].
- ``int4``: asymmetric, in groups of ``group_size`` along the input dimension:
  ``w = (q - 8) * scale + zero``, ``q`` in [0, 15], stored two per byte (the even column in the
  low nibble). The input dimension is padded with zero columns to a multiple of the group size.

Scales and zeros are bfloat16; quantization uses the rounded values, so dequantizing gives
exactly the weights the kernels compute with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

__all__ = ["SCHEMES", "QuantSpec", "PortableWeight", "quantize", "dequantize", "pack_nibbles", "unpack_nibbles"]

SCHEMES = ("int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)
_ROWS_PER_CHUNK = 1024  # rows quantized at a time: bounds the float32 temporaries


@dataclass(frozen=True)
class QuantSpec:
    """Which scheme a model's linear layers use (``group_size`` matters for int4 only)."""

    scheme: str
    group_size: int = 128

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown quantization {self.scheme!r}; use 'int8' or 'int4'")
        if self.scheme == "int4" and self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(
                f"int4 group size {self.group_size} is not supported; use one of {', '.join(map(str, INT4_GROUP_SIZES))}"
            )

    @property
    def label(self) -> str:
        return self.scheme if self.scheme == "int8" else f"int4 (group {self.group_size})"


@dataclass
class PortableWeight:
    """One quantized ``[out_features, in_features]`` matrix in the portable layout."""

    scheme: str
    out_features: int
    in_features: int
    group_size: int  # 0 for int8
    qweight: torch.Tensor  # int8 [N, K], or uint8 [N, Kp / 2] (two nibbles a byte)
    scales: torch.Tensor  # bfloat16 [N], or [N, Kp / group_size]
    zeros: torch.Tensor | None = None  # bfloat16 [N, Kp / group_size] (int4)

    @property
    def padded_in_features(self) -> int:
        return self.in_features if self.scheme == "int8" else self.qweight.shape[1] * 2

    @property
    def nbytes(self) -> int:
        tensors = [self.qweight, self.scales] + ([self.zeros] if self.zeros is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def check(self) -> None:
        """Raise ``ValueError`` when the tensors' shapes and dtypes do not fit the scheme."""
        n, k = self.out_features, self.in_features
        if self.scheme == "int8":
            ok = (
                self.qweight.dtype == torch.int8
                and tuple(self.qweight.shape) == (n, k)
                and tuple(self.scales.shape) == (n,)
                and self.zeros is None
            )
        elif self.scheme == "int4":
            g = self.group_size
            kp = -(-k // g) * g if g > 0 else -1
            ok = (
                g in INT4_GROUP_SIZES
                and self.qweight.dtype == torch.uint8
                and tuple(self.qweight.shape) == (n, kp // 2)
                and tuple(self.scales.shape) == (n, kp // g)
                and self.zeros is not None
                and tuple(self.zeros.shape) == (n, kp // g)
            )
        else:
            ok = False
        if not ok:
            shapes = {"qweight": self.qweight, "scales": self.scales, "zeros": self.zeros}
            described = ", ".join(f"{name} {tuple(t.shape)} {t.dtype}" for name, t in shapes.items() if t is not None)
            raise ValueError(
                f"inconsistent {self.scheme} weight for a [{n}, {k}] matrix (group {self.group_size}): {described}"
            )


def quantize(weight: torch.Tensor, spec: QuantSpec) -> PortableWeight:
    """The portable quantized form of a 2-D weight (any float dtype; computed in float32, row chunk by chunk)."""
    if weight.dim() != 2:
        raise ValueError(f"only matrices can be quantized, not a tensor of shape {tuple(weight.shape)}")
    if spec.scheme == "int8":
        return _quantize_int8(weight)
    return _quantize_int4(weight, spec.group_size)


def _quantize_int8(weight: torch.Tensor) -> PortableWeight:
    n, k = weight.shape
    qweight = torch.empty((n, k), dtype=torch.int8)
    scales = torch.empty(n, dtype=torch.bfloat16)
    for start in range(0, n, _ROWS_PER_CHUNK):
        w = weight[start : start + _ROWS_PER_CHUNK].to(device="cpu", dtype=torch.float32)
        scale = (w.abs().amax(dim=1) / 127).to(torch.bfloat16)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero row stays zero
        scales[start : start + len(w)] = scale
        qweight[start : start + len(w)] = torch.round(w / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return PortableWeight("int8", n, k, 0, qweight, scales)


def _quantize_int4(weight: torch.Tensor, group_size: int) -> PortableWeight:
    n, k = weight.shape
    kp = -(-k // group_size) * group_size
    groups = kp // group_size
    qweight = torch.empty((n, kp // 2), dtype=torch.uint8)
    scales = torch.empty((n, groups), dtype=torch.bfloat16)
    zeros = torch.empty((n, groups), dtype=torch.bfloat16)
    for start in range(0, n, _ROWS_PER_CHUNK):
        w = weight[start : start + _ROWS_PER_CHUNK].to(device="cpu", dtype=torch.float32)
        rows = len(w)
        if kp != k:
            w = torch.nn.functional.pad(w, (0, kp - k))
        w = w.view(rows, groups, group_size)
        low, high = w.amin(dim=-1), w.amax(dim=-1)
        scale = ((high - low) / 15).to(torch.bfloat16)
        zero = (low + 8 * scale.float()).to(torch.bfloat16)  # the value of q = 8 (a constant group: that value)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = torch.round((w - zero.float()[..., None]) / scale.float()[..., None] + 8).clamp_(0, 15)
        qweight[start : start + rows] = pack_nibbles(q.view(rows, kp).to(torch.uint8))
        scales[start : start + rows] = scale
        zeros[start : start + rows] = zero
    return PortableWeight("int4", n, k, group_size, qweight, scales, zeros)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` values in [0, 15] as ``[N, K / 2]`` bytes, the even column in the low nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_nibbles`: ``[N, K / 2]`` bytes as ``[N, K]`` uint8 values."""
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).view(packed.shape[0], -1)


def dequantize(p: PortableWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``[out_features, in_features]`` matrix that ``p`` stands for, in ``dtype`` (computed in float32)."""
    if p.scheme == "int8":
        return (p.qweight.float() * p.scales.float()[:, None]).to(dtype)
    assert p.zeros is not None
    n, g = p.out_features, p.group_size
    q = unpack_nibbles(p.qweight).float().view(n, -1, g)
    w = (q - 8) * p.scales.float()[..., None] + p.zeros.float()[..., None]
    return w.view(n, -1)[:, : p.in_features].to(dtype)
