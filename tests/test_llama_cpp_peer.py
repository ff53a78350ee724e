"""The llama.cpp peer of the 6B decode benchmark: GGUF conversion of our weights, and llama.cpp running it.

The conversion tests read the files back with the gguf package; the llama.cpp test needs node and
node-llama-cpp (``npm install`` into benchmarks/.peer, see benchmarks/decode.py) and skips without them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from tests._data import REPO, TOKENIZER  # noqa: E402
from tests._data import needs_shared as needs_tokenizer  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))

import _chatglm3_shaped as shaped  # noqa: E402
import _llama_cpp_peer as peer  # noqa: E402

#: ChatGLM3's vocabulary and head layout, one small layer
SMALL = {**shaped.CONFIG, "num_hidden_layers": 1, "intermediate_size": 1536}  # rows in whole 32-blocks


def _small_weights() -> list[tuple[str, torch.Tensor]]:
    from transformers import GlmConfig, GlmForCausalLM

    torch.manual_seed(0)
    model = GlmForCausalLM(GlmConfig(**SMALL)).to(torch.bfloat16)
    return [(name, p.detach()) for name, p in model.named_parameters()]


def _field(reader, key: str):
    return reader.fields[key].contents()


@pytest.mark.slow
@needs_tokenizer
def test_gguf_has_llama_cpps_chatglm_layout_and_our_weights(tmp_path):
    weights = _small_weights()
    source = dict(weights)
    paths = {p: tmp_path / f"{p}.gguf" for p in ("q8_0", "q4_0", "bf16")}
    peer.write_ggufs(paths, iter(weights), SMALL, TOKENIZER, rows_per_chunk=1000)  # chunks end mid-tensor

    readers = {p: gguf.GGUFReader(path) for p, path in paths.items()}
    reader = readers["q8_0"]
    assert _field(reader, "general.architecture") == "chatglm"
    assert _field(reader, "chatglm.rope.dimension_count") == 64
    assert _field(reader, "chatglm.attention.head_count_kv") == 2
    assert _field(reader, "tokenizer.ggml.pre") == "chatglm-spm"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 65024
    assert tokens[:3] == ["<unk>", "<bos>", "<eos>"]
    assert tokens[64790] == "[gMASK]" and tokens[64796] == "<|assistant|>" and tokens[65023] == "[PAD65023]"
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types[64795] == gguf.TokenType.CONTROL and types[65000] == gguf.TokenType.UNUSED

    T = gguf.GGMLQuantizationType
    tensors = {p: {t.name: t for t in r.tensors} for p, r in readers.items()}
    assert list(tensors["q8_0"]) == [
        "token_embd.weight",
        "blk.0.attn_qkv.weight",
        "blk.0.attn_qkv.bias",
        "blk.0.attn_output.weight",
        "blk.0.ffn_up.weight",
        "blk.0.ffn_down.weight",
        "blk.0.attn_norm.weight",
        "blk.0.ffn_norm.weight",
        "output_norm.weight",
        "output.weight",
    ]
    qkv = tensors["q8_0"]["blk.0.attn_qkv.weight"]
    assert qkv.tensor_type == T.Q8_0 and list(qkv.shape) == [512, 512 + 2 * 256]  # ggml order: columns first
    assert tensors["q8_0"]["token_embd.weight"].tensor_type == T.Q8_0
    assert tensors["q4_0"]["token_embd.weight"].tensor_type == T.Q4_0
    assert tensors["q4_0"]["blk.0.ffn_down.weight"].tensor_type == T.Q4_0
    assert tensors["q4_0"]["output.weight"].tensor_type == T.Q8_0
    assert tensors["q4_0"]["blk.0.attn_qkv.bias"].tensor_type == T.F32

    def read(precision: str, name: str) -> torch.Tensor:
        t = tensors[precision][name]
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        return torch.from_numpy(values.astype("float32")).reshape([int(n) for n in reversed(t.shape)])

    layer = "model.layers.0."
    fused = torch.cat([source[f"{layer}self_attn.{p}_proj.weight"] for p in "qkv"]).float()
    assert torch.equal(read("bf16", "blk.0.attn_qkv.weight"), fused)
    assert torch.equal(read("bf16", "blk.0.ffn_up.weight"), source[f"{layer}mlp.gate_up_proj.weight"].float())
    assert torch.equal(read("bf16", "output.weight"), source["lm_head.weight"].float())
    bias = torch.cat([source[f"{layer}self_attn.{p}_proj.bias"] for p in "qkv"]).float()
    assert torch.equal(read("q4_0", "blk.0.attn_qkv.bias"), bias)
    # Q8_0: half a step of the block's scale (max |w| / 127, stored in fp16); Q4_0: one step (max |w| / 8)
    scale = fused.abs().max()
    assert (read("q8_0", "blk.0.attn_qkv.weight") - fused).abs().max() <= scale / 127 * 0.6
    assert (read("q4_0", "blk.0.attn_qkv.weight") - fused).abs().max() <= scale / 8 * 1.05
    embed = source["model.embed_tokens.weight"].float()
    assert (read("q4_0", "token_embd.weight") - embed).abs().max() <= embed.abs().max() / 8 * 1.05


def test_weights_that_do_not_fit_the_chatglm_layout_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no chatglm GGUF name for 'model.layers.0.mlp.gate_proj.weight'"):
        list(peer.gguf_tensors([("model.layers.0.mlp.gate_proj.weight", torch.zeros(2, 2))]))
    with pytest.raises(ValueError, match="incomplete q/k/v"):
        list(peer.gguf_tensors([("model.layers.0.self_attn.q_proj.weight", torch.zeros(2, 2))]))
    layers_mixed = [(f"model.layers.{i}.self_attn.{p}_proj.weight", torch.zeros(2, 2)) for i, p in enumerate("qkv")]
    with pytest.raises(ValueError, match="incomplete q/k/v"):
        list(peer.gguf_tensors(layers_mixed))
    for name in ("blk.0.ffn_up.weight", "output.weight"):
        with pytest.raises(ValueError, match="unknown GGUF precision 'q5_k'"):
            peer.ggml_type(name, 2, "q5_k")


@needs_tokenizer
def test_a_stream_that_stops_early_or_goes_astray_is_an_error(tmp_path):
    weights = _small_weights()
    with pytest.raises(ValueError, match="ended before every planned tensor"):
        peer.write_ggufs({"q8_0": tmp_path / "a.gguf"}, iter(weights[:-1]), SMALL, TOKENIZER)
    swapped = [weights[-1], *weights[:-1]]
    with pytest.raises(ValueError, match="arrived where token_embd.weight"):
        peer.write_ggufs({"q8_0": tmp_path / "b.gguf"}, iter(swapped), SMALL, TOKENIZER)


def test_without_node_llama_cpp_the_peer_flag_says_what_to_install(tmp_path):
    env = {**os.environ, "GLM_AGENT_PEER_NODE_MODULES": str(tmp_path / "node_modules")}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "decode.py"), "--shape", "chatglm3-6b", "--peer", "llama.cpp"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert f"node-llama-cpp is not installed under {tmp_path / 'node_modules'}" in done.stderr
    assert "npm install --prefix" in done.stderr and "node-llama-cpp@3.22.1" in done.stderr
    assert done.stdout == ""  # failed before building any model


@pytest.mark.slow
@needs_tokenizer
def test_llama_cpp_decodes_the_converted_weights_as_our_model_does(tmp_path, monkeypatch):
    """2 layers of the 6B shape: llama.cpp on the bf16 GGUF chooses the same 9 greedy tokens as our bf16
    model on the same weights (a wrong name, fusion order, rope layout or norm would change them); the
    q8_0 file's first token is among our model's top 5.
    """
    try:
        peer.check_available()
    except peer.PeerUnavailable as error:
        pytest.skip(str(error))
    monkeypatch.setattr(shaped, "CONFIG_6B", {**shaped.CONFIG_6B, "num_hidden_layers": 2})
    paths = {p: tmp_path / f"{p}.gguf" for p in ("bf16", "q8_0")}
    peer.write_ggufs(paths, shaped.random_bf16_tensors_6b(), shaped.CONFIG_6B, TOKENIZER)

    tok = shaped.tokenizer()
    prompt = [tok.gmask_id, tok.sop_id, tok.user_id, *tok.encode("Write a haiku about the sea."), tok.assistant_id]
    model = shaped.random_model_6b("bf16")
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        ours = model.generate(
            ids, do_sample=False, max_new_tokens=9, min_new_tokens=9, eos_token_id=None, pad_token_id=0
        )
        top5 = model(ids).logits[0, -1].float().topk(5).indices.tolist()
    del model

    exact = peer.run_llama_cpp(paths["bf16"], prompt, 9, threads=2)
    assert (exact["architecture"], exact["loaded_arch"], exact["file_type"]) == ("chatglm", "chatglm", "BF16")
    assert exact["tokens"] == ours[0, len(prompt) :].tolist()
    quantized = peer.run_llama_cpp(paths["q8_0"], prompt, 1, threads=2)
    assert quantized["file_type"] == "Q8_0"
    assert quantized["tokens"][0] in top5
