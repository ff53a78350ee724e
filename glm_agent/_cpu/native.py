"""glm-agent's own CPU kernels (``kernels.c``): built at first use, loaded with ctypes.

torch's CPU int4 kernel dequantizes in float32 and reads about 20-22 GB/s at ChatGLM3-6B's
shapes on 2 AVX-512 cores, and its int8 kernel about 18-22: decoding is bound by arithmetic, not
memory. Ours round the activations to int8 per block of 32 (llama.cpp's q8_0) and multiply them by
the codes with AVX-512 VNNI (``vpdpbusd``: 64 products an instruction, 16 weight rows per register;
int4 codes unpacked with 3 instructions per 128), applying scales (and int4's zeros) once per block
and group. One row reads 39-48 GB/s on one int4 matrix (the bfloat16-activation kernel before it
33) and 35 on an int8 one (the float32 kernel before it 19-22); 4 rows cost 1.3x one row in int4
and 1.15x in int8 (were 2.0-2.4x and 1.4-1.6x), and 128 rows beat the dequantized bfloat16 product
by 2-4x, so the kernels do prefill too. Both stream the weights in one pass over a layout
made at load (see the C file). ``bf16_matmul`` does the same for plain bfloat16 weights (30-35 GB/s,
oneDNN's packed product 24-27; each weight vector loaded once for 4 activation rows, so 4 rows cost
1.2x one row and up to 32 rows match oneDNN's dense product), and the ``*_dequantize`` loops give
the weights back in bfloat16.

The kernels are compiled with the system C compiler (``$CC``, else ``cc``/``gcc``) into
``$XDG_CACHE_HOME/glm-agent/kernels`` (once per source and compiler) and used only where the
CPU has AVX-512 BF16 and VNNI and torch dispatches to AVX-512. Without a compiler, or with
``GLM_AGENT_NATIVE_KERNELS=0``, quantized and bfloat16 layers use torch's kernels (and oneDNN's
packed bfloat16 product): slower, same results up to summation order.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from glm_agent._cpu.memory import advise_huge_pages

logger = logging.getLogger(__name__)

__all__ = ["NativeKernels", "native_kernels", "tile_int4", "tile_int8", "untile_groups", "untile_int4", "untile_int8"]

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mavx512vnni", "-fopenmp", "-fPIC", "-shared")
ROWS = 4  # rows per tile of the bfloat16 kernel (ROWS in the C file)
PANEL_ROWS = 16  # rows per panel of the int4 and int8 layouts (PANEL in the C file)
CHUNK = 64  # inputs per step of the stream
_TILE_ROWS_AT_ONCE = 4096  # rows re-laid out at a time (bounds the unpacked temporaries)


class NativeKernels:
    """The loaded kernels: products over paneled int4/int8 and plain bfloat16 weights, and dequantization."""

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self._int4 = library.glm_int4_matmul
        self._int4.restype = ctypes.c_int
        self._int4.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 4 + [ctypes.c_int, ctypes.c_int]
        self._int8 = library.glm_int8_matmul
        self._int8.restype = ctypes.c_int
        self._int8.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int, ctypes.c_int]
        self._bf16 = library.glm_bf16_matmul
        self._bf16.restype = None
        self._bf16.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int]
        self._int4_dequantize = library.glm_int4_dequantize
        self._int4_dequantize.restype = None
        self._int4_dequantize.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 4 + [ctypes.c_int]
        self._int8_dequantize = library.glm_int8_dequantize
        self._int8_dequantize.restype = None
        self._int8_dequantize.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int]

    def int4_matmul(
        self,
        q: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        x: torch.Tensor,
        group: int,
        out_rows: int,
        out_dtype: torch.dtype = torch.bfloat16,
    ) -> torch.Tensor:
        """``x W^T`` for contiguous bfloat16 ``x [M, K]``: ``[M, out_rows]`` in ``out_dtype`` (bfloat16 or float32)."""
        rows, k, out = self._prepare("int4", q, x, out_dtype)
        status = self._int4(
            q.data_ptr(),
            scales.data_ptr(),
            zeros.data_ptr(),
            x.data_ptr(),
            out.data_ptr(),
            rows,
            out.shape[1],
            k,
            group,
            int(out_dtype == torch.bfloat16),
            torch.get_num_threads(),
        )
        return self._finish(status, out, out_rows)

    def int8_matmul(
        self,
        q: torch.Tensor,
        scales: torch.Tensor,
        x: torch.Tensor,
        out_rows: int,
        out_dtype: torch.dtype = torch.bfloat16,
    ) -> torch.Tensor:
        """``x W^T`` over tiled int8 weights with one bfloat16 scale per (padded) row; as :meth:`int4_matmul`."""
        rows, k, out = self._prepare("int8", q, x, out_dtype)
        status = self._int8(
            q.data_ptr(),
            scales.data_ptr(),
            x.data_ptr(),
            out.data_ptr(),
            rows,
            out.shape[1],
            k,
            int(out_dtype == torch.bfloat16),
            torch.get_num_threads(),
        )
        return self._finish(status, out, out_rows)

    def bf16_matmul(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x W^T`` for a contiguous bfloat16 ``W [N, K]`` (N a multiple of 4, K of 32) and ``x [M, K]``."""
        n, k = weight.shape
        if weight.dtype != torch.bfloat16 or not weight.is_contiguous() or n % ROWS or k % 32:
            raise ValueError("the bfloat16 kernel takes a contiguous bfloat16 weight, rows by 4, inputs by 32")
        if x.dtype != torch.bfloat16 or not x.is_contiguous() or x.dim() != 2 or x.shape[1] != k:
            raise ValueError(f"the bfloat16 kernel takes contiguous bfloat16 [M, {k}] inputs")
        out = torch.empty((x.shape[0], n), dtype=torch.bfloat16)
        self._bf16(weight.data_ptr(), x.data_ptr(), out.data_ptr(), x.shape[0], n, k, torch.get_num_threads())
        return out

    def int4_dequantize(
        self, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, first_tile: int, tiles: int, group: int
    ) -> torch.Tensor:
        """Rows of panels ``[first_tile, first_tile + tiles)`` as bfloat16 ``[16 * tiles, K]`` (for dense prefill)."""
        k, out = self._dequantized_rows(q, first_tile, tiles)
        self._int4_dequantize(
            q.data_ptr(),
            scales.data_ptr(),
            zeros.data_ptr(),
            out.data_ptr(),
            first_tile,
            tiles,
            k,
            group,
            torch.get_num_threads(),
        )
        return out

    def int8_dequantize(self, q: torch.Tensor, scales: torch.Tensor, first_tile: int, tiles: int) -> torch.Tensor:
        """As :meth:`int4_dequantize`, for the tiled int8 weight."""
        k, out = self._dequantized_rows(q, first_tile, tiles)
        self._int8_dequantize(
            q.data_ptr(), scales.data_ptr(), out.data_ptr(), first_tile, tiles, k, torch.get_num_threads()
        )
        return out

    @staticmethod
    def _dequantized_rows(q: torch.Tensor, first_tile: int, tiles: int) -> tuple[int, torch.Tensor]:
        """The input size and an empty bfloat16 ``[16 * panels, K]`` for panels ``[first_tile, first_tile + tiles)``."""
        if not 0 <= first_tile <= first_tile + tiles <= q.shape[0]:
            raise ValueError(f"tiles [{first_tile}, {first_tile + tiles}) are not within the weight's {q.shape[0]}")
        k = q.shape[1] * CHUNK
        return k, torch.empty((tiles * PANEL_ROWS, k), dtype=torch.bfloat16)

    @staticmethod
    def _prepare(
        scheme: str, q: torch.Tensor, x: torch.Tensor, out_dtype: torch.dtype
    ) -> tuple[int, int, torch.Tensor]:
        rows, k = x.shape
        if x.dtype != torch.bfloat16 or not x.is_contiguous() or k != q.shape[1] * CHUNK:
            raise ValueError(f"the {scheme} kernel takes contiguous bfloat16 [M, {q.shape[1] * CHUNK}] inputs")
        if out_dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"the {scheme} kernel writes bfloat16 or float32, not {out_dtype}")
        return rows, k, torch.empty((rows, q.shape[0] * PANEL_ROWS), dtype=out_dtype)

    @staticmethod
    def _finish(status: int, out: torch.Tensor, out_rows: int) -> torch.Tensor:
        if status:
            raise MemoryError("a glm-agent CPU kernel could not allocate its scratch memory")
        return out if out.shape[1] == out_rows else out[:, :out_rows]


def tile_int8(q: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 kernel's layout: ``q [N, K]`` (K a multiple of 64) as uint8 ``[panels, K / 64, 16, 64]``, scales padded.

    In each 64 bytes, byte ``4 j + i`` holds row ``j``'s input ``4 s + i`` plus 128 (the kernel's
    products take unsigned codes). Padding rows are zero weights with scale 1.
    """
    rows, cols = q.shape
    padded = -(-rows // PANEL_ROWS) * PANEL_ROWS
    tiled = _empty_weight((padded // PANEL_ROWS, cols // CHUNK, PANEL_ROWS, CHUNK), torch.uint8)
    for start in range(0, padded, _TILE_ROWS_AT_ONCE):
        end = min(start + _TILE_ROWS_AT_ONCE, padded)
        part = q[start : min(end, rows)]
        if part.shape[0] < end - start:
            part = torch.nn.functional.pad(part, (0, 0, 0, end - start - part.shape[0]))
        unsigned = part.view(torch.uint8) ^ 0x80  # two's complement plus 128
        steps = unsigned.view(-1, PANEL_ROWS, cols // 4, 4).permute(0, 2, 1, 3)  # [panels, step s, row j, i]
        tiled[start // PANEL_ROWS : end // PANEL_ROWS] = steps.reshape(-1, cols // CHUNK, PANEL_ROWS, CHUNK)
    padded_scales = torch.nn.functional.pad(scales.to(torch.bfloat16), (0, padded - rows), value=1.0)
    return tiled, padded_scales.contiguous()


def untile_int8(q: torch.Tensor, start_tile: int = 0, end_tile: int | None = None) -> torch.Tensor:
    """Codes ``int8 [16 * panels, K]`` of panels ``[start_tile, end_tile)`` (the inverse of :func:`tile_int8`)."""
    part = q[start_tile:end_tile]
    panels, chunks = part.shape[0], part.shape[1]
    steps = (part ^ 0x80).view(torch.int8).reshape(panels, chunks * CHUNK // 4, PANEL_ROWS, 4)
    return steps.permute(0, 2, 1, 3).reshape(panels * PANEL_ROWS, chunks * CHUNK)


def tile_int4(
    values_of: Callable[[int, int], torch.Tensor], rows: int, cols: int, scales: torch.Tensor, zeros: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel's layout from a function ``values_of(start, end) -> uint8 [end - start, cols]`` of codes.

    ``cols`` is a multiple of 64 and of the group size; rows are padded to a multiple of 16
    with zero weights. Returns ``(q [panels, cols / 64, 8, 64], scales, zeros [panels, G, 16] bfloat16)``:
    in each 64 bytes, byte ``4 j + i`` holds row ``j``'s input ``8 b + i`` (low nibble) and ``8 b + 4 + i``.
    """
    padded = -(-rows // PANEL_ROWS) * PANEL_ROWS
    q = _empty_weight((padded // PANEL_ROWS, cols // CHUNK, 8, CHUNK), torch.uint8)
    for start in range(0, padded, _TILE_ROWS_AT_ONCE):
        end = min(start + _TILE_ROWS_AT_ONCE, padded)
        values = values_of(start, min(end, rows))
        if values.shape[0] < end - start:  # zero rows: code 8 with scale 1 and zero 0
            values = torch.nn.functional.pad(values, (0, 0, 0, end - start - values.shape[0]), value=8)
        v = values.view(-1, PANEL_ROWS, cols // 8, 2, 4)  # [panels, row j, block b, half, i]
        packed = v[:, :, :, 0] | (v[:, :, :, 1] << 4)  # [panels, j, b, i]
        q[start // PANEL_ROWS : end // PANEL_ROWS] = packed.permute(0, 2, 1, 3).reshape(-1, cols // CHUNK, 8, CHUNK)
    return q, _tile_groups(scales, padded, 1.0), _tile_groups(zeros, padded, 0.0)


def _empty_weight(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor for a weight, on huge pages where the kernel grants them (see ``advise_huge_pages``)."""
    weight = torch.empty(shape, dtype=dtype)
    advise_huge_pages(weight.data_ptr(), weight.numel() * weight.element_size())
    return weight


def _tile_groups(t: torch.Tensor, padded: int, fill: float) -> torch.Tensor:
    rows, groups = t.shape
    t = t.to(torch.bfloat16)
    if padded != rows:
        t = torch.nn.functional.pad(t, (0, 0, 0, padded - rows), value=fill)
    return t.view(padded // PANEL_ROWS, PANEL_ROWS, groups).transpose(1, 2).contiguous()


def untile_int4(q: torch.Tensor, start_tile: int = 0, end_tile: int | None = None) -> torch.Tensor:
    """Codes ``uint8 [16 * panels, cols]`` of panels ``[start_tile, end_tile)`` (the inverse of :func:`tile_int4`)."""
    part = q[start_tile:end_tile]  # [panels, chunks, 8, 64]
    panels, chunks = part.shape[0], part.shape[1]
    blocks = part.reshape(panels, chunks * 8, PANEL_ROWS, 4)  # [panels, block b, row j, i]
    values = torch.stack((blocks & 0x0F, blocks >> 4), dim=3)  # [panels, b, j, half, i]
    return values.permute(0, 2, 1, 3, 4).reshape(panels * PANEL_ROWS, chunks * CHUNK)


def untile_groups(t: torch.Tensor) -> torch.Tensor:
    """Per-group values ``[rows, G]`` from the kernel's ``[panels, G, rows per panel]``."""
    return t.transpose(1, 2).reshape(-1, t.shape[1])


@functools.cache
def native_kernels() -> NativeKernels | None:
    """The kernels when they can run here (built on first use), else ``None`` (the reason is logged once)."""
    reason = _unavailable_reason()
    if reason is None:
        try:
            path = _build()
            library = ctypes.CDLL(str(path))
            if not library.glm_cpu_supported():
                reason = "this CPU lacks AVX-512 BF16 or VNNI"
            else:
                return NativeKernels(library, path)
        except (OSError, subprocess.SubprocessError, _BuildError) as error:
            reason = str(error)
    logger.info("glm-agent's CPU kernels are off (%s): quantized and bfloat16 layers use torch's", reason)
    return None


def _unavailable_reason() -> str | None:
    if os.environ.get("GLM_AGENT_NATIVE_KERNELS", "1") == "0":
        return "GLM_AGENT_NATIVE_KERNELS=0"
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        return f"it is built for x86-64 Linux, not {sys.platform} {platform.machine()}"
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    if not (capability.startswith("AVX512") or capability == "AMX"):
        return f"torch dispatches to {capability} here, not AVX-512"
    return None


class _BuildError(RuntimeError):
    pass


def _compiler() -> str:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc")):
        found = shutil.which(name)
        if found:
            return found
    raise _BuildError("no C compiler found (install gcc, or set CC)")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "glm-agent" / "kernels"


def _build() -> Path:
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + version.encode()).hexdigest()[:16]
    target = _cache_dir() / f"cpu_kernels-{digest}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        done = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True, timeout=300
        )
        if done.returncode:
            raise _BuildError(f"{Path(compiler).name} failed: {done.stderr.strip()[-500:]}")
        os.replace(built, target)  # atomic: concurrent builders end with one complete file
    logger.info("built glm-agent's CPU kernels at %s", target)
    return target
