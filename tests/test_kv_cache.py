"""The KV cache for every conversation (issue 22): the block store, its budget, the prompt cache on disk.

Unit tests drive :class:`KVStore` and :class:`PromptCache` with small tensors; the rest run the
tiny real checkpoint, in this process and in worker processes (``tests/prompt_cache_worker.py``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from glm_agent.chatglm3 import ChatGLM3Tokenizer  # noqa: E402
from glm_agent.chatglm3.checkpoint import load_model  # noqa: E402
from glm_agent.engine import KVStore, PromptCache  # noqa: E402
from glm_agent.engine._prompt_cache import FORMAT  # noqa: E402
from glm_agent.models import LocalModel  # noqa: E402
from tests._data import REPO, needs_tiny_checkpoint  # noqa: E402
from tests._data import TINY_CHECKPOINT as TINY  # noqa: E402
from tests.kv_conversations import SYSTEM, conversation  # noqa: E402

GREEDY = {"temperature": 0, "max_new_tokens": 12}
BLOCK = 4


# -- the block store ---------------------------------------------------------------------------
def fake_kv(ids: list[int]):
    """Keys and values that encode their ids, so a wrong block shows: [layers=1, 2, kv=1, T, dim=2]."""
    values = torch.tensor(ids, dtype=torch.float32)
    return values.view(1, 1, 1, -1, 1).expand(1, 2, 1, -1, 2).contiguous()


def reader(ids: list[int]):
    def read(start: int, end: int):
        return fake_kv(ids[start:end])

    return read


def new_store(budget_blocks: int, reserved: int = 0) -> KVStore:
    block_bytes = fake_kv([0] * BLOCK).numel() * 4
    return KVStore(
        block_size=BLOCK, budget_bytes=budget_blocks * block_bytes, block_bytes=block_bytes, reserved=lambda: reserved
    )


def test_store_shares_prefixes_and_returns_exact_blocks():
    store = new_store(100)
    a = list(range(10, 30))  # 5 blocks
    b = [*a[:12], 99, 98, 97, 96, 95, 94, 93, 92]  # shares 3 blocks
    store.insert(a, reader(a))
    store.insert(b, reader(b))
    assert store.blocks == 5 + 2  # the shared start is held once
    chain = store.match([*b, 1, 2, 3])
    assert [blk.ids for blk in chain] == [tuple(b[i : i + BLOCK]) for i in range(0, 20, BLOCK)]
    for i, blk in enumerate(chain):
        assert torch.equal(blk.kv, fake_kv(b[i * BLOCK : (i + 1) * BLOCK]))
    assert chain[0] is store.match(a)[0]  # the same block object, no copy
    # a prompt sharing part of a block uses that part
    partial = store.partial(store.match([*a[:9], 7, 7, 7]), [*a[:9], 7, 7, 7])
    assert partial is not None and partial[1] == 1 and partial[0].ids == tuple(a[8:12])
    assert store.match([5, 6, 7, 8, 9]) == []


def test_store_evicts_least_recently_used_leaves_and_never_a_pinned_block():
    store = new_store(6)
    a = [1] * 8 + [2] * 8  # 4 blocks
    b = [1] * 8 + [3] * 8  # shares 2
    store.insert(a, reader(a))
    store.insert(b, reader(b))
    assert store.blocks == 6
    pinned = store.match(a)
    store.pin(pinned)
    c = [4] * 16
    store.insert(c, reader(c))  # needs 4 blocks: b's own 2 go (least recent, unpinned); a is pinned
    assert len(store.match(a)) == 4 and len(store.match(b)) == 2
    assert store.bytes <= store.budget_bytes + 2 * store.block_bytes  # over only by what is pinned
    store.unpin(pinned)
    store.evict()  # the asserts above used a and b since c was stored: c's last blocks go first
    assert store.bytes <= store.budget_bytes
    assert len(store.match(c)) == 2 and len(store.match(a)) == 4


def test_store_budget_holds_under_churn_and_counts_the_working_buffer():
    rng = random.Random(0)
    store = new_store(20, reserved=0)
    shared = [rng.randrange(1000) for _ in range(12)]
    for n in range(300):  # many short conversations on one start
        ids = shared + [rng.randrange(1000) for _ in range(rng.randrange(1, 30))]
        chain = store.match(ids)
        store.pin(chain)
        store.insert(ids, reader(ids))
        assert store.bytes <= store.budget_bytes + len(chain) * store.block_bytes
        store.unpin(chain)
        store.evict()
        assert store.bytes <= store.budget_bytes, n
    assert len(store.match(shared)) == 3  # the shared start is used most and stays
    buffered = new_store(20, reserved=15 * new_store(1).block_bytes)
    ids = list(range(80))
    buffered.insert(ids, reader(ids))
    assert buffered.blocks == 5  # 20 - 15 held by the working buffer


# -- the prompt cache on disk --------------------------------------------------------------------
def test_prompt_cache_round_trip_chains_and_caps(tmp_path):
    cache = PromptCache(tmp_path, fingerprint="f1", block_size=BLOCK, max_bytes=10**9)
    ids = list(range(50, 70))  # 5 blocks
    assert cache.save(ids[:8], reader(ids)) == 8
    assert cache.save(ids, reader(ids)) == 12  # only what is new: a segment chained to the first file
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    segments = cache.load([*ids, 1, 2], longer_than=0, limit=21)
    assert [(s.start, s.end) for s in segments] == [(0, 8), (8, 20)]
    assert torch.equal(torch.cat([s.kv for s in segments], dim=3), fake_kv(ids))
    assert cache.load(ids[:8] + [0] * 12, longer_than=0, limit=20)[-1].end == 8
    assert cache.load(ids, longer_than=8, limit=12) == []  # nothing longer than what the caller has
    # a size cap removes the least recently used files
    small = PromptCache(tmp_path, fingerprint="f1", block_size=BLOCK, max_bytes=1)
    other = [9] * 8
    small.save(other, reader(other))
    assert len(list(tmp_path.glob("*.safetensors"))) == 0  # the cap is below one file: nothing stays
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "other format", "other fingerprint", "other ids"])
def test_a_bad_file_is_ignored_with_one_warning_and_removed(tmp_path, caplog, damage):
    cache = PromptCache(tmp_path, fingerprint="f1", block_size=BLOCK, max_bytes=10**9)
    ids = list(range(16))
    cache.save(ids, reader(ids))
    (path,) = tmp_path.glob("*.safetensors")
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) - 9]
    elif damage == "bit-flipped":
        data[-3] ^= 0x10
    else:
        from safetensors.torch import load, save

        header_size = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_size])["__metadata__"]
        tensors = load(bytes(data))
        if damage == "other format":
            meta["format"] = "glm-agent-kv/0"
        elif damage == "other fingerprint":
            meta["fingerprint"] = "f2"
        else:
            tensors["ids"] = tensors["ids"].flip(0).contiguous()
        data = bytearray(save(tensors, metadata=meta))
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="glm_agent"):
        assert cache.load(ids, longer_than=0, limit=16) == []
        assert cache.load(ids, longer_than=0, limit=16) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "prefix is computed" in warnings[0].getMessage()
    assert not path.exists()
    assert cache.save(ids, reader(ids)) == 16  # written again, whole
    assert cache.load(ids, longer_than=0, limit=16)[0].end == 16


def test_an_unusable_directory_turns_the_prompt_cache_off_with_a_warning(tmp_path, caplog):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with caplog.at_level(logging.WARNING, logger="glm_agent"):
        cache = PromptCache(not_a_dir / "cache", fingerprint="f", block_size=BLOCK, max_bytes=10**9)
    assert not cache.enabled and "cannot use the prompt cache directory" in caplog.text
    ids = list(range(8))
    assert cache.save(ids, reader(ids)) == 0 and cache.load(ids, longer_than=0, limit=8) == []


def test_the_file_format_is_plain_safetensors(tmp_path):
    cache = PromptCache(tmp_path, fingerprint="f1", block_size=BLOCK, max_bytes=10**9)
    ids = list(range(8))
    cache.save(ids, reader(ids))
    (path,) = tmp_path.glob("*.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        assert set(handle.keys()) == {"ids", "kv"} and handle.metadata()["format"] == FORMAT
    assert not os.access(path, os.X_OK)


# -- the tiny checkpoint -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer() -> ChatGLM3Tokenizer:
    return ChatGLM3Tokenizer.from_pretrained(TINY)


@pytest.fixture(scope="module")
def weights():
    return load_model(TINY, dtype="float32", device="cpu", progress=False)


def fresh_ids(weights, tokenizer, messages) -> list[int]:
    fresh = LocalModel(weights, tokenizer, prefix_cache=False, **GREEDY)
    "".join(fresh.stream(messages))
    assert fresh.last_stats is not None
    return fresh.last_stats.output_ids


@needs_tiny_checkpoint
def test_interleaved_conversations_reuse_their_history_and_the_shared_start(weights, tokenizer):
    model = LocalModel(weights, tokenizer, **GREEDY)
    system = len(tokenizer.apply_chat_template([SYSTEM], add_generation_prompt=False))
    turns: dict[int, list[str]] = {q: [] for q in range(3)}
    previous: dict[int, int] = {}
    for turn in range(3):
        for q in range(3):  # round robin: each conversation's cache was overwritten by the others' in between
            messages = conversation(q, turns[q])
            text = "".join(model.stream(messages))
            stats = model.last_stats
            assert stats is not None
            assert stats.output_ids == fresh_ids(weights, tokenizer, messages), (turn, q)
            if (turn, q) == (0, 0):
                assert stats.reused_tokens == 0 and stats.reused_from == ""
            else:
                assert stats.reused_tokens >= (previous.get(q, system)), (turn, q)
                assert stats.reused_from == "memory"
            assert stats.prefill_tokens == stats.prompt_tokens - stats.reused_tokens
            previous[q] = stats.prompt_tokens
            turns[q].append(text)
    assert model.kv_store is not None and model.kv_store.blocks > 0


@needs_tiny_checkpoint
def test_a_small_budget_evicts_and_the_answers_stay_the_same(weights, tokenizer):
    model = LocalModel(weights, tokenizer, kv_cache_bytes="600KiB", **GREEDY)
    store = model.kv_store
    assert store is not None
    for q in range(8):
        messages = conversation(q)
        "".join(model.stream(messages))
        assert model.last_stats is not None and model.last_stats.output_ids == fresh_ids(weights, tokenizer, messages)
        assert store.bytes + model._cache._kv.buffer_bytes() <= store.budget_bytes
    assert store.evicted > 0


@needs_tiny_checkpoint
@pytest.mark.parametrize(
    ("dtype", "quantize"),
    [
        ("float32", None),
        ("bfloat16", None),
        ("float32", "int8"),
        ("float32", "int4"),
        ("bfloat16", "int8"),
        ("bfloat16", "int4"),
    ],
)
def test_logits_after_a_reused_prefix_match_a_fresh_prefill(tokenizer, dtype, quantize):
    weights = load_model(TINY, dtype=dtype, device="cpu", quantize=quantize, group_size=32, progress=False)
    model = LocalModel(weights, tokenizer)
    cache = model._cache
    a, b = (tokenizer.apply_chat_template(conversation(q), add_generation_prompt=True) for q in (1, 2))
    feeding = cache.prepare(a)
    cache.runner.forward(feeding)
    cache.extend(feeding)
    cache.finish()
    cache.reset()  # the buffer is empty: what is reused comes from the store
    feeding = cache.prepare(b)
    reused = len(b) - len(feeding)
    assert cache.source == "memory" and reused >= len(
        tokenizer.apply_chat_template([SYSTEM], add_generation_prompt=False)
    )
    got = cache.runner.forward(feeding)
    cache.reset()
    cache.runner.forward(b[:reused])
    same_steps = cache.runner.forward(b[reused:])
    assert torch.equal(got, same_steps)  # stored keys and values are exact copies
    cache.reset()
    one_pass = cache.runner.forward(b)
    tolerance = 1e-4 if dtype == "float32" else 0.05  # bfloat16 products round differently per row count
    assert torch.allclose(got, one_pass, atol=tolerance, rtol=0)
    assert got.dtype == torch.float32


def run_worker(cache: Path, *args: str, check: bool = True) -> tuple[list[dict], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.prompt_cache_worker", str(cache), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


@needs_tiny_checkpoint
@pytest.mark.slow
def test_a_prompt_cache_written_by_one_process_is_used_by_another(tmp_path, weights, tokenizer):
    cache = tmp_path / "cache"
    (first,), _ = run_worker(cache, "--question", "1")
    assert first["source"] == ""
    (second,), _ = run_worker(cache, "--question", "1")
    assert second["source"] == "disk" and second["reused"] >= first["reused"]
    (other,), _ = run_worker(cache, "--question", "2")  # another conversation: the system prompt from disk
    system = len(tokenizer.apply_chat_template([SYSTEM], add_generation_prompt=False))
    assert other["source"] == "disk" and other["reused"] >= system // 16 * 16
    for answer, question in ((first, 1), (second, 1), (other, 2)):
        assert answer["ids"] == fresh_ids(weights, tokenizer, conversation(question))
    # in this process too: a LocalModel on the same weights starts from the files
    model = LocalModel(weights, tokenizer, prompt_cache_dir=cache, **GREEDY)
    "".join(model.stream(conversation(2)))
    assert model.last_stats is not None and model.last_stats.reused_from == "disk"


@needs_tiny_checkpoint
@pytest.mark.parametrize("case", ["other weights", "other quantization"])
def test_files_of_other_weights_or_quantization_are_not_used(tmp_path, weights, tokenizer, case):
    cache = tmp_path / "cache"
    writer = LocalModel(weights, tokenizer, prompt_cache_dir=cache, **GREEDY)
    "".join(writer.stream(conversation(1)))
    files = sorted(cache.iterdir())
    if case == "other weights":  # same path, same shapes, one weight changed a little
        other = load_model(TINY, dtype="float32", device="cpu", progress=False)
        with torch.no_grad():
            other.model.layers[0].mlp.down_proj.weight.mul_(1.01)
    else:
        other = load_model(TINY, dtype="float32", device="cpu", quantize="int8", group_size=32, progress=False)
    model = LocalModel(other, tokenizer, prompt_cache_dir=cache, **GREEDY)
    "".join(model.stream(conversation(1)))
    assert model.last_stats is not None and model.last_stats.reused_from == ""
    assert model.last_stats.output_ids == fresh_ids(other, tokenizer, conversation(1))
    assert set(files) < set(cache.iterdir())  # its own files beside the first model's


@needs_tiny_checkpoint
@pytest.mark.slow
def test_a_full_disk_falls_back_to_computing_with_one_warning(tmp_path, weights, tokenizer):
    cache = tmp_path / "cache"
    answers, stderr = run_worker(cache, "--file-size-limit", "2048", "--question", "2", "--repeat", "2")
    assert len(answers) == 2 and answers[0]["ids"] == answers[1]["ids"]
    answer = answers[0]
    assert answer["source"] == ""
    assert "cannot write to the prompt cache" in stderr and stderr.count("prompt cache:") == 1, stderr
    assert answer["ids"] == fresh_ids(weights, tokenizer, conversation(2))
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]


@needs_tiny_checkpoint
@pytest.mark.slow
def test_two_processes_writing_one_directory_leave_it_consistent(tmp_path, weights, tokenizer):
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "tests.prompt_cache_worker", str(cache), "--repeat", "3"]
    procs = [
        subprocess.Popen(
            [*command, "--question", str(q)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for q in (3, 4)
    ]
    try:
        outputs = [proc.communicate(timeout=600) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert "prompt cache:" not in "".join(err for _, err in outputs)
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]
    for q in (3, 4):
        (answer,), stderr = run_worker(cache, "--question", str(q))
        assert answer["source"] == "disk" and "prompt cache:" not in stderr
        assert answer["ids"] == fresh_ids(weights, tokenizer, conversation(q))


@needs_tiny_checkpoint
def test_damaged_files_in_a_shared_directory_give_the_same_answers(tmp_path, weights, tokenizer, caplog):
    cache = tmp_path / "cache"
    writer = LocalModel(weights, tokenizer, prompt_cache_dir=cache, **GREEDY)
    "".join(writer.stream(conversation(5)))
    for path in cache.glob("*.safetensors"):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    reader_model = LocalModel(weights, tokenizer, prompt_cache_dir=cache, **GREEDY)
    with caplog.at_level(logging.WARNING, logger="glm_agent"):
        "".join(reader_model.stream(conversation(5)))
    assert reader_model.last_stats is not None and reader_model.last_stats.reused_from != "disk"
    assert reader_model.last_stats.output_ids == fresh_ids(weights, tokenizer, conversation(5))
    assert "damaged" in caplog.text


@needs_tiny_checkpoint
def test_warm_computes_the_system_prompt_ahead(weights, tokenizer, tmp_path):
    model = LocalModel(weights, tokenizer, prompt_cache_dir=tmp_path, **GREEDY)
    stats = model.warm([SYSTEM])
    system = len(tokenizer.apply_chat_template([SYSTEM], add_generation_prompt=False))
    assert stats.prefill_tokens == system and stats.reused_tokens == 0
    assert model.warm([SYSTEM]).reused_tokens == system  # already there
    "".join(model.stream(conversation(7)))
    assert model.last_stats is not None and model.last_stats.reused_tokens >= system
    assert any(tmp_path.glob("*.safetensors"))
    other = LocalModel(
        load_model(TINY, dtype="float32", device="cpu", progress=False), tokenizer, prompt_cache_dir=tmp_path
    )
    assert other.warm([SYSTEM]).reused_tokens == system // 16 * 16  # whole blocks from disk


@needs_tiny_checkpoint
def test_the_openai_server_reports_cached_tokens(weights, tokenizer):
    openai = pytest.importorskip("openai")
    from glm_agent.server import BackgroundServer, create_app

    model = LocalModel(weights, tokenizer)
    system = {"role": "system", "content": SYSTEM["content"]}
    tools = [{"type": "function", "function": tool} for tool in SYSTEM["tools"]]
    with BackgroundServer(create_app(model, tokenizer)) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused")

        def ask(question: int, **extra):
            return client.chat.completions.create(
                model=model.name,
                messages=[system, {"role": "user", "content": f"Question {question}?"}],
                tools=tools,
                temperature=0,
                max_tokens=4,
                **extra,
            )

        first = ask(1)
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        second = ask(2)
        cached = second.usage.prompt_tokens_details.cached_tokens
        assert cached == model.last_stats.reused_tokens and cached >= 16 * 20
        assert cached < second.usage.prompt_tokens
        health = httpx.get(f"{srv.url}/health").json()
        assert health["kv_cache"]["blocks"] > 0 and health["kv_cache"]["budget_bytes"] == 2**30
        chunks = list(ask(3, stream=True, stream_options={"include_usage": True}))
        usage = chunks[-1].usage
        assert usage is not None and usage.prompt_tokens_details.cached_tokens >= cached


@needs_tiny_checkpoint
def test_the_web_ui_warms_its_system_prompts_and_its_prompt_view_shows_the_cache(weights, tokenizer):
    pytest.importorskip("gradio")
    from glm_agent.tools import ToolRegistry, tool
    from glm_agent.web import ModelSource, SessionManager, WebConfig
    from glm_agent.web._app import render_prompt

    @tool
    def lookup(query: str) -> str:
        """Look a thing up.

        Args:
            query: what to look for
        """
        return query

    model = LocalModel(weights, tokenizer, temperature=0, max_new_tokens=4)
    config = WebConfig(ModelSource(model), tools=ToolRegistry([lookup]))
    manager = SessionManager(config)
    try:
        assert manager.prompts_warmed.wait(120)
        assert model.kv_store is not None and model.kv_store.blocks > 0
        session = manager.open("tab")
        session.configure(mode="Tools")
        session.start("What is in the catalogue?")
        assert session.wait(120)
        system = len(tokenizer.apply_chat_template([config.system_message("Tools")], add_generation_prompt=False))
        stats = session.last_generation()
        assert stats is not None and stats.reused_tokens >= system and stats.reused_from == "memory"
        view = render_prompt(session)
        assert f"{stats.reused_tokens} of its {stats.prompt_tokens} prompt tokens came from the cache" in view
    finally:
        manager.close_all()


@pytest.mark.slow
def test_resident_memory_stays_within_the_budget_however_many_conversations_come_and_go():
    budget = 48 * 2**20
    proc = subprocess.run(
        [sys.executable, "-m", "tests.kv_memory_worker", str(budget), "150"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["churned"] > 10 * budget and out["evicted"] > 0  # far more came and went than fits
    assert out["store_bytes"] <= budget
    assert out["peak"] - out["start"] <= 1.1 * budget, out
