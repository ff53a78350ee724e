"""The basement: glm-agent's CPU kernels (``kernels.c``: int4, int8 and bfloat16 products and
dequantization on AVX-512 BF16), their build and loading (``native``), and the operating system's
side of CPU inference (``memory``: glibc's allocator, transparent huge pages).

Both ``quantization`` (quantized layers) and ``models`` (bfloat16 decoding, allocator settings)
build on it; it imports nothing of glm-agent's.
"""

from __future__ import annotations
