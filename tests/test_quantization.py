"""int8 / int4 weights: kernels at ChatGLM3's shapes, the guards, quantize-while-loading and the portable checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402

from glm_agent._cpu.native import (  # noqa: E402
    native_kernels,
    tile_int4,
    tile_int8,
    untile_groups,
    untile_int4,
    untile_int8,
)
from glm_agent.chatglm3 import ChatGLM3Tokenizer  # noqa: E402
from glm_agent.chatglm3.checkpoint import convert_checkpoint, load_model  # noqa: E402
from glm_agent.cli import main as cli_main  # noqa: E402
from glm_agent.errors import CheckpointError, ModelError  # noqa: E402
from glm_agent.models import LocalModel  # noqa: E402
from glm_agent.quantization import (  # noqa: E402
    DEQUANTIZE_MIN_ROWS,
    QuantizedLinear,
    QuantSpec,
    cpu_kernels_available,
    dequantize,
    pack_nibbles,
    quantize,
    unpack_nibbles,
)
from glm_agent.quantization._linear import _int4_layout_known as int4_layout_known  # noqa: E402
from tests._data import REPO  # noqa: E402
from tests._data import TINY_CHECKPOINT as TINY  # noqa: E402
from tests._data import needs_tiny_checkpoint as needs_tiny  # noqa: E402
from tests._native import needs_native  # noqa: E402

x86 = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="ATEN_CPU_CAPABILITY=avx2 is x86"
)
needs_kernels = pytest.mark.skipif(not cpu_kernels_available(), reason="this torch lacks the CPU int8/int4 kernels")
SPECS = [QuantSpec("int8"), QuantSpec("int4", 32), QuantSpec("int4", 128)]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris and in 北京? Answer briefly."}]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).abs().max() / ref.abs().max())


def kernel_reference(x: torch.Tensor, portable) -> torch.Tensor:
    """What the int4 and int8 kernels compute: x (padded) rounded to int8 per block of 32 inputs (scale
    max|x| / 127, as llama.cpp's q8_0) times the codes' part of the weight, plus for int4 the exact x
    times the zeros' part."""
    blocks = x.float().view(x.shape[0], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    codes = torch.round(blocks * torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, 0.0))  # as the C does
    rounded = (codes * (amax / 127.0)).view(x.shape)[:, : portable.in_features]
    if portable.scheme == "int8":
        return rounded @ dequantize(portable).t()
    zeros_part = dequantize(dataclasses.replace(portable, scales=torch.zeros_like(portable.scales)))
    exact = x.float()[:, : portable.in_features]
    return rounded @ (dequantize(portable) - zeros_part).t() + exact @ zeros_part.t()


# -- the scheme ------------------------------------------------------------------------------
def test_nibble_packing_round_trips_and_puts_the_even_column_low():
    values = torch.randint(0, 16, (48, 96), dtype=torch.uint8)
    packed = pack_nibbles(values)
    assert packed.shape == (48, 48) and packed.dtype == torch.uint8
    assert torch.equal(unpack_nibbles(packed), values)
    assert int(pack_nibbles(torch.tensor([[3, 12]]))[0, 0]) == 3 | (12 << 4)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_quantization_error_is_bounded_by_half_a_step(spec):
    weight = torch.randn(64, 4096) * 0.02
    portable = quantize(weight, spec)
    portable.check()
    restored = dequantize(portable)
    assert restored.shape == weight.shape
    if spec.scheme == "int8":
        step = portable.scales.float()[:, None]
    else:
        step = portable.scales.float().repeat_interleave(spec.group_size, dim=1)[:, :4096]
    assert bool(((restored - weight).abs() <= step * 0.5 + 1e-6 + step * 0.01).all())


def test_zero_rows_and_constant_groups_survive():
    weight = torch.zeros(16, 256)
    for spec in SPECS:
        assert torch.equal(dequantize(quantize(weight, spec)), weight), spec
    weight[1] = 0.013  # a constant int4 group keeps its value (rounded to bfloat16)
    for spec in SPECS[1:]:
        assert torch.equal(dequantize(quantize(weight, spec)), weight.bfloat16().float()), spec


def test_bad_specs_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="'int8' or 'int4'"):
        QuantSpec("int3")
    with pytest.raises(ValueError, match="32, 64, 128, 256"):
        QuantSpec("int4", 100)
    with pytest.raises(ValueError, match="only matrices"):
        quantize(torch.zeros(4), QuantSpec("int8"))


# -- kernels at ChatGLM3's shapes --------------------------------------------------------------
@needs_kernels
@pytest.mark.parametrize("k", [4096, 13696])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_kernels_match_the_dequantized_reference_at_chatglm3_shapes(spec, k):
    torch.manual_seed(k)
    weight = torch.randn(128, k) * 0.02
    portable = quantize(weight, spec)
    layer = QuantizedLinear(portable, torch.randn(128) * 0.01)
    assert layer.backend in (f"{spec.scheme}_cpu", f"{spec.scheme}_native")
    reference = dequantize(portable)
    for rows in (1, 5, DEQUANTIZE_MIN_ROWS):  # decode, a short chunk, the dequantizing prefill path
        x = torch.randn(rows, k)
        expected = x @ reference.t() + layer.bias
        assert relative_error(layer(x), expected) < 1e-5  # float32 activations: exact up to summation order
        assert relative_error(layer(x.bfloat16()), expected) < 2e-2
    # the portable form comes back out of this CPU's packing unchanged
    if spec.scheme == "int8" or int4_layout_known():
        again = layer.portable()
        assert torch.equal(again.qweight, portable.qweight) and torch.equal(again.scales, portable.scales)
    assert torch.allclose(layer.dequantized(), reference, atol=1e-6, rtol=0)


# -- glm-agent's int4/int8 kernels -----------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("k", [4096, 13696])
@pytest.mark.parametrize("group", [32, 64, 128, 256])
def test_native_int4_kernel_is_the_dequantized_product_at_chatglm3_shapes(group, k):
    torch.manual_seed(group + k)
    n = 4 * 9 + 3  # rows that do not fill the last tile of 4
    portable = quantize(torch.randn(n, k) * 0.02, QuantSpec("int4", group))
    layer = QuantizedLinear(portable)
    assert layer.backend == "int4_native"
    reference = dequantize(portable)
    kp = portable.padded_in_features
    for rows in (1, 3):
        x = torch.randn(rows, k).bfloat16()
        padded = torch.nn.functional.pad(x, (0, kp - k))
        exact = layer._native.int4_matmul(layer.qweight, layer.scales, layer.zeros, padded, group, n, torch.float32)
        assert relative_error(exact, kernel_reference(padded, portable)) < 1e-5  # exact up to summation order
        expected = x.float() @ reference.t()
        assert relative_error(exact, expected) < 2e-2  # the activations' rounding to 8 bits
        assert relative_error(layer(x), expected) < 2e-2  # the layer's output is bfloat16
    again = layer.portable()  # the kernel's layout gives the portable form back unchanged
    assert torch.equal(again.qweight, portable.qweight)
    assert torch.equal(again.scales, portable.scales) and torch.equal(again.zeros, portable.zeros)
    assert torch.equal(layer.dequantized(), reference)
    in_bf16 = layer.dequantized(torch.bfloat16)  # the kernel's dequantization: one rounding to bfloat16
    assert torch.allclose(in_bf16.float(), reference, rtol=2**-8, atol=0)
    assert torch.equal(layer._dequantized_rows(8, 24, torch.bfloat16), in_bf16[8:24])


@needs_native
@pytest.mark.parametrize("k", [4096, 13696])
@pytest.mark.parametrize("scheme", ["int4", "int8"])
def test_a_few_rows_at_once_are_each_the_one_row_product_to_the_bit(scheme, k):
    """Batched decoding: M = 1..16 rows in one call are the dequantized product, and each row's result
    is bit-identical to that row computed alone (a sequence decodes the same alone or in a batch)."""
    torch.manual_seed(k)
    n = 4 * 6 + 2
    portable = quantize(torch.randn(n, k) * 0.02, QuantSpec(scheme, 128) if scheme == "int4" else QuantSpec(scheme))
    layer = QuantizedLinear(portable)
    assert layer.backend == f"{scheme}_native"
    reference = dequantize(portable)
    padded_k = layer._padded_in if scheme == "int4" else layer.qweight.shape[1] * 64

    def product(x: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(x, (0, padded_k - k)).contiguous()
        if scheme == "int4":
            return layer._native.int4_matmul(layer.qweight, layer.scales, layer.zeros, padded, 128, n, torch.float32)
        return layer._native.int8_matmul(layer.qweight, layer.scales, padded, n, torch.float32)

    x = torch.randn(16, k).bfloat16()
    alone = torch.cat([product(x[i : i + 1]) for i in range(16)])
    for rows in range(1, 17):
        together = product(x[:rows])
        assert torch.equal(together, alone[:rows]), f"{rows} rows differ from the rows alone"
        expected = kernel_reference(torch.nn.functional.pad(x[:rows], (0, padded_k - k)), portable)
        assert relative_error(together, expected) < 1e-5
        assert relative_error(together, x[:rows].float() @ reference.t()) < 2e-2  # the activations' rounding


@needs_native
@pytest.mark.parametrize("k", [4096, 13696, 4100, 24])
def test_native_int8_kernel_is_the_dequantized_product(k):
    torch.manual_seed(k)
    n = 4 * 5 + 1
    portable = quantize(torch.randn(n, k) * 0.02, QuantSpec("int8"))
    layer = QuantizedLinear(portable, torch.randn(n) * 0.01)
    assert layer.backend == "int8_native"
    reference = dequantize(portable)
    padded_k = layer.qweight.shape[1] * 64
    for rows in (1, 3):
        x = torch.randn(rows, k).bfloat16()
        padded = torch.nn.functional.pad(x, (0, padded_k - k))
        exact = layer._native.int8_matmul(layer.qweight, layer.scales, padded, n, torch.float32)
        assert relative_error(exact, kernel_reference(padded, portable)) < 1e-5  # exact up to summation order
        expected = x.float() @ reference.t()
        assert relative_error(exact, expected) < 2e-2  # the activations' rounding to 8 bits
        assert relative_error(layer(x), expected + layer.bias) < 2e-2
    again = layer.portable()
    assert torch.equal(again.qweight, portable.qweight) and torch.equal(again.scales, portable.scales)
    assert torch.equal(layer.dequantized(), reference)
    assert torch.equal(layer.dequantized(torch.bfloat16), reference.bfloat16())
    with pytest.raises(ValueError, match="within"):
        layer._native.int8_dequantize(layer.qweight, layer.scales, 5, 2)
    rows = DEQUANTIZE_MIN_ROWS * 2 + 1  # a prompt's many rows
    x = torch.randn(rows, k).bfloat16()
    assert relative_error(layer(x), x.float() @ reference.t() + layer.bias) < 2e-2
    assert torch.equal(layer(x[5:6]), layer(x)[5:6])  # each row as alone


def test_int8_tiles_round_trip_with_padded_rows():
    q = torch.randint(-128, 128, (6, 128), dtype=torch.int8)
    tiled, scales = tile_int8(q, torch.rand(6).bfloat16())
    assert tiled.shape == (1, 2, 16, 64) and scales.shape == (16,)
    assert tiled[0, 1, 2, 4 * 3 + 1] == (int(q[3, 64 + 4 * 2 + 1]) + 128)  # row 3, input 73, unsigned
    assert torch.equal(untile_int8(tiled)[:6], q) and (untile_int8(tiled)[6:] == 0).all()
    more = torch.randint(-128, 128, (40, 64), dtype=torch.int8)
    tiled, _ = tile_int8(more, torch.ones(40))
    assert torch.equal(untile_int8(tiled, 1, 2), more[16:32])


@needs_native
@pytest.mark.parametrize("k", [4096, 13696])
def test_bf16_rows_at_once_are_each_the_one_row_product_to_the_bit(k):
    """Every row count the bfloat16 kernel takes (1 .. DENSE_MIN_ROWS - 1, whole passes of 4 rows and
    the rest): each row's result is bit-identical to that row alone, and the float32 product."""
    from glm_agent.engine._native_linear import DENSE_MIN_ROWS

    torch.manual_seed(k)
    weight = (torch.randn(4 * 5, k) * 0.02).bfloat16()
    x = torch.randn(DENSE_MIN_ROWS - 1, k).bfloat16()
    kernels = native_kernels()
    alone = torch.cat([kernels.bf16_matmul(weight, x[i : i + 1].contiguous()) for i in range(x.shape[0])])
    for rows in range(1, x.shape[0] + 1):
        together = kernels.bf16_matmul(weight, x[:rows].contiguous())
        assert torch.equal(together, alone[:rows]), f"{rows} rows differ from the rows alone"
    assert relative_error(alone, x.float() @ weight.float().t()) < 1e-2  # bfloat16 output


@needs_native
@pytest.mark.parametrize("n,k", [(4608, 4096), (4096, 13696)])
def test_native_bf16_kernel_matches_the_float32_product(n, k):
    from glm_agent.engine._native_linear import DENSE_MIN_ROWS, NativeBf16Linear

    torch.manual_seed(n)
    weight = (torch.randn(n, k) * 0.02).bfloat16()
    bias = torch.randn(n).bfloat16()
    layer = NativeBf16Linear(native_kernels(), weight, bias)
    for rows in (1, 3, DENSE_MIN_ROWS):  # the kernel, then F.linear
        x = torch.randn(rows, k).bfloat16()
        expected = x.float() @ weight.float().t() + bias.float()
        assert relative_error(layer(x), expected) < 1e-2  # bfloat16 output
    with pytest.raises(ValueError, match="rows by 4"):
        native_kernels().bf16_matmul(weight[:3], torch.randn(1, k).bfloat16())
    with pytest.raises(ValueError, match="inputs"):
        native_kernels().bf16_matmul(weight, torch.randn(1, k))
    assert not NativeBf16Linear.fits(weight[:, :40]) and not NativeBf16Linear.fits(weight.float())


def test_int4_tiles_round_trip_with_padded_rows():
    values = torch.randint(0, 16, (10, 128), dtype=torch.uint8)
    scales = torch.rand(10, 2).bfloat16()
    zeros = torch.rand(10, 2).bfloat16()
    q, s, z = tile_int4(lambda start, end: values[start:end], 10, 128, scales, zeros)
    assert q.shape == (1, 2, 8, 64) and s.shape == z.shape == (1, 2, 16)
    assert q[0, 0, 1, 4 * 3 + 2] == values[3, 8 + 2] | (values[3, 8 + 4 + 2] << 4)  # row 3, inputs 10 and 14
    assert torch.equal(untile_int4(q)[:10], values)
    assert (untile_int4(q)[10:] == 8).all()  # padding rows are zero weights: code 8, scale 1, zero 0
    assert torch.equal(untile_groups(s)[:10], scales) and (untile_groups(s)[10:] == 1).all()
    assert torch.equal(untile_groups(z)[:10], zeros) and (untile_groups(z)[10:] == 0).all()
    more = torch.randint(0, 16, (40, 64), dtype=torch.uint8)
    q, _, _ = tile_int4(lambda start, end: more[start:end], 40, 64, torch.ones(40, 1), torch.zeros(40, 1))
    assert torch.equal(untile_int4(q, 1, 2), more[16:32])


@needs_native
def test_native_int4_kernel_refuses_inputs_it_cannot_read():
    layer = QuantizedLinear(quantize(torch.randn(8, 128), QuantSpec("int4", 32)))
    args = (layer.qweight, layer.scales, layer.zeros)
    with pytest.raises(ValueError, match="bfloat16"):
        layer._native.int4_matmul(*args, torch.randn(1, 128), 32, 8)
    with pytest.raises(ValueError, match="bfloat16"):
        layer._native.int4_matmul(*args, torch.randn(1, 64).bfloat16(), 32, 8)
    with pytest.raises(ValueError, match="float32"):
        layer._native.int4_matmul(*args, torch.randn(1, 128).bfloat16(), 32, 8, torch.float16)
    # float32 activations are not the kernel's: the layer dequantizes, exactly
    x = torch.randn(2, 128)
    assert relative_error(layer(x), x @ dequantize(layer.portable()).t()) < 1e-5


_NATIVE_PROBE = (
    "import logging, torch\n"
    "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
    "from glm_agent.quantization import QuantizedLinear, QuantSpec, quantize, dequantize\n"
    "torch.manual_seed(0)\n"
    "p = quantize(torch.randn(16, 256), QuantSpec('int4', 64))\n"
    "layer = QuantizedLinear(p)\n"
    "x = torch.randn(1, 256).bfloat16()\n"
    "ref = x.float() @ dequantize(p).t()\n"
    # the activations rounded to int8 per block and a bfloat16 output: up to 1.5% of the largest output
    # in 300 random draws (1e-2 failed 6% of them)
    "assert float((layer(x).float() - ref).abs().max() / ref.abs().max()) < 3e-2\n"
    "print('backend', layer.backend)\n"
)


@needs_native
@pytest.mark.parametrize(
    "setting, reason",
    [
        ({"GLM_AGENT_NATIVE_KERNELS": "0"}, "GLM_AGENT_NATIVE_KERNELS=0"),
        ({"CC": "/nonexistent/cc", "PATH": "/nonexistent"}, "no C compiler found"),
        ({"CC": "false"}, "failed"),  # a compiler that fails
    ],
    ids=["switched-off", "no-compiler", "compiler-fails"],
)
def test_without_the_native_kernel_int4_uses_torchs_and_says_why(setting, reason, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path), **setting}
    if setting.get("CC") == "false":
        env["CC"] = shutil.which("false") or "false"
        env["PATH"] = str(Path(env["CC"]).parent)
    done = subprocess.run([sys.executable, "-c", _NATIVE_PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "backend int4_cpu" in done.stdout
    assert "CPU kernels are off" in done.stderr and "use torch's" in done.stderr and reason in done.stderr
    assert not list(tmp_path.rglob("*.so"))


@needs_native
def test_the_native_kernels_are_built_once_per_source_and_compiler(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path)}
    for expected in ("built glm-agent's CPU kernels", None):
        done = subprocess.run(
            [sys.executable, "-c", _NATIVE_PROBE], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert "backend int4_native" in done.stdout
        assert (expected in done.stderr) if expected else ("built" not in done.stderr)
    built = list((tmp_path / "glm-agent" / "kernels").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no scratch left behind


@needs_kernels
@pytest.mark.parametrize("k", [4100, 4104, 60, 24])
def test_int8_guard_pads_input_sizes_the_kernel_gets_wrong(k):
    """torch 2.13's int8 kernel gives NaN/garbage (or crashes) unless K is a multiple of 16."""
    torch.manual_seed(k)
    portable = quantize(torch.randn(96, k), QuantSpec("int8"))
    layer = QuantizedLinear(portable)
    for rows in (1, 3):
        x = torch.randn(rows, k, dtype=torch.bfloat16)
        out = layer(x)
        assert torch.isfinite(out).all()
        assert relative_error(out, x.float() @ dequantize(portable).t()) < 2e-2


@needs_kernels
@pytest.mark.parametrize("n,k", [(48, 64), (40, 160), (65024 // 1016, 100)])
def test_int4_guard_pads_rows_and_groups(n, k):
    portable = quantize(torch.randn(n, k), QuantSpec("int4", 128))
    layer = QuantizedLinear(portable)
    x = torch.randn(3, k)
    assert relative_error(layer(x), x @ dequantize(portable).t()) < 1e-5
    assert torch.allclose(layer.dequantized(), dequantize(portable), atol=1e-6, rtol=0)


def test_the_dequantizing_path_is_the_reference_on_any_device():
    portable = quantize(torch.randn(32, 64), QuantSpec("int4", 32))
    layer = QuantizedLinear(portable, kernels=False)
    assert layer.backend == "dequantize"
    x = torch.randn(2, 64, dtype=torch.float64)
    assert torch.allclose(layer(x), x @ dequantize(portable, torch.float64).t())
    with pytest.raises(TypeError, match="float inputs"):
        layer(torch.ones(2, 64, dtype=torch.long))


@needs_kernels
@x86
@pytest.mark.slow
def test_without_avx512_the_kernels_still_work_and_say_they_are_slow():
    """ATEN_CPU_CAPABILITY=avx2 makes torch use its AVX2 kernels (and their int4 packing) as on an older CPU."""
    code = (
        "import logging, torch\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "from glm_agent.quantization import QuantizedLinear, QuantSpec, quantize, dequantize\n"
        "torch.manual_seed(0)\n"
        "for spec in (QuantSpec('int8'), QuantSpec('int4', 128)):\n"
        "    p = quantize(torch.randn(64, 4096), spec)\n"
        "    layer = QuantizedLinear(p)\n"
        "    for rows in (1, 200):\n"
        "        x = torch.randn(rows, 4096)\n"
        "        ref = x @ dequantize(p).t()\n"
        "        err = float((layer(x) - ref).abs().max() / ref.abs().max())\n"
        "        assert err < 1e-5, (spec, rows, err)\n"
        "    assert torch.allclose(layer.dequantized(), dequantize(p), atol=1e-6, rtol=0)\n"
        "print('capability', torch.backends.cpu.get_cpu_capability())\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "capability AVX2" in done.stdout
    assert "no AVX-512" in done.stderr and "slow" in done.stderr


# -- the tiny checkpoint -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer() -> ChatGLM3Tokenizer:
    return ChatGLM3Tokenizer.from_pretrained(TINY)


def dequantized_twin(quantized_model, dtype=torch.float32):
    """The float model whose linear weights are exactly the quantized model's dequantized ones."""
    twin = load_model(TINY, dtype=dtype, device="cpu", progress=False)
    for name, module in quantized_model.named_modules():
        if isinstance(module, QuantizedLinear):
            twin.get_submodule(name).weight.data = module.dequantized(torch.float32).to(dtype)
    return twin


@needs_tiny
@needs_kernels
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
@pytest.mark.slow
def test_quantized_model_equals_float32_on_the_dequantized_weights(spec, tokenizer):
    model = load_model(
        TINY, dtype="float32", device="cpu", progress=False, quantize=spec.scheme, group_size=spec.group_size
    )
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert len(layers) == 2 * 4 + 2 * 2 + 1  # q, k, v, o per layer + gate_up, down per layer + the output layer
    assert layers["lm_head"].scheme == "int8"  # the output layer is int8 under both schemes
    assert {m.scheme for n, m in layers.items() if n != "lm_head"} == {spec.scheme}
    assert model.model.embed_tokens.weight.dtype == torch.float32
    twin = dequantized_twin(model)
    ids = torch.tensor([tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)])
    with torch.inference_mode():
        assert torch.allclose(model(ids).logits, twin(ids).logits, atol=1e-4, rtol=0)
    ours = LocalModel(model, tokenizer, temperature=0, max_new_tokens=24)
    reference = LocalModel(twin, tokenizer, temperature=0, max_new_tokens=24)
    assert "".join(ours.stream(MESSAGES)) == "".join(reference.stream(MESSAGES))
    assert ours.last_stats.output_ids == reference.last_stats.output_ids
    assert len(ours.last_stats.output_ids) == 24


@needs_tiny
@needs_kernels
@pytest.mark.slow
def test_from_pretrained_quantizes_in_bfloat16_and_the_cache_and_streaming_agree(tokenizer):
    model = LocalModel.from_pretrained(TINY, device="cpu", quantize="int4", group_size=32, temperature=0)
    assert model.model.model.embed_tokens.weight.dtype == torch.bfloat16  # the default with quantize
    fresh = LocalModel(model.model, tokenizer, prefix_cache=False, temperature=0)
    episode = [*MESSAGES]
    for turn in range(3):
        text = "".join(model.stream(episode, max_new_tokens=12))
        cached_ids = list(model.last_stats.output_ids)
        reused = model.last_stats.reused_tokens
        streamed = "".join(fresh.stream(episode, max_new_tokens=12))
        assert fresh.last_stats.output_ids == cached_ids
        assert streamed == text == tokenizer.decode(cached_ids)
        if turn:
            assert reused > 0
        episode += [{"role": "assistant", "content": text}, {"role": "user", "content": f"and turn {turn}?"}]


@needs_tiny
def test_quantize_refuses_device_map_and_bad_arguments():
    with pytest.raises(CheckpointError, match="device_map"):
        load_model(TINY, device_map="cpu", quantize="int8", progress=False)
    with pytest.raises(CheckpointError, match="'int8' or 'int4'"):
        load_model(TINY, device="cpu", quantize="int2", progress=False)
    with pytest.raises(CheckpointError, match="group size"):
        load_model(TINY, device="cpu", quantize="int4", group_size=96, progress=False)


# -- the portable checkpoint -------------------------------------------------------------------
@pytest.fixture(scope="module")
def int4_checkpoint(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("q") / "tiny-int4"
    assert cli_main(["convert", str(TINY), str(dst), "--quantize", "int4", "--group-size", "32"]) == 0
    return dst


@needs_tiny
def test_convert_writes_the_portable_layout_with_its_header(int4_checkpoint):
    config = json.loads((int4_checkpoint / "config.json").read_text())
    header = config["quantization_config"]
    assert header["quant_method"] == "glm-agent" and header["format_version"] == 1
    assert header["scheme"] == "int4" and header["group_size"] == 32 and header["output_layer"] == "int8"
    assert config["model_type"] == "glm" and (int4_checkpoint / "tokenizer.model").is_file()
    index = json.loads((int4_checkpoint / "quantized.safetensors.index.json").read_text())
    [shard] = set(index["weight_map"].values())
    with safe_open(str(int4_checkpoint / shard), framework="pt") as handle:
        assert json.loads(handle.metadata()["glm_agent_quantization"]) == header
        q = handle.get_tensor("model.layers.0.mlp.down_proj.qweight")
        assert q.dtype == torch.uint8 and q.shape == (64, 80)  # 160 inputs, two per byte
        assert handle.get_tensor("model.layers.0.mlp.down_proj.scales").dtype == torch.bfloat16
        assert handle.get_tensor("lm_head.qweight").dtype == torch.int8
        assert handle.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
        assert "model.layers.0.self_attn.q_proj.weight" not in set(handle.keys())


@needs_tiny
@needs_kernels
def test_a_converted_checkpoint_loads_as_quantizing_while_loading_does(int4_checkpoint, tokenizer):
    loaded = LocalModel.from_pretrained(int4_checkpoint, device="cpu", temperature=0, max_new_tokens=16)
    direct = LocalModel.from_pretrained(
        TINY, device="cpu", dtype="bfloat16", quantize="int4", group_size=32, temperature=0, max_new_tokens=16
    )
    for name, module in direct.model.named_modules():
        if isinstance(module, QuantizedLinear):
            other = loaded.model.get_submodule(name)
            assert torch.equal(other.dequantized(), module.dequantized()), name
    assert "".join(loaded.stream(MESSAGES)) == "".join(direct.stream(MESSAGES))
    # asking for the scheme it already has is fine; another one is not
    load_model(int4_checkpoint, device="cpu", quantize="int4", group_size=32, progress=False)
    with pytest.raises(CheckpointError, match="already quantized as int4"):
        load_model(int4_checkpoint, device="cpu", quantize="int8", progress=False)
    with pytest.raises(CheckpointError, match="already quantized"):
        convert_checkpoint(int4_checkpoint, int4_checkpoint.parent / "again", quantize="int8")


@needs_tiny
@needs_kernels
@x86
@pytest.mark.slow
def test_a_checkpoint_quantized_elsewhere_loads_on_a_cpu_with_other_kernels(int4_checkpoint, tokenizer):
    here = LocalModel.from_pretrained(int4_checkpoint, device="cpu", dtype="float32", temperature=0, max_new_tokens=16)
    expected = "".join(here.stream(MESSAGES))
    code = (
        "import sys, torch\n"
        "from glm_agent.models import LocalModel\n"
        "m = LocalModel.from_pretrained(sys.argv[1], device='cpu', dtype='float32', temperature=0, max_new_tokens=16)\n"
        "sys.stdout.write(''.join(m.stream([{'role': 'user', 'content': sys.argv[2]}])))\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(int4_checkpoint), MESSAGES[0]["content"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected


@needs_tiny
def test_damaged_or_foreign_quantized_checkpoints_say_what_to_do(int4_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(int4_checkpoint, broken)
    [shard] = list(broken.glob("*.safetensors"))
    tensors = load_file(str(shard))
    del tensors["model.layers.1.mlp.gate_up_proj.zeros"]
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match="lacks parts of model.layers.1.mlp.gate_up_proj; convert it again"):
        load_model(broken, device="cpu", progress=False)
    config = json.loads((broken / "config.json").read_text())
    config["quantization_config"]["format_version"] = 99
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_model(broken, device="cpu", progress=False)
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'gptq'"):
        load_model(broken, device="cpu", progress=False)


@needs_tiny
def test_plain_transformers_refuses_the_quantized_checkpoint(int4_checkpoint):
    import transformers

    with pytest.raises((ValueError, KeyError, RuntimeError, OSError)):
        transformers.GlmForCausalLM.from_pretrained(int4_checkpoint)


def test_quantize_is_for_local_weights_only():
    from glm_agent.models import load_chat_model

    with pytest.raises(ModelError, match="local weights only"):
        load_chat_model("http://127.0.0.1:9/v1", quantize="int8")


OPTIONS = ("--length", "256", "--stride", "128", "--max-windows", "3")


@needs_tiny
@needs_kernels
@pytest.mark.slow
def test_perplexity_script_compares_precisions_on_the_shipped_text():
    script = REPO / "benchmarks" / "perplexity.py"
    done = subprocess.run(
        [sys.executable, str(script), str(TINY), "--quantize", "int8", *OPTIONS],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["text"] == "tang300.txt" and report["text_tokens"] > 20000
    bf16, int8 = report["results"]["bf16"], report["results"]["int8"]
    assert bf16["windows"] == 3 and bf16["scored_tokens"] == 255 + 2 * 128
    assert math.isfinite(bf16["perplexity"]) and bf16["over_bf16"] == 1.0
    assert abs(int8["over_bf16"] - 1) < 0.005  # int8 within 0.5% of bf16, as on real weights


def test_strided_windows_score_every_token_once():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from perplexity import windows

    for total, length, stride in ((27521, 2048, 512), (10, 4, 2), (100, 128, 64), (129, 64, 32)):
        scored = [t for _, end, first in windows(total, length, stride) for t in range(first, end)]
        assert scored == list(range(1, total))
        assert all(end - start <= length for start, end, _ in windows(total, length, stride))


@needs_kernels
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_long_prompts_dequantize_in_row_blocks(spec, monkeypatch):
    from glm_agent.quantization import _linear

    monkeypatch.setattr(_linear, "_DENSE_BLOCK_ROWS", 64)
    portable = quantize(torch.randn(320, 160), spec)
    layer = QuantizedLinear(portable, torch.randn(320))
    x = torch.randn(DEQUANTIZE_MIN_ROWS + 3, 160)
    assert relative_error(layer(x), x @ dequantize(portable).t() + layer.bias) < 1e-5


@needs_native
def test_the_prompt_caches_fingerprint_counts_the_kernels_build():
    """Stored keys and values are reused only by the kernels that computed them (a new kernel is new numerics)."""
    from types import SimpleNamespace

    from glm_agent.engine._fingerprint import _weights_digest

    layer = QuantizedLinear(quantize(torch.randn(16, 64), QuantSpec("int4", 32)))
    model = torch.nn.Sequential(layer)
    assert layer.kernel_build == native_kernels().path.stem
    built_here = _weights_digest(model)
    layer._native = SimpleNamespace(path=Path("cpu_kernels-0123456789abcdef.so"))  # another source or compiler
    assert _weights_digest(model) != built_here


@needs_native
@pytest.mark.parametrize("spec", [QuantSpec("int4", 32), QuantSpec("int8")])
def test_the_kernels_keep_a_nan_or_infinity_in_the_activations_and_take_no_rows(spec):
    """Rounding activations to int8 must not turn a NaN or an infinity into a finite number."""
    portable = quantize(torch.randn(16, 128) * 0.02, spec)
    layer = QuantizedLinear(portable)
    x = torch.randn(3, 128).bfloat16()
    x[1, 40] = float("nan")
    x[2, 100] = float("inf")
    out = layer(x)
    assert torch.isfinite(out[0]).all()
    assert torch.isnan(out[1]).all() and not torch.isfinite(out[2]).all()
    assert layer(torch.empty(0, 128, dtype=torch.bfloat16)).shape == (0, 16)
