"""ChatGLM3 checkpoints load into transformers' native GLM model and reproduce the official logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from glm_agent.chatglm3._remap import glm_config_kwargs  # noqa: E402
from glm_agent.chatglm3.checkpoint import convert_checkpoint, load_model  # noqa: E402
from glm_agent.cli import main as cli_main  # noqa: E402
from glm_agent.errors import CheckpointError  # noqa: E402
from tests._data import GOLDEN, needs_tiny_checkpoint  # noqa: E402
from tests._data import TINY_CHECKPOINT as TINY  # noqa: E402

pytestmark = needs_tiny_checkpoint

STOP = [2, 64795, 64797]


@pytest.fixture(scope="module")
def golden() -> list[dict]:
    return json.loads((GOLDEN / "model_golden.json").read_text())


@pytest.fixture(scope="module")
def golden_logits() -> dict:
    return load_file(str(GOLDEN / "model_logits.safetensors"))


@pytest.fixture(scope="module")
def tiny_model():
    return load_model(TINY, dtype="float32", device="cpu", progress=False)


def assert_matches_golden(model, golden, golden_logits, *, generate: bool = True) -> None:
    with torch.inference_mode():
        for case in golden:
            ids = torch.tensor([case["input_ids"]])
            logits = model(input_ids=ids).logits[0].float()
            expected = golden_logits[f"{case['id']}.logits"]
            assert torch.allclose(logits[-4:], expected, atol=1e-4, rtol=0), case["id"]
            assert logits.argmax(-1).tolist() == case["argmax"], case["id"]
            top5 = logits.topk(5, dim=-1)
            assert top5.indices.tolist() == case["top5_ids"], case["id"]
            assert torch.allclose(top5.values, torch.tensor(case["top5_values"]), atol=1e-4), case["id"]
            if generate:
                out = model.generate(ids, do_sample=False, max_new_tokens=24, eos_token_id=STOP, pad_token_id=0)
                assert out[0, ids.shape[1] :].tolist() == case["greedy_new_tokens"], case["id"]


def test_official_checkpoint_reproduces_golden_logits_and_greedy_tokens(tiny_model, golden, golden_logits):
    assert type(tiny_model).__name__ == "GlmForCausalLM"
    assert tiny_model.dtype == torch.float32
    assert not tiny_model.training
    assert_matches_golden(tiny_model, golden, golden_logits)


def test_config_mapping_follows_the_official_config():
    official = json.loads((TINY / "config.json").read_text())
    kwargs = glm_config_kwargs(official)
    assert (kwargs["num_hidden_layers"], kwargs["hidden_size"], kwargs["num_attention_heads"]) == (2, 64, 4)
    assert (kwargs["head_dim"], kwargs["num_key_value_heads"], kwargs["intermediate_size"]) == (16, 2, 160)
    assert kwargs["vocab_size"] == 65024 and kwargs["max_position_embeddings"] == 8192
    assert kwargs["rope_theta"] == 10000.0 and kwargs["partial_rotary_factor"] == 0.5
    assert kwargs["tie_word_embeddings"] is False
    long = glm_config_kwargs({**official, "rope_ratio": 50, "seq_length": 32768})
    assert long["rope_theta"] == 500000.0 and long["max_position_embeddings"] == 32768


def _official_state() -> dict:
    state = {}
    for shard in sorted(TINY.glob("pytorch_model-*.bin")):
        state.update(torch.load(shard, map_location="cpu", weights_only=True))
    return state


def _copy_config(dst: Path, **changes) -> None:
    cfg = json.loads((TINY / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))


def test_safetensors_shards_load_and_match(tmp_path, golden, golden_logits):
    state = _official_state()
    keys = sorted(state)
    halves = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    weight_map = {}
    for name, part in halves.items():
        save_file({k: state[k].contiguous() for k in part}, str(tmp_path / name))
        weight_map.update(dict.fromkeys(part, name))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _copy_config(tmp_path)
    model = load_model(tmp_path, dtype="float32", device="cpu", progress=False)
    assert_matches_golden(model, golden, golden_logits, generate=False)


def test_single_bin_file_loads_and_matches(tmp_path, golden, golden_logits):
    torch.save(_official_state(), tmp_path / "pytorch_model.bin")
    _copy_config(tmp_path)
    model = load_model(tmp_path, dtype="float32", device="cpu", progress=False)
    assert_matches_golden(model, golden, golden_logits, generate=False)


def test_convert_output_loads_with_plain_transformers(tmp_path, golden, golden_logits):
    dst = tmp_path / "native"
    assert cli_main(["convert", str(TINY), str(dst), "--dtype", "float32"]) == 0
    assert (dst / "tokenizer.model").is_file()
    assert not list(dst.glob("*.py"))
    assert json.loads((dst / "config.json").read_text())["model_type"] == "glm"
    model = transformers.GlmForCausalLM.from_pretrained(dst)  # no trust_remote_code
    model.eval()
    assert_matches_golden(model, golden, golden_logits)
    again = load_model(dst, device="cpu", progress=False)  # a native checkpoint loads through load_model too
    assert_matches_golden(again, golden, golden_logits, generate=False)


def test_convert_keeps_the_checkpoint_dtype_and_refuses_a_non_empty_destination(tmp_path, capsys):
    dst = convert_checkpoint(TINY, tmp_path / "native")
    assert json.loads((dst / "config.json").read_text())["dtype"] == "float16"
    with pytest.raises(CheckpointError, match="not empty"):
        convert_checkpoint(TINY, dst)
    capsys.readouterr()
    assert cli_main(["convert", str(TINY), str(dst)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and err.count("\n") == 1


def test_dtype_options(tmp_path):
    assert load_model(TINY, dtype="bfloat16", device="cpu", progress=False).dtype == torch.bfloat16
    assert load_model(TINY, dtype="auto", device="cpu", progress=False).dtype == torch.float16
    assert load_model(TINY, progress=False).dtype == torch.float32  # CPU default
    with pytest.raises(CheckpointError, match="unknown dtype"):
        load_model(TINY, dtype="int3", device="cpu")


def test_device_map_passthrough(golden, golden_logits):
    pytest.importorskip("accelerate")
    model = load_model(TINY, dtype="float32", device_map="auto", progress=False)
    assert model.hf_device_map
    assert_matches_golden(model, golden, golden_logits, generate=False)
    with pytest.raises(CheckpointError, match="either device or device_map"):
        load_model(TINY, device="cpu", device_map="auto")


def test_hub_id_resolves_through_the_hugging_face_cache(tmp_path, monkeypatch, golden, golden_logits):
    import huggingface_hub.constants as hub_constants

    snapshot = tmp_path / "models--THUDM--chatglm3-6b" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for file in TINY.iterdir():
        (snapshot / file.name).symlink_to(file)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    model = load_model("THUDM/chatglm3-6b", device="cpu", progress=False)
    assert_matches_golden(model, golden, golden_logits, generate=False)


def test_hub_id_not_cached_offline_says_how_to_get_weights(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(
        CheckpointError, match=r"THUDM/chatglm3-6b-32k is not in the Hugging Face cache.*huggingface-cli download"
    ):
        load_model("THUDM/chatglm3-6b-32k")


def test_missing_path_is_an_error():
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("/nonexistent/dir/chatglm3")


def _partial_copy(dst: Path, skip: str = "") -> None:
    for file in TINY.iterdir():
        if file.name != skip:
            (dst / file.name).symlink_to(file)


def test_missing_shard_names_the_file(tmp_path):
    _partial_copy(tmp_path, skip="pytorch_model-00002-of-00002.bin")
    with pytest.raises(CheckpointError, match="pytorch_model-00002-of-00002.bin"):
        load_model(tmp_path)


def test_missing_config_names_the_file(tmp_path):
    _partial_copy(tmp_path, skip="config.json")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)


def test_no_weights_at_all(tmp_path):
    _copy_config(tmp_path)
    with pytest.raises(CheckpointError, match="no weights"):
        load_model(tmp_path)


def test_mismatched_shapes_name_the_key(tmp_path):
    for file in TINY.glob("pytorch_model*"):
        (tmp_path / file.name).symlink_to(file)
    _copy_config(tmp_path, ffn_hidden_size=192)
    with pytest.raises(CheckpointError, match=r"dense_h_to_4h\.weight.*shape"):
        load_model(tmp_path)
    _copy_config(tmp_path, kv_channels=8)
    with pytest.raises(CheckpointError, match=r"query_key_value"):
        load_model(tmp_path)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    state = _official_state()
    del state["transformer.output_layer.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    _copy_config(tmp_path)
    with pytest.raises(CheckpointError, match=r"lacks weights for lm_head\.weight"):
        load_model(tmp_path)
    state = _official_state()
    state["transformer.prefix_encoder.embedding.weight"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"prefix_encoder"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "llama"}, "model_type 'llama'"),
        ({"position_encoding_2d": True, "inner_hidden_size": 16384}, r"ChatGLM-6B \(v1\)"),
        ({"padded_vocab_size": 151552, "rope_ratio": 500}, "GLM-4"),
    ],
)
def test_other_model_families_are_refused(tmp_path, changes, message):
    _partial_copy(tmp_path, skip="config.json")
    _copy_config(tmp_path, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bin_files_are_read_weights_only(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"transformer.output_layer.weight": _Payload(marker)}, tmp_path / "pytorch_model.bin")
    _copy_config(tmp_path)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin could not be read as a weights-only"):
        load_model(tmp_path)
    assert not marker.exists()


def test_python_files_in_the_checkpoint_are_ignored(tmp_path, golden, golden_logits):
    _partial_copy(tmp_path)
    (tmp_path / "modeling_chatglm.py").write_text("raise SystemExit('remote code ran')\n")
    (tmp_path / "configuration_chatglm.py").write_text("raise SystemExit('remote code ran')\n")
    model = load_model(tmp_path, device="cpu", progress=False)
    assert_matches_golden(model, golden, golden_logits, generate=False)


def test_importing_the_package_does_not_import_torch():
    code = "import sys, glm_agent.chatglm3 as c; assert callable(c.__getattr__); assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    code = (
        "import glm_agent.chatglm3 as c, sys; f = c.load_model; assert f.__module__ == 'glm_agent.chatglm3.checkpoint'"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0


def test_dtype_and_device_defaults():
    from glm_agent.chatglm3.checkpoint import default_device, resolve_dtype

    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype(None, "mps") == torch.float16
    assert resolve_dtype(None, "cuda") in (torch.bfloat16, torch.float16)
    assert resolve_dtype("auto", "cpu", "float16") == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float64, "cpu") == torch.float64
    assert default_device() in ("cuda", "mps", "cpu")
    assert (default_device() == "cuda") == torch.cuda.is_available()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_defaults_and_golden_tokens(golden):
    from glm_agent.chatglm3 import ChatGLM3Tokenizer
    from glm_agent.models import LocalModel
    from glm_agent.models.base import GenerationParams

    model = load_model(TINY, progress=False)
    assert model.device.type == "cuda" and model.dtype in (torch.bfloat16, torch.float16)
    exact = load_model(TINY, dtype="float32", device="cuda", progress=False)
    local = LocalModel(exact, ChatGLM3Tokenizer.from_pretrained(TINY))
    for case in golden:
        "".join(local._stream(case["input_ids"], GenerationParams(temperature=0, max_new_tokens=24)))
        assert local.last_stats.output_ids == case["greedy_new_tokens"], case["id"]
    fast = LocalModel(model, ChatGLM3Tokenizer.from_pretrained(TINY))
    reply = fast.generate([{"role": "user", "content": "你好"}], temperature=0, max_new_tokens=8)
    assert len(fast.last_stats.output_ids) <= 8 and isinstance(reply, str)
