"""LocalModel on the tiny real ChatGLM3 checkpoint: golden tokens, streaming, prefix cache, errors."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from glm_agent.chatglm3 import ChatGLM3Tokenizer  # noqa: E402
from glm_agent.chatglm3.checkpoint import load_model  # noqa: E402
from glm_agent.engine._decoding import IncrementalDetokenizer, Sampler, StopStrings  # noqa: E402
from glm_agent.errors import CheckpointError, ContextLengthError  # noqa: E402
from glm_agent.models import LocalModel  # noqa: E402
from glm_agent.models.base import ChatModel, GenerationParams  # noqa: E402
from tests._data import GOLDEN, REPO, needs_tiny_checkpoint  # noqa: E402
from tests._data import TINY_CHECKPOINT as TINY  # noqa: E402

pytestmark = needs_tiny_checkpoint

GREEDY = {"temperature": 0, "max_new_tokens": 24}
TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


@pytest.fixture(scope="module")
def tokenizer() -> ChatGLM3Tokenizer:
    return ChatGLM3Tokenizer.from_pretrained(TINY)


@pytest.fixture(scope="module")
def weights():
    return load_model(TINY, dtype="float32", device="cpu", progress=False)


@pytest.fixture(scope="module")
def model(weights, tokenizer) -> LocalModel:
    return LocalModel(weights, tokenizer)


@pytest.fixture(scope="module")
def golden() -> list[dict]:
    return json.loads((GOLDEN / "model_golden.json").read_text())


def conversation(turn: int) -> list[dict]:
    """An agent episode after ``turn`` tool round trips."""
    messages: list[dict] = [
        {"role": "system", "content": "Answer the following questions as best as you can.", "tools": TOOLS},
        {"role": "user", "content": "What is the weather in Paris and in 北京?"},
    ]
    for i in range(turn):
        messages.append(
            {"role": "assistant", "metadata": "get_weather", "content": f"```python\ntool_call(city='city{i}')\n```"}
        )
        messages.append(
            {"role": "observation", "content": json.dumps({"city": f"city{i}", "temperature": 20 + i, "sky": "晴"})}
        )
    return messages


@pytest.mark.parametrize("engine", ["auto", "transformers"])
def test_greedy_tokens_and_logits_match_the_official_model(weights, tokenizer, golden, engine):
    local = LocalModel(weights, tokenizer, engine=engine)
    logits = load_file(str(GOLDEN / "model_logits.safetensors"))
    for case in golden:
        text = "".join(local._stream(case["input_ids"], GenerationParams(**GREEDY)))
        assert local.last_stats.output_ids == case["greedy_new_tokens"], case["id"]
        assert text == tokenizer.decode(case["greedy_new_tokens"])
        runner = local._cache.runner
        runner.crop(0)
        last = runner.forward(case["input_ids"])
        assert torch.allclose(last, logits[f"{case['id']}.logits"][-1], atol=1e-4, rtol=0), case["id"]
        local.reset_cache()


def test_lean_engine_leaves_the_model_usable_by_transformers(model, weights, golden):
    assert type(model._engine.runner).__name__ == "LeanGlmRunner"
    case = golden[0]
    with torch.inference_mode():
        out = weights.generate(
            torch.tensor([case["input_ids"]]), do_sample=False, max_new_tokens=24, eos_token_id=[2, 64795, 64797]
        )
    assert out[0, len(case["input_ids"]) :].tolist() == case["greedy_new_tokens"]


def test_local_model_follows_the_chat_model_protocol(model):
    assert isinstance(model, ChatModel)


def test_stream_equals_generate_and_the_full_decode(model, tokenizer):
    messages = conversation(1)
    deltas = list(model.stream(messages, **GREEDY))
    ids = model.last_stats.output_ids
    assert model.last_stats.finish_reason in ("stop", "length")
    assert "".join(deltas) == tokenizer.decode(ids)
    assert all(deltas)
    assert model.generate(messages, **GREEDY) == "".join(deltas)


def test_prefix_cache_on_equals_off_over_a_multi_turn_episode(weights, tokenizer):
    cached = LocalModel(weights, tokenizer, prefix_cache=True)
    fresh = LocalModel(weights, tokenizer, prefix_cache=False)
    messages = conversation(1)
    previous_prompt = 0
    for turn in range(5):
        reply = cached.generate(messages, **GREEDY)
        with_cache = cached.last_stats
        assert fresh.generate(messages, **GREEDY) == reply
        assert with_cache.output_ids == fresh.last_stats.output_ids
        assert fresh.last_stats.prefill_tokens == fresh.last_stats.prompt_tokens
        if turn:  # the whole previous prompt (and usually part of the reply) comes from the cache
            assert with_cache.reused_tokens >= previous_prompt
            assert with_cache.prefill_tokens == with_cache.prompt_tokens - with_cache.reused_tokens
        previous_prompt = with_cache.prompt_tokens
        messages.append({"role": "assistant", "content": reply.strip()})
        messages.append({"role": "observation" if turn % 2 else "user", "content": f"result {turn}: 晴, {20 + turn}°C"})


def test_a_repeated_prompt_prefills_one_token(model):
    messages = conversation(2)
    first = model.generate(messages, **GREEDY)
    assert model.generate(messages, **GREEDY) == first
    assert model.last_stats.prefill_tokens == 1


def test_closing_the_stream_midway_keeps_the_cache_consistent(weights, tokenizer):
    cached = LocalModel(weights, tokenizer)
    fresh = LocalModel(weights, tokenizer, prefix_cache=False)
    stream = cached.stream(conversation(1), **GREEDY)
    next(stream)
    next(stream)
    stream.close()
    assert cached.last_stats.finish_reason == "closed"
    follow_up = conversation(2)
    assert cached.generate(follow_up, **GREEDY) == fresh.generate(follow_up, **GREEDY)
    assert cached.last_stats.reused_tokens > 0


def test_concurrent_calls_run_one_at_a_time_and_give_the_sequential_results(weights, tokenizer):
    local = LocalModel(weights, tokenizer)
    prompts = [conversation(i) for i in range(3)]
    expected = [LocalModel(weights, tokenizer, prefix_cache=False).generate(p, **GREEDY) for p in prompts]
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = local.generate(prompts[i], **GREEDY)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [results[i] for i in range(3)] == expected


async def test_astream_matches_stream(model):
    messages = conversation(1)
    deltas = [d async for d in model.astream(messages, **GREEDY)]
    assert "".join(deltas) == model.generate(messages, **GREEDY)


def test_sampling_is_reproducible_with_a_seed(model):
    params = {"temperature": 0.9, "top_p": 0.9, "top_k": 50, "max_new_tokens": 16, "seed": 7}
    a = model.generate(conversation(0), **params)
    assert model.generate(conversation(0), **params) == a
    assert model.generate(conversation(0), **{**params, "top_k": 1}) == model.generate(
        conversation(0), **{**GREEDY, "max_new_tokens": 16}
    )


def test_max_new_tokens_and_stop_strings(model, tokenizer):
    model.generate(conversation(0), temperature=0, max_new_tokens=5)
    assert len(model.last_stats.output_ids) == 5 and model.last_stats.finish_reason == "length"
    full = model.generate(conversation(0), **GREEDY)
    marker = full.strip()[3:6]
    assert marker
    cut = model.generate(conversation(0), **GREEDY, stop=[marker])
    assert cut == full[: full.index(marker)]
    assert model.last_stats.finish_reason == "stop"


def test_context_length_is_checked_before_generating(weights, tokenizer):
    local = LocalModel(weights, tokenizer, context_length=64)
    prompt_tokens = len(tokenizer.apply_chat_template(conversation(0)))
    with pytest.raises(ContextLengthError, match="shorten the conversation") as info:
        local.generate(conversation(0), max_new_tokens=64)
    assert (info.value.prompt_tokens, info.value.max_new_tokens, info.value.context_length) == (prompt_tokens, 64, 64)
    default = LocalModel(weights, tokenizer)
    assert default.context_length == 8192
    with pytest.raises(ContextLengthError):
        default.generate(conversation(0), max_new_tokens=8192)


def test_invalid_parameters_are_refused(model):
    with pytest.raises(ValueError, match="temperature"):
        model.generate(conversation(0), temperature=-1)
    with pytest.raises(ValueError, match="invalid generation parameters"):
        model.generate(conversation(0), beams=4)


def test_from_pretrained_without_tokenizer_model_names_the_file(tmp_path):
    for file in TINY.iterdir():
        if file.name != "tokenizer.model":
            (tmp_path / file.name).symlink_to(file)
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        LocalModel.from_pretrained(tmp_path)


def test_from_pretrained_with_device_map_uses_transformers_forward(golden):
    pytest.importorskip("accelerate")
    local = LocalModel.from_pretrained(TINY, device_map={"": "cpu"})
    case = golden[1]
    "".join(local._stream(case["input_ids"], GenerationParams(**GREEDY)))
    assert local.last_stats.output_ids == case["greedy_new_tokens"]


# -- decoding helpers --------------------------------------------------------------------------


def test_sampler_guards_non_finite_scores_and_applies_penalties():
    nan = torch.full((10,), float("nan"))
    assert Sampler(temperature=0)(nan) == 5
    inf = torch.zeros(10)
    inf[3] = float("inf")
    assert Sampler(temperature=0.7, seed=1)(inf) == 5
    scores = torch.tensor([0.0, 2.0, 1.9, -1.0])
    assert Sampler(temperature=0)(scores) == 1
    assert Sampler(temperature=0, repetition_penalty=1.2, history=[1])(scores) == 2
    assert Sampler(temperature=1.0, top_p=0.01, seed=3)(scores) == 1
    assert Sampler(temperature=5.0, top_k=1, seed=3)(scores) == 1


def test_multibyte_characters_are_held_back_until_complete(tokenizer):
    text = "天气 😀🌍 naïve 𝔘"
    ids = tokenizer.encode(text)
    assert any(tokenizer.sp.IsByte(i) for i in ids)  # the emoji need byte fallback
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == tokenizer.decode(ids)
    assert not any("\ufffd" in d for d in deltas)
    assert "😀" in deltas


def _interesting_ids(tokenizer: ChatGLM3Tokenizer) -> list[int]:
    sp = tokenizer.sp
    ids = [i for i in range(3, 260) if sp.IsByte(i)]  # byte-fallback pieces
    ids += [0, 1, 2]  # unk, bos, eos
    ids += tokenizer.encode("你好，世界 café  x\n\tnaïve 😀 tool_call(city='北京')")
    ids += list(range(tokenizer.sp_vocab_size, tokenizer.vocab_size))  # special tokens
    ids += [64800, 65023]  # padding rows decode to nothing
    return sorted(set(ids))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_streamed_deltas_always_concatenate_to_the_full_decode(tokenizer, data):
    pool = _interesting_ids(tokenizer)
    ids = data.draw(st.lists(st.sampled_from(pool), max_size=40))
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    full = tokenizer.decode(ids)
    assert "".join(deltas) == full
    if "\ufffd" not in full:
        assert not any("\ufffd" in d for d in deltas)


def test_stop_strings_hold_back_a_possible_start():
    stops = StopStrings(["<END>"])
    out = [stops.feed(d) for d in ["abc<", "EN", "D>tail"]] + [stops.flush()]
    assert "".join(out) == "abc" and stops.stopped
    plain = StopStrings(["<END>"])
    out = [plain.feed(d) for d in ["a<E", "x<", "b"]] + [plain.flush()]
    assert "".join(out) == "a<Ex<b" and not plain.stopped


def test_cpu_allocator_tuning_is_applied_once_and_can_be_turned_off():
    code = "from glm_agent._cpu.memory import keep_freed_memory as k; print(k(), k())"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    env = {**os.environ, "GLM_AGENT_MALLOC_TUNING": "0"}
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert on.stdout.split() == ["True", "True"]
    assert off.stdout.split() == ["False", "False"]


_FRAGMENTED_HEAP = """
import ctypes
from glm_agent._cpu.memory import keep_freed_memory, return_freed_memory
def rss():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) // 1024
keep_freed_memory()  # glibc keeps up to 512 MiB of freed heap from now on
blocks = [ctypes.create_string_buffer(4 << 20) for _ in range(100)]  # 400 MiB of 4 MiB heap blocks, touched
keep = blocks[1::10]  # one live block in ten: the freed ones lie between live ones
del blocks
before = rss()
print(return_freed_memory(), before, rss())
"""


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not sys.platform.startswith("linux"), reason="glibc's malloc_trim"
)
def test_freed_memory_between_live_blocks_goes_back_to_the_kernel_on_request():
    done = subprocess.run([sys.executable, "-c", _FRAGMENTED_HEAP], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    returned, before, after = done.stdout.split()
    assert returned == "True"
    assert int(before) - int(after) > 250  # MiB: most of the 360 MiB freed between live blocks


_HUGE_WEIGHT = """
import torch
from glm_agent._cpu.native import _empty_weight
weight = _empty_weight((64 << 20,), torch.uint8)  # as the kernels' tiled weights are made
weight.fill_(1)
print(next(int(line.split()[1]) for line in open("/proc/self/smaps_rollup") if line.startswith("AnonHugePages")))
"""


def _transparent_huge_pages() -> str:
    try:
        setting = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "absent"
    return setting.split("[", 1)[1].split("]", 1)[0] if "[" in setting else "absent"


@pytest.mark.skipif(_transparent_huge_pages() != "madvise", reason="needs transparent huge pages in madvise mode")
def test_quantized_weights_ask_for_huge_pages_unless_told_not_to():
    def huge_kib(**env: str) -> int:
        run_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
        done = subprocess.run(
            [sys.executable, "-c", _HUGE_WEIGHT], capture_output=True, text=True, timeout=60, env=run_env
        )
        assert done.returncode == 0, done.stderr
        return int(done.stdout)

    assert huge_kib() >= 32 << 10  # at least half of the 64 MiB on 2 MiB pages
    assert huge_kib(GLM_AGENT_HUGE_PAGES="0") == 0


def test_generation_stops_on_a_stop_id_which_is_not_part_of_the_text(tokenizer, golden):
    weights = load_model(TINY, dtype="float32", device="cpu", progress=False)
    case = golden[0]
    sixth = case["greedy_new_tokens"][5]
    with torch.no_grad():  # make <|observation|> score just above the token the model writes sixth
        weights.lm_head.weight[tokenizer.observation_id] = weights.lm_head.weight[sixth] * 1.01
    local = LocalModel(weights, tokenizer)
    text = "".join(local._stream(case["input_ids"], GenerationParams(**GREEDY)))
    assert local.last_stats.output_ids == case["greedy_new_tokens"][:5]
    assert local.last_stats.finish_reason == "stop"
    assert text == tokenizer.decode(case["greedy_new_tokens"][:5])
    assert "<|observation|>" not in text


def test_relayout_false_keeps_the_model_savable(tmp_path, tokenizer, golden):
    from transformers import GlmForCausalLM

    weights = load_model(TINY, dtype="float32", device="cpu", progress=False)
    local = LocalModel(weights, tokenizer, relayout=False)
    case = golden[2]
    "".join(local._stream(case["input_ids"], GenerationParams(**GREEDY)))
    assert local.last_stats.output_ids == case["greedy_new_tokens"]
    assert all(p.is_contiguous() for p in weights.parameters())
    weights.save_pretrained(tmp_path)
    again = LocalModel(GlmForCausalLM.from_pretrained(tmp_path), tokenizer)
    "".join(again._stream(case["input_ids"], GenerationParams(**GREEDY)))
    assert again.last_stats.output_ids == case["greedy_new_tokens"]


@pytest.mark.parametrize("native", ["1", "0"], ids=["glm-agent-kernel", "onednn-packed"])
def test_bfloat16_weights_decode_as_transformers_does(tokenizer, native, monkeypatch, request):
    """In bfloat16 on CPU the lean engine decodes on glm-agent's kernel (weights untouched) or packs the
    weights for oneDNN; tokens and the model's own forward are unchanged either way."""
    from glm_agent._cpu import native as _native
    from glm_agent.engine._native_linear import NativeBf16Linear
    from glm_agent.engine._packed_linear import PackedLinear, packing_available

    monkeypatch.setenv("GLM_AGENT_NATIVE_KERNELS", native)
    _native.native_kernels.cache_clear()
    request.addfinalizer(_native.native_kernels.cache_clear)  # the tests after this one see the real setting

    weights = load_model(TINY, dtype="bfloat16", device="cpu", progress=False)
    messages = [{"role": "user", "content": "What is the weather in Paris and in 北京?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    tensor = torch.tensor([ids])
    with torch.inference_mode():
        before = weights(tensor).logits
        generated = weights.generate(tensor, do_sample=False, max_new_tokens=24, eos_token_id=None, pad_token_id=0)
    local = LocalModel(weights, tokenizer, temperature=0, max_new_tokens=24)
    local.stop_ids = frozenset()
    "".join(local.stream(messages))
    theirs = generated[0, len(ids) :].tolist()
    ours = local.last_stats.output_ids
    # bfloat16 rounds differently in another summation order (our kernels, one attention call for both
    # KV heads): the tokens may part only where transformers' own top two logits are within rounding
    with torch.inference_mode():
        logits = weights(torch.tensor([ids + theirs])).logits[0, len(ids) - 1 : -1].float()
    top = logits.topk(2).values
    parted = next((j for j, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), None)
    assert parted is None or top[parted, 0] - top[parted, 1] <= 0.04, (parted, ours, theirs)
    # every step agrees up to rounding: our engine's logits along transformers' tokens (teacher forced)
    engine = local._engine.runner
    engine.crop(0)
    forced = torch.stack([engine.forward(ids), *(engine.forward([token]) for token in theirs[:-1])])
    assert (forced - logits).abs().max() <= 0.03 * logits.abs().max(), (forced - logits).abs().max()
    assert (forced.argmax(-1) == logits.argmax(-1)).float().mean() >= 0.75  # parting only at near-ties
    if native == "1" and _native.native_kernels() is not None:
        assert isinstance(engine.lm_head, NativeBf16Linear) and isinstance(engine.layers[0][1], NativeBf16Linear)
        assert _native.native_kernels().path.stem in engine.kv_layout  # stored keys and values name the kernel
        assert isinstance(weights.lm_head, torch.nn.Linear)  # the model keeps plain weights
    elif packing_available(torch.bfloat16):
        assert "kernel" not in engine.kv_layout
        assert isinstance(weights.lm_head, PackedLinear)
        assert isinstance(weights.model.layers[0].self_attn.q_proj.fused, PackedLinear)
    with torch.inference_mode():
        assert torch.equal(weights(tensor).logits, before)
    again = LocalModel(weights, tokenizer, temperature=0, max_new_tokens=24)  # a second engine on packed weights
    again.stop_ids = frozenset()
    "".join(again.stream(messages))
    assert again.last_stats.output_ids == local.last_stats.output_ids
