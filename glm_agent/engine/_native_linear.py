"""bfloat16 linear layers on glm-agent's own CPU kernel for decoding (``glm_agent._cpu``).

``glm_bf16_matmul`` (``vdpbf16ps`` over four row-major rows at a time) streams the weight faster
than oneDNN's packed product (``_packed_linear``) at decode shapes; the measured figures are in
``glm_agent/_cpu/native.py``. The weight stays a plain row-major tensor, so prompts of
``DENSE_MIN_ROWS`` rows or more use ``F.linear`` (oneDNN's GEMM) on the same memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glm_agent._cpu.native import NativeKernels

__all__ = ["DENSE_MIN_ROWS", "NativeBf16Linear"]

DENSE_MIN_ROWS = 8  # rows at once from which F.linear is as fast or faster (measured at 6B shapes)


class NativeBf16Linear:
    """``y = x W^T + b`` over a row-major bfloat16 weight: the kernel for few rows, ``F.linear`` for many."""

    def __init__(self, kernels: NativeKernels, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.kernels = kernels
        self.weight = weight.detach().contiguous()
        self.bias = bias.detach() if bias is not None else None
        self.out_features, self.in_features = self.weight.shape

    @staticmethod
    def fits(weight: torch.Tensor) -> bool:
        """Whether the kernel takes this weight (bfloat16 on CPU, rows by 4, inputs by 32)."""
        n, k = weight.shape
        return weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and n % 4 == 0 and k % 32 == 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] >= DENSE_MIN_ROWS or flat.dtype != torch.bfloat16:
            return F.linear(x, self.weight, self.bias)
        out = self.kernels.bf16_matmul(self.weight, flat.contiguous())
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features)
