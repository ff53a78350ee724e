"""The step loop that owns the model: many sequences decode together, prompts prefill in chunks between.

:class:`BatchEngine` runs in a thread of its own. A :class:`Job` (prompt ids, a sampler, stop ids,
a token limit) joins between steps and leaves between steps. Each step is one forward pass over
every running sequence: one new token for each decoding sequence (their rows share each weight's
read), plus, when a prompt is waiting, a chunk of its prefill. Decoding comes first: while others
decode, a chunk is sized so that the step takes at most ``step_ratio`` times a decode-only step
with as many decoding rows (measured as it runs, per count of rows: a count not timed yet runs one
step without a chunk first; ``prefill_step_tokens`` fixes the chunk instead); a prompt alone prefills in the
runner's full chunks, as a single generation always did. Finished, stopped and cancelled
sequences leave at the next step boundary: what their completed steps computed goes to the KV
store (a step either completes or its sequence's buffer is dropped, so nothing half-computed is
ever reused). Every sequence gets the numbers it would get alone (see ``forward_batch``).

Each running sequence holds a *seat*: a KV slot of the runner and the :class:`PrefixCache` over
it. A seat outlives its job, so a conversation's next prompt finds its last sequence in place.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from glm_agent.engine._decoding import Sampler
from glm_agent.engine._prefix_cache import PrefixCache, common_prefix_length

logger = logging.getLogger(__name__)

__all__ = ["BatchEngine", "Job", "SlotRunner", "DEFAULT_MAX_BATCH", "DEFAULT_STEP_RATIO"]

#: sequences decoded together by default: 8 rows cost 3-5 one-row products in int4/int8 on 2 cores
DEFAULT_MAX_BATCH = 8
#: a step with a prefill chunk takes at most this many times a decode-only step (time between tokens)
DEFAULT_STEP_RATIO = 2.0
_IDLE_EXIT_S = 30.0  # the loop's thread ends after this long without work (a new job starts it again)
_FIRST_CHUNK = 8  # prefill tokens per step beside decoding before the engine has measured a prompt token's cost


@dataclass
class Job:
    """One generation. The engine reports on ``events``: ``("prefilled", reused, source, prefill_tokens)``,
    ``("token", id, time)`` per chosen id (a stop id ends the job instead), ``("end", reason, error)``
    with reason ``"stop"``, ``"length"``, ``"closed"`` or ``"error"``."""

    prompt: list[int]
    sampler: Sampler
    stop_ids: frozenset[int] = frozenset()
    max_new_tokens: int = 256
    boundaries: tuple[int, ...] = ()
    warm_only: bool = False  # compute the prompt into the cache, choose no token
    events: queue.SimpleQueue[tuple[Any, ...]] = field(default_factory=queue.SimpleQueue)
    batch_sizes: list[int] = field(default_factory=list)  # sequences in each step that gave this job a token
    stop_strings: list[str] = field(default_factory=list)  # the caller's: it watches the text and cancels("stop")
    _cancel: str = ""

    def cancel(self, reason: str = "closed") -> None:
        """Leave at the next step (``"stop"``: a stop string ended it; the tokens so far are the reply)."""
        if not self._cancel:
            self._cancel = reason


class SlotRunner:
    """The runner seen through one KV slot: what a :class:`PrefixCache` needs (``length``, ``crop``,
    ``forward``, ``read_kv``, ``write_kv``); anything else is the runner's."""

    def __init__(self, runner: Any, slot: Any) -> None:
        self._runner, self.slot = runner, slot

    @property
    def length(self) -> int:
        return int(self.slot.length)

    def crop(self, length: int) -> None:
        self._runner.use(self.slot)
        self._runner.crop(length)

    def forward(self, ids: Sequence[int]) -> torch.Tensor:
        self._runner.use(self.slot)
        out: torch.Tensor = self._runner.forward(ids)
        return out

    def read_kv(self, start: int, end: int) -> torch.Tensor:
        self._runner.use(self.slot)
        out: torch.Tensor = self._runner.read_kv(start, end)
        return out

    def write_kv(self, start: int, kv: torch.Tensor) -> None:
        self._runner.use(self.slot)
        self._runner.write_kv(start, kv)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


class _Seat:
    """A KV slot and the prefix cache over it; ``slot`` is None for a runner without slots (one seat)."""

    def __init__(self, slot: Any, cache: PrefixCache) -> None:
        self.slot, self.cache = slot, cache
        self.used = time.monotonic()


class _Running:
    def __init__(self, job: Job, seat: _Seat, feeding: list[int]) -> None:
        self.job, self.seat, self.feeding = job, seat, feeding
        self.last = -1  # the token to feed next step (decoding)
        self.generated = 0

    @property
    def decoding(self) -> bool:
        return not self.feeding


class _ThreadChoice:
    """How many threads a step uses: the most that make it fastest now, measured as the engine runs.

    Threads that work in lock step wait for the slowest: when another program keeps a core busy,
    the OS takes one of ours away for whole time slices and every product waits for it (measured at
    the 6B shape in int4 on 2 cores: 3-4x slower). So decode-only steps keep a running time per
    thread count and batch size; now and then one step runs with a neighbouring count (a *trial*),
    and the fastest known count is used. A trial that leaves the choice as it was doubles the wait
    before the next (from ``_EXPLORE`` steps up to ``_EXPLORE_MOST``): on a quiet machine, where one
    thread fewer makes a step about 2x slower, trials cost 1% of the time, not 8%; a trial that
    changes the choice starts again from ``_EXPLORE``, so a change of load is found within
    ``_EXPLORE_MOST`` steps.
    """

    _EXPLORE = 12
    _EXPLORE_MOST = 96

    def __init__(self, most: int, *, adaptive: bool = True) -> None:
        self.most = max(1, most)
        self.current = self.most
        self.adaptive = adaptive and self.most > 1
        self._times: dict[tuple[int, int], float] = {}
        self._wait = self._EXPLORE  # decode-only steps from one trial to the next
        self._since = 0
        self._trials = 0

    def for_step(self, decoding: int) -> int:
        """Threads for the next step (``decoding`` = sequences of a decode-only step, 0 with prefill)."""
        if not decoding or not self.adaptive:
            return self.current
        self._since += 1
        if self._since < self._wait:
            return self.current
        self._since = 0
        self._trials += 1
        fewer, more = self.current - 1, self.current + 1
        if fewer < 1 or (more <= self.most and self._trials % 2 == 0):  # up and down in turn where both exist
            return more
        return fewer

    def record(self, threads: int, decoding: int, seconds: float) -> None:
        if not decoding or not self.adaptive:
            return
        key = (threads, decoding)
        previous = self._times.get(key)
        trial = threads != self.current  # its count's time is from the last trial, long ago: replaced, not averaged
        self._times[key] = seconds if previous is None or trial else 0.6 * previous + 0.4 * seconds
        known = {n: t for (n, d), t in self._times.items() if d == decoding}
        before, self.current = self.current, min(known, key=lambda n: (known[n], -n))
        if trial:  # back off while trials confirm the choice
            self._wait = min(2 * self._wait, self._EXPLORE_MOST) if self.current == before else self._EXPLORE


class BatchEngine:
    """Owns ``runner``; :meth:`submit` jobs from any thread. ``make_cache(runner_view)`` builds the prefix
    cache of a seat. A runner with ``forward_batch`` decodes up to ``max_batch`` sequences together;
    another runs one job at a time (the others wait)."""

    def __init__(
        self,
        runner: Any,
        make_cache: Callable[[Any], PrefixCache],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        step_ratio: float = DEFAULT_STEP_RATIO,
        prefill_step_tokens: int | None = None,
        share_prefill: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if step_ratio <= 1.0:
            raise ValueError("step_ratio must be more than 1 (a step with prefill takes longer than one without)")
        if prefill_step_tokens is not None and prefill_step_tokens < 1:
            raise ValueError("prefill_step_tokens must be at least 1")
        self.runner = runner
        self.batched = hasattr(runner, "forward_batch") and hasattr(runner, "new_slot")
        self.max_batch = max_batch if self.batched else 1
        self.step_ratio = step_ratio
        self.prefill_step_tokens = prefill_step_tokens
        self.share_prefill = share_prefill
        self._make_cache = make_cache
        first = runner.slot if self.batched else None
        self.seats = [_Seat(first, make_cache(SlotRunner(runner, first) if self.batched else runner))]
        self._idle: list[_Seat] = list(self.seats)
        self._waiting: deque[Job] = deque()
        self._running: list[_Running] = []
        self._calls: deque[tuple[Callable[[], Any], queue.SimpleQueue[tuple[Any, ...]]]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        _ENGINES.add(self)
        self._thread: threading.Thread | None = None
        self._decode_step_s: dict[int, float] = {}  # a decode-only step per count of decoding rows, measured
        self._prefill_token_s: float | None = None  # one more prefill token in a step, measured
        self.steps = 0
        # the creating thread's setting, adapted to the machine's load where the decode products are
        # glm-agent's kernels (their results do not depend on the thread count; other products' may)
        self.threads = _ThreadChoice(torch.get_num_threads(), adaptive=int(getattr(runner, "decode_rows", 1)) > 1)

    # -- from any thread --------------------------------------------------------------------
    @property
    def first_cache(self) -> PrefixCache:
        """The first seat's prefix cache (what a single conversation uses when it runs alone)."""
        return self.seats[0].cache

    def submit(self, job: Job) -> Job:
        with self._cond:
            self._waiting.append(job)
            self._wake()
        return job

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the engine's thread between steps (the runner and caches are the engine's); its result."""
        answer: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        with self._cond:
            self._calls.append((fn, answer))
            self._wake()
        ok, value = answer.get()
        if not ok:
            raise value
        return value

    def load(self) -> dict[str, int]:
        """How many sequences run and wait now."""
        with self._cond:
            return {"running": len(self._running), "waiting": len(self._waiting), "max_batch": self.max_batch}

    def stop(self, timeout: float = 120.0) -> None:
        """End every job (``closed``) and the loop's thread, after the step under way; wait for it.

        Run at interpreter exit for every engine: a daemon thread stopped inside torch or a kernel as
        the interpreter finalizes aborts the process ("terminate called without an active exception").
        """
        with self._cond:
            self._closing = True
            thread = self._thread
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _wake(self) -> None:
        if self._closing:
            raise RuntimeError("the engine has stopped (the interpreter is exiting)")
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="glm-agent-engine", daemon=True)
            self._thread.start()
        self._cond.notify()

    # -- the engine's thread ----------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_num_threads(self.threads.current)  # a new thread starts from the default, not the caller's setting
        while True:
            with self._cond:
                while not (self._waiting or self._running or self._calls or self._closing):
                    if not self._cond.wait(_IDLE_EXIT_S) and not (self._waiting or self._running or self._calls):
                        self._thread = None
                        return
                if self._closing:
                    self._close_all()
                    self._thread = None
                    return
                calls = list(self._calls)
                self._calls.clear()
            for fn, answer in calls:
                try:
                    answer.put((True, fn()))
                except BaseException as exc:  # handed to the caller, who raises it
                    answer.put((False, exc))
            self._admit()
            if self._running:
                try:
                    self._step()
                except Exception as exc:  # the step failed: every job in it ends with the error
                    logger.exception("the engine's step failed")
                    for running in list(self._running):
                        self._end(running, "error", exc)

    def _admit(self) -> None:
        while True:
            with self._cond:
                if not self._waiting or len(self._running) >= self.max_batch:
                    return
                job = self._waiting.popleft()
            if job._cancel:
                job.events.put(("end", "closed", None))
                continue
            seat = self._seat_for(job.prompt)
            if seat is None:  # every seat is busy (a runner without slots): wait for one
                with self._cond:
                    self._waiting.appendleft(job)
                return
            try:
                feeding = seat.cache.prepare([*job.prompt, 0] if job.warm_only else job.prompt)
                if job.warm_only:
                    feeding = feeding[:-1]
            except Exception as exc:
                seat.cache.reset()
                self._idle.append(seat)
                job.events.put(("end", "error", exc))
                continue
            reused = len(job.prompt) - len(feeding)
            job.events.put(("prefilled", reused, seat.cache.source if reused else "", len(feeding)))
            running = _Running(job, seat, feeding)
            with self._cond:
                self._running.append(running)
            if job.warm_only and not feeding:
                self._end(running, "length")

    def _seat_for(self, prompt: list[int]) -> _Seat | None:
        """The idle seat holding the longest start of ``prompt`` (its last sequence), else a new seat, else the
        least recently used idle one."""
        best = max(self._idle, key=lambda s: (common_prefix_length(s.cache.ids, prompt), -s.used), default=None)
        if best is not None and (common_prefix_length(best.cache.ids, prompt) or len(self.seats) >= self.max_batch):
            self._idle.remove(best)
            return best
        if len(self.seats) < self.max_batch and self.batched:
            slot = self.runner.new_slot()
            seat = _Seat(slot, self._make_cache(SlotRunner(self.runner, slot)))
            self.seats.append(seat)
            return seat
        if best is not None:
            self._idle.remove(best)
        return best

    def _chunk_size(self, decoding: int) -> int:
        full = int(getattr(self.runner, "prefill_chunk", 1024))
        if not decoding:
            return full
        if self.prefill_step_tokens is not None:
            return min(full, self.prefill_step_tokens)
        base = self._decode_step_s.get(decoding)
        if base is None:  # this many decoding rows have not run alone yet: one such step first, to time it
            return 0
        if self._prefill_token_s is None:
            return min(full, _FIRST_CHUNK)
        room = (self.step_ratio - 1.0) * base
        size = max(1, min(full, int(room / self._prefill_token_s)))
        joinable = int(getattr(self.runner, "decode_rows", 0)) - decoding
        if joinable >= 1:  # a chunk that joins the decoding rows' products adds no read of the weights
            size = min(size, joinable)
        return size

    def _step(self) -> None:
        for running in list(self._running):
            if running.job._cancel:
                self._end(running, running.job._cancel)
        decoding = [r for r in self._running if r.decoding]
        prefilling = [r for r in self._running if not r.decoding]
        if not decoding and not prefilling:
            return
        if not self.batched:  # one job at a time: the running one is either decoding or prefilling
            decoding, prefilling = decoding[:1], prefilling[:1] if not decoding else []
        budget = self._chunk_size(len(decoding)) if prefilling else 0
        chunks = self._chunks(prefilling, budget) if budget else []
        threads = self.threads.for_step(len(decoding) if not chunks else 0)
        trial = threads != self.threads.current  # a step on another thread count: not the engine's usual speed
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        started = time.perf_counter()
        try:
            if self.batched:
                outs, chunk_logits = self.runner.forward_batch(
                    [(r.seat.slot, r.last) for r in decoding], [(r.seat.slot, chunk) for r, chunk in chunks]
                )
            elif decoding:
                outs, chunk_logits = [self.runner.forward([decoding[0].last])], []
            else:
                outs, chunk_logits = [], [self.runner.forward(chunks[0][1])]
        except Exception as exc:
            for running in [*decoding, *(r for r, _ in chunks)]:
                running.seat.cache.reset()  # its buffer is in an unknown state: never reused
                self._end(running, "error", exc, keep=False)
            return
        elapsed = time.perf_counter() - started
        if not trial:
            apart = 0  # chunks the runner computed as groups of their own (each with its own read of the weights)
            if self.batched and decoding:
                apart = self.runner.joins(len(decoding), [len(chunk) for _, chunk in chunks]).count(False)
            self._measure(elapsed, len(decoding), sum(len(chunk) for _, chunk in chunks), apart)
        if not chunks:
            self.threads.record(threads, len(decoding), elapsed)
        self.steps += 1
        size = len(decoding) + len(chunks)
        for running, logits in zip(decoding, outs, strict=True):
            running.seat.cache.extend([running.last])
            running.job.batch_sizes.append(size)
            self._choose(running, logits)
        for (running, chunk), logits in zip(chunks, chunk_logits, strict=True):
            running.seat.cache.extend(chunk)
            del running.feeding[: len(chunk)]
            if not running.feeding:
                if running.job.warm_only:
                    self._end(running, "length")
                else:
                    running.job.batch_sizes.append(size)
                    self._choose(running, logits)

    def _chunks(self, prefilling: list[_Running], budget: int) -> list[tuple[_Running, list[int]]]:
        """The prompt tokens of this step: ``budget`` of them, all from the first waiting prompt, or with
        ``share_prefill`` from every waiting prompt in shares of the budget proportional to what each
        has left, so that prompts that wait together finish in the same step and then decode together."""
        if not self.share_prefill or len(prefilling) == 1 or not self.batched:
            return [(prefilling[0], prefilling[0].feeding[:budget])]
        left = [len(running.feeding) for running in prefilling]
        if sum(left) <= budget:
            take = left
        else:
            take = [budget * n // sum(left) for n in left]
            behind = sorted(range(len(left)), key=lambda i: take[i] - left[i])  # the most left over first
            for i in behind[: budget - sum(take)]:  # what rounding down kept back: a token each
                take[i] += 1
        return [(running, running.feeding[:n]) for running, n in zip(prefilling, take, strict=True) if n]

    def _measure(self, elapsed: float, decoding: int, prefilled: int, apart: int = 0) -> None:
        """Running estimates of a decode-only step (per count of decoding rows: a step's cost grows with
        them) and of one more prefill token in a step: the step's time less its decoding rows' own, and
        less a one-row step for each chunk computed apart (its own read of the weights, paid whatever
        its size: counted against the chunk's tokens, it would shrink chunks to a token a step)."""
        if decoding and not prefilled:
            previous = self._decode_step_s.get(decoding)
            self._decode_step_s[decoding] = elapsed if previous is None else 0.7 * previous + 0.3 * elapsed
        elif prefilled:
            base = self._decode_step_s.get(decoding) if decoding else 0.0
            if base is None:  # a fixed chunk (prefill_step_tokens) beside rows never timed alone
                return
            fixed = apart * self._decode_step_s.get(1, 0.0)
            per_token = max(elapsed - base - fixed, 0.0) / prefilled
            if per_token > 0:
                previous = self._prefill_token_s
                self._prefill_token_s = per_token if previous is None else 0.7 * previous + 0.3 * per_token

    def _choose(self, running: _Running, logits: torch.Tensor) -> None:
        job = running.job
        token = job.sampler(logits)
        if token in job.stop_ids:
            self._end(running, "stop")
            return
        running.generated += 1
        job.events.put(("token", token, time.perf_counter()))
        if running.generated >= job.max_new_tokens:
            self._end(running, "length")
            return
        running.last = token

    def _end(self, running: _Running, reason: str, error: BaseException | None = None, *, keep: bool = True) -> None:
        with self._cond:
            if running in self._running:
                self._running.remove(running)
        seat = running.seat
        if keep:
            try:
                seat.cache.finish(running.job.boundaries)
            except Exception:  # a full disk, a failed store: the reply is not lost for it
                logger.exception("could not keep the finished sequence's keys and values")
                seat.cache.reset()
        seat.used = time.monotonic()
        self._idle.append(seat)
        running.job.events.put(("end", reason, error))

    def _close_all(self) -> None:
        """(Under the lock.) Every job ends ``closed``; a waiting call gets an error."""
        for running in list(self._running):
            self._running.remove(running)
            running.seat.cache.reset()  # its buffer may be mid-sequence: never kept
            running.job.events.put(("end", "closed", None))
        while self._waiting:
            self._waiting.popleft().events.put(("end", "closed", None))
        while self._calls:
            self._calls.popleft()[1].put((False, RuntimeError("the engine has stopped (the interpreter is exiting)")))

    def clear(self) -> None:
        """Forget the idle seats' buffers and every stored block not in use (on the engine's thread: use
        :meth:`call`); running generations keep theirs."""
        for seat in self._idle:
            seat.cache.reset()
        store = self.seats[0].cache.store
        if store is not None:
            store.clear()


_ENGINES: weakref.WeakSet[BatchEngine] = weakref.WeakSet()


@atexit.register
def _stop_engines() -> None:
    for engine in list(_ENGINES):
        engine.stop()
