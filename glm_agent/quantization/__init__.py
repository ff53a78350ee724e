"""int8 / int4 weights for CPU inference: the portable scheme, and ``QuantizedLinear`` over glm-agent's or torch's kernels."""

from __future__ import annotations

from glm_agent.quantization._linear import DEQUANTIZE_MIN_ROWS, QuantizedLinear, cpu_kernels_available, fast_cpu_kernels
from glm_agent.quantization._schemes import (
    SCHEMES,
    PortableWeight,
    QuantSpec,
    dequantize,
    pack_nibbles,
    quantize,
    unpack_nibbles,
)

__all__ = [
    "DEQUANTIZE_MIN_ROWS",
    "SCHEMES",
    "PortableWeight",
    "QuantSpec",
    "QuantizedLinear",
    "cpu_kernels_available",
    "dequantize",
    "fast_cpu_kernels",
    "pack_nibbles",
    "quantize",
    "unpack_nibbles",
]
