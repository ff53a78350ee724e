"""bfloat16 linear layers on glm-agent's own CPU kernel for decoding (``glm_agent._cpu``).

``glm_bf16_matmul`` (``vdpbf16ps`` over four row-major weight rows at a time, each against four
activation rows per load) streams the weight faster than oneDNN's packed product
(``_packed_linear``) at decode shapes, and a row's result does not depend on the rows beside it: a
prompt's chunk joins the decoding rows of a step exactly. Measured at 6B shapes on 2 threads
(27392x4096 / 4096x13696): 4 rows cost 1.16x / 1.21x one row, 8 rows 1.42x / 1.51x, 16 rows
1.94x / 2.23x; against ``F.linear`` (oneDNN's GEMM) the kernel takes 0.83 / 0.66 of its time at
4 rows, 0.99 / 0.91 at 32 and 1.02 / 1.02 at 48. The weight stays a plain row-major tensor, so
``DENSE_MIN_ROWS`` rows or more (a prompt's full chunks) use ``F.linear`` on the same memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glm_agent._cpu.native import NativeKernels

__all__ = ["DENSE_MIN_ROWS", "NativeBf16Linear"]

DENSE_MIN_ROWS = 40  # rows at once from which F.linear is about as fast (measured at 6B shapes: see above)


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
