"""llama.cpp as a peer for the 6B decode benchmark: the same random weights as a GGUF file, decoded by
llama.cpp's own CPU kernels through node-llama-cpp's prebuilt binary (no compiler needed).

Conversion (what llama.cpp's ``convert_hf_to_gguf.py`` does for ChatGLM3, arch ``chatglm``, redone here on
tensors streamed one at a time from ``random_bf16_tensors_6b``, so the 12.5 GB bf16 model is never held):

- names: ``model.embed_tokens`` -> ``token_embd``, ``lm_head`` -> ``output`` (untied), ``model.norm`` ->
  ``output_norm``; per layer ``input_layernorm`` -> ``attn_norm``, q/k/v projections (weights and biases)
  concatenated in that order -> the fused ``attn_qkv`` (ChatGLM3's own ``query_key_value`` layout),
  ``o_proj`` -> ``attn_output``, ``post_attention_layernorm`` -> ``ffn_norm``, ``gate_up_proj`` (gate rows
  first, as ChatGLM3's ``dense_h_to_4h``) -> ``ffn_up`` (llama.cpp's swiglu takes silu of the first half),
  ``down_proj`` -> ``ffn_down``. No permutation: llama.cpp's chatglm rope rotates consecutive pairs of the
  first ``rope.dimension_count`` = 64 dims of each head, as transformers' Glm does.
- metadata: context 8192, rms eps 1e-5, rope base 10000, rope dims 64, no bos token; the genuine ChatGLM3
  vocabulary (65,024 rows) from ``tokenizer.model`` as the converter writes it for chatglm3 (tokenizer model
  ``llama``, pre-tokenizer ``chatglm-spm``, ids 0/1/2 named ``<unk>``/``<bos>``/``<eos>``, SentencePiece
  scores and types, the 9 special tokens CONTROL, padding rows ``[PADn]`` UNUSED, eos 2, pad 0).
- types: norms and biases F32. ``q8_0``: every matrix Q8_0, the token embedding and output layer included
  (as ``convert_hf_to_gguf.py --outtype q8_0``). ``q4_0``: every matrix Q4_0, the token embedding included
  (as ``llama-quantize Q4_0``), except the output layer, Q8_0: llama-quantize would make it Q6_K, which the
  ``gguf`` package cannot write; Q8_0 is also what our int4 model uses there. ``bf16``: exact weights (tests).
  Quantized with the ``gguf`` package's numpy quantizers (its Q8_0 is bit-exact with ggml's).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
#: where ``npm install`` puts node-llama-cpp (gitignored); GLM_AGENT_PEER_NODE_MODULES overrides
NODE_MODULES = Path(os.environ.get("GLM_AGENT_PEER_NODE_MODULES", HERE / ".peer" / "node_modules"))
NODE_LLAMA_CPP_VERSION = "3.22.1"
INSTALL_HINT = (
    "install node (>= 20) and node-llama-cpp's prebuilt CPU binary: "
    f"npm install --prefix {NODE_MODULES.parent} --omit=optional --ignore-scripts "
    f"node-llama-cpp@{NODE_LLAMA_CPP_VERSION} @node-llama-cpp/linux-x64@{NODE_LLAMA_CPP_VERSION}; "
    "and the gguf writer: pip install gguf"
)
SCRIPT = HERE / "llama_cpp_decode.mjs"

_TOP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_QKV = ("q_proj", "k_proj", "v_proj")
_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)")


class PeerUnavailable(RuntimeError):
    """node, node-llama-cpp or gguf is missing; the message says what to install."""


def check_available() -> Path:
    """The node executable, or PeerUnavailable saying what to install."""
    node = shutil.which("node")
    missing = []
    if node is None:
        missing.append("node is not on PATH")
    if not (NODE_MODULES / "node-llama-cpp" / "package.json").is_file():
        missing.append(f"node-llama-cpp is not installed under {NODE_MODULES}")
    try:
        import gguf  # noqa: F401
    except ImportError:
        missing.append("the gguf package is not installed")
    if missing:
        raise PeerUnavailable(f"--peer llama.cpp: {'; '.join(missing)}. To fix: {INSTALL_HINT}")
    assert node is not None
    return Path(node)


def gguf_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """GlmForCausalLM parameters renamed (and q/k/v fused) into llama.cpp's chatglm layout, in stream order."""
    pending: dict[tuple[str, str, str], torch.Tensor] = {}  # (layer, projection, weight|bias)
    for name, tensor in named:
        if name in _TOP:
            yield _TOP[name], tensor
            continue
        match = _LAYER_NAME.fullmatch(name)
        if match is None:
            raise ValueError(f"no chatglm GGUF name for {name!r}")
        layer, rest = match.groups()
        if rest in _LAYER:
            yield f"blk.{layer}.{_LAYER[rest]}", tensor
            continue
        part, _, kind = rest.removeprefix("self_attn.").partition(".")
        if part not in _QKV or kind not in ("weight", "bias"):
            raise ValueError(f"no chatglm GGUF name for {name!r}")
        pending[(layer, part, kind)] = tensor
        if all((layer, p, kind) in pending for p in _QKV):
            yield f"blk.{layer}.attn_qkv.{kind}", torch.cat([pending.pop((layer, p, kind)) for p in _QKV])
    if pending:
        raise ValueError(f"incomplete q/k/v projections at the end: {sorted(pending)}")


def ggml_type(name: str, ndim: int, precision: str) -> Any:
    """The GGML type a tensor gets in a ``precision`` file (see the module docstring)."""
    from gguf import GGMLQuantizationType as T

    if precision not in ("q8_0", "q4_0", "bf16"):
        raise ValueError(f"unknown GGUF precision {precision!r} (q8_0, q4_0 or bf16)")
    if ndim == 1:
        return T.F32
    if precision == "bf16":
        return T.BF16
    return T.Q8_0 if precision == "q8_0" or name == "output.weight" else T.Q4_0


def _tokenizer_metadata(writer: Any, model_file: Path, vocab_size: int) -> None:
    """The genuine ChatGLM3 vocabulary, as convert_hf_to_gguf.py writes it for chatglm3."""
    import sentencepiece
    from gguf import TokenType

    from glm_agent.chatglm3.tokenizer import SPECIAL_TOKENS

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    n_sp = sp.vocab_size()
    renamed = {0: "<unk>", 1: "<bos>", 2: "<eos>"}
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i < n_sp:
            piece = renamed.get(i, sp.id_to_piece(i))
            score = sp.get_score(i)
            if sp.is_unknown(i):
                kind = TokenType.UNKNOWN
            elif sp.is_control(i):
                kind = TokenType.CONTROL
            elif sp.is_unused(i):
                kind = TokenType.UNUSED
            elif sp.is_byte(i):
                kind = TokenType.BYTE
            else:
                kind = TokenType.NORMAL
        elif i - n_sp < len(SPECIAL_TOKENS):
            piece, score, kind = SPECIAL_TOKENS[i - n_sp], 0.0, TokenType.CONTROL
        else:
            piece, score, kind = f"[PAD{i}]", 0.0, TokenType.UNUSED
        tokens.append(piece.encode())
        scores.append(score)
        types.append(int(kind))
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("chatglm-spm")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(False)


def _header(
    path: Path, config: dict[str, Any], precision: str, model_file: Path, plan: list[tuple[str, tuple[int, ...]]]
) -> int:
    """Writes the GGUF header, metadata and tensor table; returns the data alignment."""
    from gguf import GGUFWriter, LlamaFileType

    writer = GGUFWriter(path, "chatglm")
    writer.add_name(f"ChatGLM3-6B shape, random weights ({config['num_hidden_layers']} layers)")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(int(config["head_dim"] * config["partial_rotary_factor"]))
    writer.add_rope_freq_base(config["rope_theta"])
    file_type = {
        "q8_0": LlamaFileType.MOSTLY_Q8_0,
        "q4_0": LlamaFileType.MOSTLY_Q4_0,
        "bf16": LlamaFileType.MOSTLY_BF16,
    }
    writer.add_file_type(file_type[precision])
    writer.add_quantization_version(2)
    _tokenizer_metadata(writer, model_file, config["vocab_size"])
    for name, shape in plan:
        qtype = ggml_type(name, len(shape), precision)
        writer.add_tensor_info(name, shape, np.dtype(np.float32), _nbytes(shape, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    alignment = int(writer.data_alignment)
    writer.close()
    return alignment


def _nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def gguf_plan(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """The GGUF tensors (name, shape) of a GlmForCausalLM with ``config``, in the order they are written."""
    from transformers import GlmConfig, GlmForCausalLM

    with torch.device("meta"):
        meta = GlmForCausalLM(GlmConfig(**config))
    return [(name, tuple(t.shape)) for name, t in gguf_tensors(meta.named_parameters())]


def weight_bytes_read(config: dict[str, Any], precision: str) -> int:
    """Bytes of weights llama.cpp reads per decoded token: every tensor, one row of the token embedding."""
    total = 0
    for name, shape in gguf_plan(config):
        nbytes = _nbytes(shape, ggml_type(name, len(shape), precision))
        total += nbytes // shape[0] if name == "token_embd.weight" else nbytes
    return total


def _encode(tensor: torch.Tensor, qtype: Any) -> np.ndarray:
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    if qtype == T.BF16:
        return tensor.to(torch.bfloat16).view(torch.int16).numpy()
    data = tensor.float().numpy()
    return data if qtype == T.F32 else quants.quantize(data, qtype)


def write_ggufs(
    outputs: dict[str, Path],
    tensors: Iterable[tuple[str, torch.Tensor]],
    config: dict[str, Any],
    model_file: Path,
    rows_per_chunk: int = 1024,
) -> None:
    """Writes one GGUF per ``{precision: path}`` from one pass over ``tensors`` (GlmForCausalLM names),
    one tensor at a time, quantized ``rows_per_chunk`` rows at a time (rows are independent in Q8_0/Q4_0).
    """
    plan = gguf_plan(config)
    alignment = {precision: _header(path, config, precision, model_file, plan) for precision, path in outputs.items()}
    files = {precision: path.open("ab") for precision, path in outputs.items()}
    try:
        expected = iter(plan)
        for name, tensor in gguf_tensors(tensors):
            want, shape = next(expected)
            if (name, tuple(tensor.shape)) != (want, shape):
                raise ValueError(f"tensor {name} {tuple(tensor.shape)} arrived where {want} {shape} was planned")
            for precision, out in files.items():
                out.write(b"\0" * (-out.tell() % alignment[precision]))
                qtype = ggml_type(name, tensor.dim(), precision)
                for chunk in tensor.split(rows_per_chunk) if tensor.dim() == 2 else [tensor]:
                    _encode(chunk, qtype).tofile(out)
            del tensor
        if next(expected, None) is not None:
            raise ValueError("the weights ended before every planned tensor was written")
        for precision, out in files.items():
            out.write(b"\0" * (-out.tell() % alignment[precision]))
    finally:
        for out in files.values():
            out.close()


def _run_script(args: dict[str, Any]) -> dict[str, Any]:
    """``llama_cpp_decode.mjs`` with ``args`` (node_modules added): its JSON, checked to have run the chatglm architecture."""
    node = check_available()
    done = subprocess.run(
        [str(node), str(SCRIPT), json.dumps({"node_modules": str(NODE_MODULES), **args})],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"llama.cpp (node-llama-cpp) failed with exit code {done.returncode}:\n{done.stderr[-4000:]}"
        )
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if out["architecture"] != "chatglm" or out["loaded_arch"] != "chatglm":
        raise RuntimeError(
            f"llama.cpp did not load the chatglm architecture: {out['architecture']}, {out['loaded_arch']}"
        )
    return out


def run_llama_cpp(gguf: Path, prompt: list[int], new_tokens: int, threads: int, repeats: int = 1) -> dict[str, Any]:
    """Greedy decode of ``new_tokens`` after ``prompt`` (token ids) in llama.cpp: tokens/s from the median
    step between consecutive tokens (the first token, which includes the prompt, excluded), over ``repeats``.
    """
    out = _run_script(
        {"model": str(gguf), "prompt": prompt, "new_tokens": new_tokens, "threads": threads, "repeats": repeats}
    )
    steps = [b - a for run in out["runs_ms"] for a, b in itertools.pairwise(run)]
    if steps:  # one token: no decode step to time
        median = statistics.median(steps) / 1000
        out["tokens_per_s"] = round(1 / median, 3)
        out["ms_per_token"] = round(median * 1000, 1)
    out["first_token_s"] = round(min(run[0] for run in out["runs_ms"]) / 1000, 2)
    return out


def run_llama_cpp_sessions(
    gguf: Path, sessions: list[list[int]], new_tokens: int, threads: int, staggered: bool
) -> list[tuple[float, list[float]]]:
    """``sessions`` (prompts of token ids) decoded greedily at once in one llama.cpp context with a sequence
    each (node-llama-cpp batches their steps), started together or each when the one before has its first
    token: per session its send time and token times in seconds since the first send."""
    out = _run_script(
        {"model": str(gguf), "sessions": sessions, "staggered": staggered, "new_tokens": new_tokens, "threads": threads}
    )
    return [(run["sent_ms"] / 1000, [t / 1000 for t in run["times_ms"]]) for run in out["sessions"]]


def converted_6b(workdir: Path, precision: str) -> Path:
    """The bf16 benchmark weights (``random_bf16_tensors_6b``, seed 0) as one GGUF file at ``precision``."""
    from _chatglm3_shaped import CONFIG_6B, SHARED, random_bf16_tensors_6b

    check_available()
    path = workdir / f"chatglm3-6b-shape-random-{precision}.gguf"
    write_ggufs({precision: path}, random_bf16_tensors_6b(), CONFIG_6B, SHARED / "tokenizer.model")
    return path


def peer_6b(
    prompt: list[int], new_tokens: int, threads: int, precisions: tuple[str, ...] = ("q8_0", "q4_0")
) -> dict[str, Any]:
    """Converts the bf16 benchmark weights (``random_bf16_tensors_6b``, seed 0) to GGUF at ``precisions`` in
    one pass, into a temporary folder, and decodes each file in llama.cpp (one at a time, each file deleted
    after its run). Per precision: tokens/s and the rest of ``run_llama_cpp``, file and weight bytes.
    """
    from _chatglm3_shaped import CONFIG_6B, SHARED, random_bf16_tensors_6b

    check_available()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="glm-agent-peer-") as workdir:
        paths = {p: Path(workdir) / f"chatglm3-6b-shape-random-{p}.gguf" for p in precisions}
        start = time.perf_counter()
        write_ggufs(paths, random_bf16_tensors_6b(), CONFIG_6B, SHARED / "tokenizer.model")
        out["convert_s"] = round(time.perf_counter() - start, 1)
        for precision, path in paths.items():
            result = run_llama_cpp(path, prompt, new_tokens + 1, threads)
            result.pop("runs_ms")
            out[precision] = {
                "file_bytes": path.stat().st_size,
                "weight_bytes": weight_bytes_read(CONFIG_6B, precision),
                **result,
            }
            path.unlink()
    return out
