"""Continuous batching in the local engine: sequences join and leave between steps and get their tokens alone."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from glm_agent.chatglm3 import ChatGLM3Tokenizer  # noqa: E402
from glm_agent.chatglm3.checkpoint import load_model  # noqa: E402
from glm_agent.models import LocalModel  # noqa: E402
from glm_agent.web._queue import ModelQueue  # noqa: E402
from tests._data import TINY_CHECKPOINT as TINY  # noqa: E402
from tests._data import needs_tiny_checkpoint  # noqa: E402
from tests._native import needs_native  # noqa: E402

pytestmark = needs_tiny_checkpoint
PRECISIONS = [("float32", None), ("bfloat16", None), ("bfloat16", "int8"), ("bfloat16", "int4")]


@pytest.fixture(scope="module")
def tokenizer() -> ChatGLM3Tokenizer:
    return ChatGLM3Tokenizer.from_pretrained(TINY)


def prompts(seed: int, lengths: list[int]) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, 60000) for _ in range(n)] for n in lengths]


def alone(model: LocalModel, prompt: list[int], **params) -> list[int]:
    stream = model.stream_ids(prompt, temperature=0, **params)
    "".join(stream)
    return list(stream.stats.output_ids)


class Joiner:
    """Runs generations in threads; each starts when an earlier one has reached a point (events, not time)."""

    def __init__(self, model: LocalModel) -> None:
        self.model = model
        self.tokens: dict[int, list[int]] = {}
        self.stats: dict[int, object] = {}
        self.reached: dict[tuple[int, int], threading.Event] = {}
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def point(self, index: int, tokens: int) -> threading.Event:
        return self.reached.setdefault((index, tokens), threading.Event())

    def start(self, index: int, prompt: list[int], after: threading.Event | None = None, **params) -> None:
        def run() -> None:
            try:
                if after is not None:
                    after.wait()
                stream = self.model.stream_ids(prompt, temperature=0, **params)
                self.stats[index] = stream.stats
                self.point(index, 0).set()  # submitted
                out: list[int] = []
                for _ in stream:
                    out = list(stream.stats.output_ids)
                    for (i, n), event in list(self.reached.items()):
                        if i == index and 0 < n <= len(out):
                            event.set()
                self.tokens[index] = list(stream.stats.output_ids)
            except BaseException as exc:
                self.errors.append(exc)
            finally:
                for (i, _), event in list(self.reached.items()):
                    if i == index:
                        event.set()  # never leave a waiter behind

        thread = threading.Thread(target=run)
        self.threads.append(thread)
        thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join()
        assert not self.errors, self.errors


@pytest.mark.parametrize(("dtype", "quantize"), PRECISIONS)
def test_sequences_joining_and_leaving_get_the_tokens_they_get_alone(tokenizer, dtype, quantize):
    weights = load_model(TINY, dtype=dtype, device="cpu", quantize=quantize, group_size=32, progress=False)
    model = LocalModel(weights, tokenizer, prefix_cache=False, max_batch=4, prefill_step_tokens=10_000)
    cases = prompts(1, [7, 30, 55, 12, 90, 3])
    lengths = [12, 6, 9, 14, 5, 8]
    expected = [alone(model, p, max_new_tokens=n) for p, n in zip(cases, lengths, strict=True)]
    run = Joiner(model)
    run.start(0, cases[0], max_new_tokens=lengths[0])
    run.start(1, cases[1], after=run.point(0, 0), max_new_tokens=lengths[1])  # while 0 prefills or starts
    run.start(2, cases[2], after=run.point(0, 1), max_new_tokens=lengths[2])  # at 0's first token
    run.start(3, cases[3], after=run.point(1, 6), max_new_tokens=lengths[3])  # as 1 stops (its last token)
    run.start(4, cases[4], after=run.point(2, 3), max_new_tokens=lengths[4])  # mid-decode of 2
    run.start(5, cases[5], after=run.point(3, 2), max_new_tokens=lengths[5])  # fills a seat 1 left
    run.join()
    assert [run.tokens[i] for i in range(6)] == expected
    sizes = [max(run.stats[i].batch_sizes) for i in range(6)]
    assert max(sizes) > 1 and all(len(run.stats[i].batch_sizes) == len(expected[i]) for i in range(6))


def test_a_prompt_prefilled_in_small_chunks_beside_decoding_gets_its_tokens_alone(tokenizer):
    weights = load_model(TINY, dtype="float32", device="cpu", progress=False)
    model = LocalModel(weights, tokenizer, prefix_cache=False, max_batch=3, prefill_step_tokens=5)
    long, short = prompts(2, [120, 9])
    expected = [alone(model, short, max_new_tokens=30), alone(model, long, max_new_tokens=6)]
    run = Joiner(model)
    run.start(0, short, max_new_tokens=30)
    run.start(1, long, after=run.point(0, 2), max_new_tokens=6)  # 24 steps of 5 prompt tokens beside 0
    run.join()
    assert [run.tokens[0], run.tokens[1]] == expected
    assert run.stats[0].batch_sizes.count(2) >= 20  # 0 kept decoding while 1's prompt went in


def _held_while(model: LocalModel, submit) -> None:
    """Run ``submit()`` while the engine's thread is held between steps, and let it go once every job
    ``submit`` started is waiting (so they join in the same step)."""
    gate = threading.Event()
    held = threading.Thread(target=model._engine.call, args=(gate.wait,))
    held.start()
    expected = submit()
    for _ in range(10_000):  # the generations' threads submit their jobs
        if model.engine_info()["waiting"] == expected:
            break
        threading.Event().wait(0.01)
    assert model.engine_info()["waiting"] == expected
    gate.set()
    held.join()


@pytest.mark.parametrize(("dtype", "quantize"), [("float32", None), ("bfloat16", None), ("bfloat16", "int4")])
def test_prompts_that_wait_together_share_the_prefill_and_decode_together(tokenizer, dtype, quantize):
    weights = load_model(TINY, dtype=dtype, device="cpu", quantize=quantize, group_size=32, progress=False)
    cases = prompts(7, [40, 30, 70])
    new = [5, 7, 6]
    for share in (True, False):
        model = LocalModel(weights, tokenizer, prefix_cache=False, max_batch=4, share_prefill=share)
        model._engine.runner.prefill_chunk = 48  # three steps of prompt tokens for the three prompts' 140
        expected = [alone(model, p, max_new_tokens=n) for p, n in zip(cases, new, strict=True)]
        run = Joiner(model)

        def submit(run=run) -> int:
            for i in range(3):
                run.start(i, cases[i], max_new_tokens=new[i])
            return 3

        _held_while(model, submit)
        run.join()
        assert [run.tokens[i] for i in range(3)] == expected  # several chunks a step: each prompt as alone
        first = [run.stats[i].batch_sizes[0] for i in range(3)]
        if share:  # 48 tokens a step in shares of what each has left: all three finish in the third step
            assert first == [3, 3, 3] and set(run.stats[0].batch_sizes) == {3}  # then decode together
        else:  # in the order they came: the first prompt alone, then the others beside its decoding
            assert first[0] == 1 and first != [3, 3, 3]


def test_max_tokens_beside_a_stop_string_and_a_stop_id(tokenizer):
    weights = load_model(TINY, dtype="bfloat16", device="cpu", quantize="int4", group_size=32, progress=False)
    model = LocalModel(weights, tokenizer, max_batch=4)
    a, b = prompts(3, [20, 25])
    full_b = model.stream_ids(b, temperature=0, max_new_tokens=12)
    text_b = "".join(full_b)
    stop = text_b[len(text_b) // 2 : len(text_b) // 2 + 2]
    assert stop.strip()
    expected_a = alone(model, a, max_new_tokens=3)
    run = Joiner(model)
    run.start(0, a, max_new_tokens=3)
    run.start(1, b, after=run.point(0, 0), max_new_tokens=12, stop=[stop])
    run.join()
    assert run.tokens[0] == expected_a and run.stats[0].finish_reason == "length"
    assert run.stats[1].finish_reason == "stop" and len(run.tokens[1]) < 12


def test_cancelling_mid_prefill_and_mid_decode_leaves_the_others_and_the_cache_right(tokenizer):
    weights = load_model(TINY, dtype="float32", device="cpu", progress=False)
    model = LocalModel(weights, tokenizer, max_batch=4, prefill_step_tokens=2)
    fresh = LocalModel(weights, tokenizer, prefix_cache=False)
    runner, long, other = prompts(4, [10, 300, 15])
    expected = alone(fresh, runner, max_new_tokens=40)
    first = model.stream_ids(runner, temperature=0, max_new_tokens=40)
    texts = [next(first)]  # decoding now
    slow = model.stream_ids(long, temperature=0, max_new_tokens=5)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(slow))
    reader.start()  # 150 steps of 2 prompt tokens beside the first sequence
    while not slow.stats.batch_sizes and len(first.stats.output_ids) < 6:
        texts.append(next(first))  # the first keeps decoding while the long prompt goes in
    slow.cancel()  # from this thread, while the reader waits inside the stream: mid-prefill
    reader.join()
    assert got == [] and slow.stats.finish_reason == "closed" and slow.stats.output_ids == []
    third = model.stream_ids(other, temperature=0, max_new_tokens=20)
    next(third)
    next(third)
    third.close()  # mid-decode
    assert third.stats.finish_reason == "closed"
    texts.extend(first)
    assert first.stats.output_ids == expected
    # the cache stayed consistent: what the cancelled ones left is reused, and answers do not change
    for prompt in (long, other):
        assert alone(model, prompt, max_new_tokens=6) == alone(fresh, prompt, max_new_tokens=6)


def test_many_threads_and_asyncio_tasks_share_steps(tokenizer):
    weights = load_model(TINY, dtype="bfloat16", device="cpu", quantize="int8", progress=False)
    model = LocalModel(weights, tokenizer, max_batch=6, prefill_step_tokens=10_000)
    cases = prompts(5, [11, 23, 5, 40, 17, 8, 31, 14])
    expected = [alone(model, p, max_new_tokens=10) for p in cases]
    results: dict[int, list[int]] = {}

    def in_thread(i: int) -> None:
        results[i] = alone(model, cases[i], max_new_tokens=10)

    async def in_task(i: int) -> None:
        parts = [p async for p in model.astream([{"role": "user", "content": f"question {i}"}], temperature=0)]
        assert "".join(parts) == model.generate([{"role": "user", "content": f"question {i}"}], temperature=0)

    threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()

    async def tasks() -> None:
        await asyncio.gather(*(in_task(i) for i in range(3)))

    asyncio.run(tasks())
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(len(cases))] == expected
    assert model.engine_info() == {"running": 0, "waiting": 0, "max_batch": 6}


def test_one_caller_runs_as_before_one_sequence_per_step(tokenizer):
    weights = load_model(TINY, dtype="float32", device="cpu", progress=False)
    model = LocalModel(weights, tokenizer)
    stream = model.stream_ids(prompts(6, [30])[0], temperature=0, max_new_tokens=8)
    "".join(stream)
    assert stream.stats.batch_sizes == [1] * len(stream.stats.output_ids)
    assert model.max_batch == 8 and LocalModel(weights, tokenizer, engine="transformers").max_batch == 1


def test_bad_engine_settings_are_refused(tokenizer):
    weights = load_model(TINY, dtype="float32", device="cpu", progress=False)
    for bad, match in [
        ({"max_batch": 0}, "max_batch"),
        ({"step_ratio": 1.0}, "step_ratio"),
        ({"prefill_step_tokens": 0}, "prefill_step_tokens"),
    ]:
        with pytest.raises(ValueError, match=match):
            LocalModel(weights, tokenizer, **bad)


def test_the_web_queue_waits_only_beyond_the_batch():
    queue = ModelQueue(slots=2)
    told: list[int] = []
    inside = threading.Barrier(3)
    release = threading.Event()

    def hold() -> None:
        with queue.turn(lambda ahead: None, lambda: False):
            inside.wait()
            release.wait()

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for thread in holders:
        thread.start()
    inside.wait()  # two run at once: the batch is full

    def third() -> None:
        with queue.turn(told.append, lambda: False):
            pass

    waiter = threading.Thread(target=third)
    waiter.start()
    while not told:
        threading.Event().wait(0.01)
    release.set()
    for thread in [*holders, waiter]:
        thread.join()
    assert told == [1, 0]  # one ahead of it while the batch was full, then its turn


def test_the_server_runs_requests_together_and_says_so(tokenizer):
    import openai

    from glm_agent.server import BackgroundServer, create_app

    weights = load_model(TINY, dtype="bfloat16", device="cpu", quantize="int4", group_size=32, progress=False)
    model = LocalModel(weights, tokenizer, max_batch=3, prefill_step_tokens=10_000)
    app = create_app(model, tokenizer)
    assert app.state.glm.gate.max_concurrency == 3  # the server's concurrency follows the batch
    srv = BackgroundServer(app).start()
    try:
        assert httpx_get(srv.url + "/health")["engine"] == {"running": 0, "waiting": 0, "max_batch": 3}
        api = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        questions = [f"Question number {i}?" for i in range(5)]

        def ask(i: int) -> str:
            reply = api.chat.completions.create(
                model=model.name, messages=[{"role": "user", "content": questions[i]}], temperature=0, max_tokens=8
            )
            return reply.choices[0].message.content or ""

        one_at_a_time = [ask(i) for i in range(len(questions))]
        answers: dict[int, str] = {}
        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, ask(i))) for i in range(len(questions))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [answers[i] for i in range(len(questions))] == one_at_a_time
        metrics = httpx_get(srv.url + "/metrics", text=True)
        assert 'glm_agent_engine_sequences{state="running"} 0.0' in metrics
    finally:
        srv.stop()


def httpx_get(url: str, text: bool = False):
    import httpx

    response = httpx.get(url, timeout=30)
    response.raise_for_status()
    return response.text if text else response.json()


def test_reset_cache_while_generating_keeps_the_running_sequence(tokenizer):
    weights = load_model(TINY, dtype="float32", device="cpu", progress=False)
    model = LocalModel(weights, tokenizer, max_batch=2)
    (prompt,) = prompts(7, [25])
    expected = alone(LocalModel(weights, tokenizer, prefix_cache=False), prompt, max_new_tokens=12)
    stream = model.stream_ids(prompt, temperature=0, max_new_tokens=12)
    next(stream)
    model.reset_cache()  # between its steps: the store and the idle seats go, its own buffer stays
    "".join(stream)
    assert stream.stats.output_ids == expected
    assert model.cache_info()["blocks"] > 0  # what it computed was stored when it finished


_EXIT_MID_GENERATION = """
import sys, threading
from glm_agent.chatglm3 import ChatGLM3Tokenizer
from glm_agent.chatglm3.checkpoint import load_model
from glm_agent.models import LocalModel
model = LocalModel(load_model(sys.argv[1], dtype="float32", device="cpu", progress=False), ChatGLM3Tokenizer(sys.argv[2]))
model.stop_ids = frozenset()
streams = [model.stream_ids([100 + i] * (40 + 30 * i), temperature=0, max_new_tokens=4000) for i in range(3)]
next(streams[0])  # the engine is stepping: one sequence decodes, another prefills, one waits
print("exiting", flush=True)
"""


def test_the_interpreter_exits_cleanly_while_the_engine_steps():
    """A script that ends mid-generation stops the engine's thread at exit (a daemon thread killed inside
    torch as the interpreter finalizes aborts the process: "terminate called without an active exception")."""
    import subprocess
    import sys

    from tests._data import REPO, TOKENIZER

    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", _EXIT_MID_GENERATION, str(TINY), str(TOKENIZER)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0 and done.stdout == "exiting\n", done.stderr[-2000:]
        assert "terminate" not in done.stderr


def _run_choice(choice, step_seconds, steps: int, decoding: int = 4) -> list[int]:
    """Drive a thread choice with step times given per thread count; the thread count of each step."""
    used = []
    for _ in range(steps):
        threads = choice.for_step(decoding)
        choice.record(threads, decoding, step_seconds(threads))
        used.append(threads)
    return used


def test_the_thread_choice_tries_a_slower_count_ever_more_rarely():
    from glm_agent.engine._batch import _ThreadChoice

    choice = _ThreadChoice(2)
    used = _run_choice(choice, lambda threads: 1.0 if threads == 2 else 2.0, 480)  # a quiet machine
    trials = [i for i, threads in enumerate(used) if threads == 1]
    assert used[0] == 2 and choice.current == 2
    assert trials[:4] == [11, 35, 83, 179]  # after 12, then 24, 48, 96 steps
    assert len(trials) == 7  # one in 96 from then on (one in 12 would be 40)


def test_the_thread_choice_follows_a_change_of_load_and_back():
    from glm_agent.engine._batch import _ThreadChoice

    choice = _ThreadChoice(2)
    _run_choice(choice, lambda threads: 1.0 if threads == 2 else 2.0, 300)
    busy = _run_choice(choice, lambda threads: 3.5 if threads == 2 else 2.0, 200)  # a busy core: 2 threads stall
    assert busy[:2] == [2, 2] and choice.current == 1  # the running time of 2 threads passes 1 thread's
    assert busy[2:].count(2) <= 200 // 48  # trials of 2 threads, ever more rarely
    quiet = _run_choice(choice, lambda threads: 1.0 if threads == 2 else 2.0, 150)  # the other program ended
    back = quiet.index(2)
    assert back < _ThreadChoice._EXPLORE_MOST and choice.current == 2
    assert quiet[back:].count(1) <= 3  # 2 threads from the first trial on, trying 1 after 12, 24 and 48 steps


def test_the_thread_choice_stays_put_without_decoding_rows_or_adaptivity():
    from glm_agent.engine._batch import _ThreadChoice

    fixed = _ThreadChoice(2, adaptive=False)
    assert set(_run_choice(fixed, lambda threads: 1.0, 50)) == {2}
    choice = _ThreadChoice(2)
    assert {choice.for_step(0) for _ in range(50)} == {2}  # steps with a prefill chunk are not trials


def test_a_chunk_is_sized_against_a_step_with_as_many_decoding_rows(tokenizer):
    """The time a chunk may add is measured per count of decoding rows: against one row's step, the
    cost of seven rows would look like prompt tokens' and the chunks would shrink to a token a step."""
    weights = load_model(TINY, dtype="float32", device="cpu", progress=False)
    engine = LocalModel(weights, tokenizer, prefix_cache=False, max_batch=8)._engine
    engine._measure(0.100, 1, 0)  # a decode-only step of one row: 100 ms
    assert engine._chunk_size(1) == 8  # no prompt token timed yet: a first chunk of 8
    assert engine._chunk_size(7) == 0  # seven rows never ran alone: a step without a chunk, to time them
    engine._measure(0.300, 7, 0)  # seven rows: 300 ms
    engine._measure(0.400, 7, 5)  # seven rows and 5 prompt tokens: 20 ms a token
    assert engine._prefill_token_s == pytest.approx(0.020)
    assert engine._chunk_size(7) in (14, 15)  # (2 - 1) x 300 ms of room (15 but for rounding)
    assert engine._chunk_size(1) in (4, 5)  # (2 - 1) x 100 ms (5 but for rounding)
    engine._measure(0.500, 4, 3)  # beside a count never timed alone (a fixed chunk): no estimate from it
    assert engine._prefill_token_s == pytest.approx(0.020)
    engine._measure(0.600, 7, 10, apart=1)  # a chunk computed apart: a one-row step's read of the weights on top
    assert engine._prefill_token_s == pytest.approx(0.020)  # (600 - 300 - 100) ms / 10 tokens


@needs_native
def test_a_chunk_beside_decoding_rows_stays_small_enough_to_join_their_products(tokenizer):
    weights = load_model(TINY, dtype="bfloat16", device="cpu", progress=False)
    engine = LocalModel(weights, tokenizer, prefix_cache=False, max_batch=40)._engine
    rows = engine.runner.decode_rows  # 39: the bfloat16 kernel's exact rows
    assert rows > 9
    engine._measure(0.100, rows - 9, 0)
    engine._measure(0.120, rows - 9, 10)  # 2 ms a prompt token: time for 50 of them
    assert engine._chunk_size(rows - 9) == 9  # but 9 more rows still join the decoding rows' products
