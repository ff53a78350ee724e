"""``QuantizedLinear``: a drop-in for ``nn.Linear`` over int8/int4 weights, on the fastest CPU kernels that are safe.

On CPU the portable weight is packed at load for this CPU's kernel: glm-agent's own AVX-512 BF16
kernels where they can be built (``glm_agent._cpu``, whose module says how much faster), else torch's ``_weight_int8pack_mm`` (int8, one scale per row) or
``_convert_weight_to_int4pack_for_cpu`` + ``_weight_int4pack_mm_for_cpu`` (int4 groups).
torch's kernels are guarded: in torch 2.13 the int8 kernel returns NaN, garbage or crashes when
the input dimension is not a multiple of 16 (measured on AVX-512), so such weights get zero
columns up to a multiple of 32 and the inputs are padded to match; the int4 packing needs rows
in multiples of 16 (we pad to 64, which keeps its blocked layout uniform). Elsewhere (another device, a torch without the kernels) the weight
stays portable and is dequantized for each product: slower, never wrong.

torch's kernels are matrix-vector engines: for many rows at once (prefill) they are 2-4x slower than
a bfloat16 matrix product (measured at 13696x4096, 600 rows), so products over at least
``DEQUANTIZE_MIN_ROWS`` rows dequantize the weight to the activations' dtype and use ``F.linear``.
glm-agent's kernels, which multiply int8-rounded activations with VNNI, are faster than that product
at every row count, so they take prefill too.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any

import torch
import torch.nn.functional as F

from glm_agent._cpu import native as _native
from glm_agent._cpu.memory import return_freed_memory
from glm_agent.quantization._schemes import PortableWeight, dequantize, pack_nibbles, unpack_nibbles

logger = logging.getLogger(__name__)

__all__ = ["QuantizedLinear", "cpu_kernels_available", "fast_cpu_kernels"]

_INT8_K_MULTIPLE = 32  # the int8 kernel's input dimension is padded to a multiple of this
_INT4_N_MULTIPLE = 64  # the int4 packing's row block on AVX-512
_DENSE_BLOCK_ROWS = 2048  # output rows dequantized at a time for a dense product (a multiple of 64)
DEQUANTIZE_MIN_ROWS = 64  # products over this many rows dequantize and use a dense product (kernels: 2.4-2.9x slower than bf16 at 64 rows)
# glm-agent's int4 and int8 kernels (int8 activations, VNNI) are faster than the dequantized bfloat16
# product at every row count measured, at 13696x4096 and 4096x13696 on 2 threads: int4 16 rows 3.0 vs
# 14.5 and 2.9 vs 46 ms, 128 rows 22 vs 44 and 22 vs 74 ms, 512 rows 88 vs 143 and 92 vs 173 ms; int8
# 16 rows 3.6 vs 18 and 3.4 vs 50 ms, 512 rows 81 vs 144 and 79 vs 181 ms (their products are 64 per
# instruction, bfloat16's 32). So they take prefill too, and every row is the row alone to the bit.
NATIVE_DEQUANTIZE_MIN_ROWS = sys.maxsize
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_warned: set[str] = set()


def cpu_kernels_available() -> bool:
    """Whether this torch has the CPU int8/int4 kernels."""
    return all(
        hasattr(torch, name)
        for name in ("_weight_int8pack_mm", "_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu")
    )


@functools.cache
def fast_cpu_kernels() -> bool:
    """Whether torch dispatches to its AVX-512 kernels here (the int8/int4 kernels are fast only there)."""
    capability = str(torch.backends.cpu.get_cpu_capability())
    return capability.upper().startswith("AVX512") or capability.upper() == "AMX"


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


class QuantizedLinear(torch.nn.Module):
    """``y = x W^T + b`` with ``W`` quantized; the bias (if any) stays in full precision.

    ``kernels=False`` keeps the portable weight and dequantizes it for each product (the
    reference path; any device).
    """

    def __init__(
        self,
        weight: PortableWeight,
        bias: torch.Tensor | None = None,
        *,
        device: str | torch.device = "cpu",
        kernels: bool = True,
    ) -> None:
        super().__init__()
        self.qweight: torch.Tensor
        self.scales: torch.Tensor
        self.zeros: torch.Tensor | None
        self.bias: torch.nn.Parameter | None
        weight.check()
        self.in_features = weight.in_features
        self.out_features = weight.out_features
        self.scheme = weight.scheme
        self.group_size = weight.group_size
        self.register_parameter("bias", torch.nn.Parameter(bias, requires_grad=False) if bias is not None else None)
        device = torch.device(device)
        self.backend = "dequantize"
        self._padded_in = weight.in_features
        self._padded_out = weight.out_features
        self._dense_min_rows = DEQUANTIZE_MIN_ROWS
        if kernels and device.type == "cpu" and cpu_kernels_available():
            if not fast_cpu_kernels():
                _warn_once(
                    "slow",
                    "this CPU has no AVX-512 (torch uses %s kernels): int8/int4 weights work, but their products "
                    "are slow; bfloat16 weights may decode faster here",
                    torch.backends.cpu.get_cpu_capability(),
                )
            self._pack_for_cpu(weight)
            return_freed_memory()  # the packing's temporaries, freed between live weights (see glm_agent._cpu.memory)
        else:
            self.register_buffer("qweight", weight.qweight.to(device))
            self.register_buffer("scales", weight.scales.to(device))
            self.register_buffer("zeros", weight.zeros.to(device) if weight.zeros is not None else None)
        self._scales_by_dtype: dict[torch.dtype, torch.Tensor] = {}

    def _pack_for_cpu(self, weight: PortableWeight) -> None:
        kernels = _native.native_kernels()
        if kernels is not None:
            self._pack_native(weight, kernels)
        elif weight.scheme == "int8":
            q = weight.qweight
            k = q.shape[1]
            if k % _INT8_K_MULTIPLE:
                self._padded_in = -(-k // _INT8_K_MULTIPLE) * _INT8_K_MULTIPLE
                q = F.pad(q, (0, self._padded_in - k))
            self.register_buffer("qweight", q.contiguous())
            self.register_buffer("scales", weight.scales.contiguous())
            self.register_buffer("zeros", None)
            self.backend = "int8_cpu"
        else:
            assert weight.zeros is not None
            self._padded_in = weight.padded_in_features
            rows = -(-weight.out_features // _INT4_N_MULTIPLE) * _INT4_N_MULTIPLE
            extra = rows - weight.out_features
            values = unpack_nibbles(weight.qweight).to(torch.int32)
            scales, zeros = weight.scales, weight.zeros
            if extra:  # zero rows (q = 8, zero = 0), cut from the output
                values = F.pad(values, (0, 0, 0, extra), value=8)
                scales = F.pad(scales, (0, 0, 0, extra), value=1.0)
                zeros = F.pad(zeros, (0, 0, 0, extra), value=0.0)
            self._padded_out = rows
            packed = torch._convert_weight_to_int4pack_for_cpu(values, 1)  # layout depends on this CPU
            del values
            scales_and_zeros = torch.stack((scales.t(), zeros.t()), dim=-1).contiguous()
            self.register_buffer("qweight", packed)
            self.register_buffer("scales", scales_and_zeros)  # [K / group, N, 2]
            self.register_buffer("zeros", None)
            self.backend = "int4_cpu"

    def _pack_native(self, weight: PortableWeight, kernels: _native.NativeKernels) -> None:
        """glm-agent's kernels' tiled layouts (input dimension padded to a multiple of 64 with zeros)."""
        self._native = kernels
        self._dense_min_rows = NATIVE_DEQUANTIZE_MIN_ROWS
        if weight.scheme == "int8":
            q = weight.qweight
            if q.shape[1] % _native.CHUNK:
                self._padded_in = -(-q.shape[1] // _native.CHUNK) * _native.CHUNK
                q = F.pad(q, (0, self._padded_in - q.shape[1]))
            tiled, scales = _native.tile_int8(q, weight.scales)
            self.register_buffer("qweight", tiled)  # [panels, K / 64, 16, 64]
            self.register_buffer("scales", scales)  # [panels * 16]
            self.register_buffer("zeros", None)
            self.backend = "int8_native"
        else:
            assert weight.zeros is not None
            codes = weight.qweight
            self._padded_in = -(-weight.padded_in_features // _native.CHUNK) * _native.CHUNK
            extra = (self._padded_in - weight.padded_in_features) // 2  # zero columns: code 8 in a zero group
            if extra:
                codes = F.pad(codes, (0, extra), value=0x88)
            groups = self._padded_in // weight.group_size - weight.scales.shape[1]
            tiled, scales, zeros = _native.tile_int4(
                lambda start, end: unpack_nibbles(codes[start:end]),
                weight.out_features,
                self._padded_in,
                F.pad(weight.scales, (0, groups), value=1.0),
                F.pad(weight.zeros, (0, groups), value=0.0),
            )
            self.register_buffer("qweight", tiled)  # [panels, K / 64, 8, 64]
            self.register_buffer("scales", scales)  # [panels, groups, 16]
            self.register_buffer("zeros", zeros)
            self.backend = "int4_native"
        self._padded_out = self.qweight.shape[0] * _native.PANEL_ROWS

    @property
    def kernel_build(self) -> str | None:
        """Which build of glm-agent's kernels computes the products (its source, flags and compiler), if any."""
        return self._native.path.stem if self.backend.endswith("_native") else None

    @property
    def weight_bytes(self) -> int:
        """Bytes read per product (weights, scales, zeros; not the bias)."""
        tensors = [t for t in (self.qweight, self.scales, self.zeros) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.scheme == "int4" else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}{group}, "
            f"backend={self.backend}, bias={self.bias is not None}"
        )

    def _scales_as(self, dtype: torch.dtype) -> torch.Tensor:
        scales = self._scales_by_dtype.get(dtype)
        if scales is None:
            scales = self.scales if self.scales.dtype == dtype else self.scales.to(dtype)
            self._scales_by_dtype[dtype] = scales
        return scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"QuantizedLinear needs float inputs, not {x.dtype}")
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if (
            self.backend == "dequantize"
            or x.dtype not in _KERNEL_DTYPES
            or (rows >= self._dense_min_rows and self._can_dequantize())
        ):
            if self.backend == "dequantize" or x.dtype not in _KERNEL_DTYPES:
                return F.linear(x, self.dequantized(x.dtype), self._bias_as(x.dtype))
            return self._dense_in_blocks(x)
        native = self.backend in ("int4_native", "int8_native")
        if native and x.dtype != torch.bfloat16:  # the kernels take bfloat16 only
            _warn_once(
                "native-dtype", "quantized products over %s activations dequantize (slow); use bfloat16", x.dtype
            )
            return self._dense_in_blocks(x)
        flat = x.reshape(-1, x.shape[-1])
        if self._padded_in != self.in_features:
            flat = F.pad(flat, (0, self._padded_in - self.in_features))
        flat = flat.contiguous()
        if self.backend == "int4_native":
            assert self.zeros is not None
            out = self._native.int4_matmul(
                self.qweight, self.scales, self.zeros, flat, self.group_size, self.out_features
            )
        elif self.backend == "int8_native":
            out = self._native.int8_matmul(self.qweight, self.scales, flat, self.out_features)
        elif self.backend == "int8_cpu":
            out = torch._weight_int8pack_mm(flat, self.qweight, self._scales_as(flat.dtype))
        else:
            out = torch._weight_int4pack_mm_for_cpu(flat, self.qweight, self.group_size, self._scales_as(flat.dtype))
            if self._padded_out != self.out_features:
                out = out[:, : self.out_features]
        out = out.reshape(*x.shape[:-1], self.out_features)
        bias = self._bias_as(out.dtype)
        return out if bias is None else out + bias

    def _bias_as(self, dtype: torch.dtype) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.to(dtype)

    def _can_dequantize(self) -> bool:
        return self.backend in ("int8_cpu", "int4_native", "int8_native") or _int4_layout_known()

    def portable(self) -> PortableWeight:
        """The weight in the portable layout (unpacked from this CPU's kernel layout where needed)."""
        if self.backend == "dequantize":
            return PortableWeight(
                self.scheme, self.out_features, self.in_features, self.group_size, self.qweight, self.scales, self.zeros
            )
        if self.backend == "int8_cpu":
            q = self.qweight[:, : self.in_features].contiguous()
            return PortableWeight("int8", self.out_features, self.in_features, 0, q, self.scales)
        n = self.out_features
        if self.backend == "int8_native":
            q = _native.untile_int8(self.qweight)[:n, : self.in_features].contiguous()
            return PortableWeight("int8", n, self.in_features, 0, q, self.scales[:n].contiguous())
        if self.backend == "int4_native":
            assert self.zeros is not None
            kp = -(-self.in_features // self.group_size) * self.group_size  # the portable padding
            return PortableWeight(
                "int4",
                n,
                self.in_features,
                self.group_size,
                pack_nibbles(_native.untile_int4(self.qweight)[:n, :kp]),
                _native.untile_groups(self.scales)[:n, : kp // self.group_size].contiguous(),
                _native.untile_groups(self.zeros)[:n, : kp // self.group_size].contiguous(),
            )
        if not _int4_layout_known():
            raise NotImplementedError("this CPU's int4 packing layout is not one glm-agent can unpack")
        values = _unpack_int4_cpu(self.qweight, self._padded_out, self._padded_in)[: self.out_features]
        scales_and_zeros = self.scales[:, : self.out_features]
        return PortableWeight(
            "int4",
            self.out_features,
            self.in_features,
            self.group_size,
            pack_nibbles(values),
            scales_and_zeros[..., 0].t().contiguous(),
            scales_and_zeros[..., 1].t().contiguous(),
        )

    def _dense_in_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b`` with ``W`` dequantized ``_DENSE_BLOCK_ROWS`` output rows at a time (bounded scratch memory)."""
        flat = x.reshape(-1, x.shape[-1])
        out = torch.empty((flat.shape[0], self.out_features), dtype=x.dtype)
        for start in range(0, self.out_features, _DENSE_BLOCK_ROWS):
            end = min(start + _DENSE_BLOCK_ROWS, self.out_features)
            torch.matmul(flat, self._dequantized_rows(start, end, x.dtype).t(), out=out[:, start:end])
        bias = self._bias_as(out.dtype)
        if bias is not None:
            out += bias
        return out.view(*x.shape[:-1], self.out_features)

    def _dequantized_rows(self, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
        """Output rows ``[start, end)`` of the weight in ``dtype`` (for torch's int4 packing ``start`` a multiple of 64)."""
        k = self.in_features
        if self.backend == "int8_cpu":
            return self.qweight[start:end, :k] * self._scales_as(dtype)[start:end, None]
        g = self.group_size
        if self.backend in ("int8_native", "int4_native"):
            first, last = start // _native.PANEL_ROWS, -(-end // _native.PANEL_ROWS)
            within = slice(start - first * _native.PANEL_ROWS, end - first * _native.PANEL_ROWS)  # of those tiles
            if dtype == torch.bfloat16:  # the kernels' own dequantization (about 10x torch ops')
                if self.backend == "int8_native":
                    w = self._native.int8_dequantize(self.qweight, self.scales, first, last - first)
                else:
                    assert self.zeros is not None
                    w = self._native.int4_dequantize(
                        self.qweight, self.scales, self.zeros, first, last - first, self.group_size
                    )
                return w[within, :k]
            if self.backend == "int8_native":
                q = _native.untile_int8(self.qweight, first, last)[within, :k]
                return q * self._scales_as(dtype)[start:end, None]
            values = _native.untile_int4(self.qweight, first, last)[within]
            assert self.zeros is not None
            scales = _native.untile_groups(self.scales[first:last])[within].to(dtype)
            zeros = _native.untile_groups(self.zeros[first:last])[within].to(dtype)
            w = (values.to(dtype).view(end - start, -1, g) - 8) * scales[..., None]
            w += zeros[..., None]
            return w.view(end - start, -1)[:, :k]
        rows = -(-(end - start) // _INT4_N_MULTIPLE) * _INT4_N_MULTIPLE
        per_row = self.qweight.numel() // self._padded_out
        packed = self.qweight.reshape(-1)[start * per_row : (start + rows) * per_row]
        values = _unpack_int4_cpu(packed, rows, self._padded_in)[: end - start]
        scales_and_zeros = self._scales_as(dtype)[:, start:end]  # [groups, rows, 2]
        w = (values.to(dtype).view(end - start, -1, g) - 8) * scales_and_zeros[..., 0].t()[..., None]
        w += scales_and_zeros[..., 1].t()[..., None]
        return w.view(end - start, -1)[:, :k]

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ``[out_features, in_features]`` weight in ``dtype``."""
        if self.backend == "int8_cpu":
            q = self.qweight if self._padded_in == self.in_features else self.qweight[:, : self.in_features]
            return q * self._scales_as(dtype)[:, None] if dtype != torch.float32 else dequantize(self.portable(), dtype)
        if self.backend in ("int4_native", "int8_native") and dtype != torch.float32:
            return self._dequantized_rows(0, self.out_features, dtype)
        if self.backend == "int4_cpu" and not _int4_layout_known():
            # an unknown packing: the kernel applied to the identity gives W^T (slow; for checks, not for speed)
            eye = torch.eye(self._padded_in, dtype=torch.float32)
            columns = torch._weight_int4pack_mm_for_cpu(
                eye, self.qweight, self.group_size, self._scales_as(torch.float32)
            )
            return columns[: self.in_features, : self.out_features].t().to(dtype)
        return dequantize(self.portable(), dtype)


def _unpack_int4_cpu(packed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``[rows, cols]`` uint8 values from the AVX-512 int4 packing (rows a multiple of 64).

    That layout is ``[rows / 64, cols, 32]`` bytes; byte ``(b, k, d)`` holds row ``64 b + d`` in its
    low nibble and row ``64 b + d + 32`` in its high nibble, column ``k``.
    """
    blocks = packed.reshape(rows // _INT4_N_MULTIPLE, cols, _INT4_N_MULTIPLE // 2)
    values = torch.cat((blocks & 0x0F, blocks >> 4), dim=2)  # [blocks, cols, 64]
    return values.permute(0, 2, 1).reshape(rows, cols)


@functools.cache
def _int4_layout_known() -> bool:
    """Whether :func:`_unpack_int4_cpu` inverts this CPU's packing (checked once on a probe matrix)."""
    if not cpu_kernels_available():
        return False
    probe = torch.randint(
        0, 16, (2 * _INT4_N_MULTIPLE, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(0)
    )
    try:
        packed = torch._convert_weight_to_int4pack_for_cpu(probe, 1)
        ok = bool(torch.equal(_unpack_int4_cpu(packed, *probe.shape).to(torch.int32), probe))
    except RuntimeError:
        ok = False
    if not ok:
        logger.info("unknown int4 packing on this CPU: prefill uses the int4 kernel (slower for long prompts)")
    return ok
