"""ChatGLM3 on local weights: transformers' native GLM model, streamed, with a prefix cache."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from glm_agent._sizes import parse_size
from glm_agent.engine import (
    DEFAULT_MAX_BATCH,
    DEFAULT_STEP_RATIO,
    BatchEngine,
    IncrementalDetokenizer,
    Job,
    KVStore,
    LeanGlmRunner,
    PrefixCache,
    PromptCache,
    Sampler,
    StopStrings,
    make_runner,
    model_fingerprint,
    weights_digest,
)
from glm_agent.errors import ContextLengthError, ModelError
from glm_agent.messages import MessageLike
from glm_agent.models.base import BaseChatModel, GenerationParams

if TYPE_CHECKING:
    import torch

    from glm_agent.chatglm3.tokenizer import ChatGLM3Tokenizer

logger = logging.getLogger(__name__)

__all__ = ["LocalModel", "GenerationStats", "GenerationStream", "DEFAULT_KV_CACHE_BYTES", "DEFAULT_PROMPT_CACHE_BYTES"]

#: the KV memory budget when none is given: 1 GiB holds ~37,000 tokens of ChatGLM3-6B (28 KiB a token in bf16)
DEFAULT_KV_CACHE_BYTES = 2**30
#: the prompt cache's size cap on disk when none is given
DEFAULT_PROMPT_CACHE_BYTES = 4 * 2**30
BLOCK_SIZE = 16  # positions a stored block holds: prefixes are reused in whole blocks
PROMPT_CACHE_ENV = "GLM_AGENT_PROMPT_CACHE"


@dataclass
class GenerationStats:
    """What one call did: how much of the prompt came from the cache, and where the time went."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    reused_from: str = ""  # where the reused tokens came from: "memory" (any conversation's), "disk" or ""
    prefill_tokens: int = 0
    output_ids: list[int] = field(default_factory=list)
    time_to_first_token: float = 0.0  # from the call: prompt building, prefill, first choice
    token_times: list[float] = field(default_factory=list)  # when each output id was chosen, from the call
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    finish_reason: str = ""  # "stop" (stop id or stop string), "length", or "closed"
    batch_sizes: list[int] = field(default_factory=list)  # sequences in the engine step that chose each token


class GenerationStream(Iterator[str]):
    """The text deltas of one generation and its :class:`GenerationStats` (final once exhausted or closed).

    :meth:`cancel` may be called from any thread: the generation leaves the engine at its next step
    (mid-prefill too) and the stream ends; :meth:`close` is for the thread that iterates it.
    """

    def __init__(
        self, texts: Generator[str, None, None], stats: GenerationStats, cancel: Callable[[], None] | None = None
    ) -> None:
        self._texts = texts
        self.stats = stats
        self._cancel = cancel

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel()

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        return next(self._texts)

    def close(self) -> None:
        self._texts.close()


class LocalModel(BaseChatModel):
    """Generates ChatGLM3 replies from a ``GlmForCausalLM`` and a :class:`ChatGLM3Tokenizer`.

    Keys and values are kept for every conversation: a prompt prefills only what no earlier
    prompt or reply computed, whichever conversation it came from (a radix tree of 16-token
    blocks, shared starts held once, least recently used blocks evicted first). Their memory,
    working buffer included, stays within ``kv_cache_bytes`` (default 1 GiB; an int or a size
    such as ``"2GiB"``; 0 keeps the last conversation only, in the working buffer). With ``prompt_cache_dir`` (or ``$GLM_AGENT_PROMPT_CACHE``) finished
    prefixes are also written to disk as safetensors, keyed by a fingerprint of the weights and
    settings, so a new process starts from them; ``prompt_cache_bytes`` caps the directory
    (default 4 GiB). ``prefix_cache=False`` turns all of this off; greedy output is the same
    either way. ``engine="transformers"`` keeps the last conversation only.

    Safe to call from many threads and tasks at once: an engine thread owns the weights and decodes
    up to ``max_batch`` generations together (default 8), one token each per step, each weight read
    once for all of them; more wait for a seat. A prompt that arrives while others decode is
    prefilled in chunks between their tokens, each step taking at most ``step_ratio`` times a
    decode-only step (default 2; ``prefill_step_tokens`` fixes the chunk instead); alone, a prompt
    prefills at full speed as before. Prompts that wait at once go in the order they came;
    ``share_prefill=True`` prefills them together in equal shares of each step instead, so they
    finish together and then decode together: a burst of prompts is through sooner (measured at the
    6B shape: see the README), and the first of them has its first token later. A sequence's tokens are the ones it gets alone (products whose
    rows are independent, attention per sequence). :meth:`engine_info` says how many run and wait;
    ``GenerationStats.batch_sizes`` the batch each token was chosen in. Context policy: a prompt that
    does not fit with ``max_new_tokens`` raises :class:`ContextLengthError`; nothing is cut.

    ``engine="auto"`` uses a lean forward over the model's weights with preallocated KV
    buffers; ``"transformers"`` calls the model's own forward. For speed the lean engine
    re-lays out the weights in place (same values and shapes, the model's forward still works:
    q/k/v become views of one matrix, and on CPU tall matrices are stored column-major);
    ``model.save_pretrained`` cannot write such a model, so pass ``relayout=False`` to keep the
    weights as loaded (slower CPU decoding) if you need to save it afterwards.
    """

    provider = "glm_agent"  # gen_ai.provider.name in traces

    def __init__(
        self,
        model: Any,
        tokenizer: ChatGLM3Tokenizer,
        *,
        name: str = "chatglm3-local",
        prefix_cache: bool = True,
        engine: str = "auto",
        relayout: bool = True,
        context_length: int | None = None,
        kv_cache_bytes: int | str | None = None,
        prompt_cache_dir: str | os.PathLike[str] | None = None,
        prompt_cache_bytes: int | str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        step_ratio: float = DEFAULT_STEP_RATIO,
        prefill_step_tokens: int | None = None,
        share_prefill: bool = False,
        **defaults: Any,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.context_length = int(context_length or getattr(model.config, "max_position_embeddings", None) or 8192)
        self.defaults = _params(defaults)
        self.stop_ids = frozenset(tokenizer.stop_ids)
        self._role_ids = frozenset(tokenizer.role_ids.values())
        budget = 0 if kv_cache_bytes in (0, "0") else parse_size(kv_cache_bytes or DEFAULT_KV_CACHE_BYTES)
        if prompt_cache_dir is None:
            prompt_cache_dir = os.environ.get(PROMPT_CACHE_ENV) or None
        if prefix_cache and prompt_cache_dir is not None:
            weights_digest(model)  # of the weights as loaded, before the engine re-lays them out
        runner = make_runner(model, engine, relayout=relayout)
        store = disk = None
        if prefix_cache and budget and isinstance(runner, LeanGlmRunner):
            store = KVStore(
                block_size=BLOCK_SIZE,
                budget_bytes=budget,
                block_bytes=BLOCK_SIZE * runner.kv_bytes_per_token,
                reserved=runner.buffer_bytes,
            )
            if prompt_cache_dir is not None:
                disk = PromptCache(
                    prompt_cache_dir,
                    fingerprint=model_fingerprint(model, layout=runner.kv_layout, tokenizer=tokenizer.fingerprint()),
                    block_size=BLOCK_SIZE,
                    max_bytes=parse_size(prompt_cache_bytes or DEFAULT_PROMPT_CACHE_BYTES),
                )
        elif prefix_cache and prompt_cache_dir is not None:
            logger.warning("the prompt cache needs the lean engine; engine=%r keeps the last conversation only", engine)
        self._engine = BatchEngine(
            runner,
            lambda view: PrefixCache(view, enabled=prefix_cache, store=store, disk=disk),
            max_batch=max_batch,
            step_ratio=step_ratio,
            prefill_step_tokens=prefill_step_tokens,
            share_prefill=share_prefill,
        )
        self.last_stats: GenerationStats | None = None

    @property
    def _cache(self) -> PrefixCache:
        """The first seat's prefix cache: what one conversation at a time uses."""
        return self._engine.first_cache

    @property
    def max_batch(self) -> int:
        """Sequences decoded together at most (1 on the transformers engine)."""
        return self._engine.max_batch

    def engine_info(self) -> dict[str, int]:
        """How many sequences the engine decodes now, how many wait, and ``max_batch``."""
        return self._engine.load()

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        dtype: str | torch.dtype | None = None,
        device: str | None = None,
        device_map: str | dict[str, Any] | None = None,
        allow_download: bool = False,
        quantize: str | None = None,
        group_size: int = 128,
        **kwargs: Any,
    ) -> LocalModel:
        """Tokenizer and weights from a checkpoint directory or hub id (see ``load_model``).

        ``quantize="int8"`` / ``"int4"`` (with ``group_size``) quantizes the linear layers while
        loading; the full-precision model is never in memory (dtype then defaults to bfloat16).
        """
        from glm_agent.chatglm3.checkpoint import load_model, resolve_checkpoint
        from glm_agent.chatglm3.tokenizer import ChatGLM3Tokenizer

        directory = resolve_checkpoint(path, allow_download=allow_download)
        tokenizer = ChatGLM3Tokenizer.from_pretrained(directory)  # fails fast, before reading weights
        model = load_model(
            directory, dtype=dtype, device=device, device_map=device_map, quantize=quantize, group_size=group_size
        )
        return cls(model, tokenizer, **kwargs)

    @property
    def prefix_cache(self) -> bool:
        return self._cache.enabled

    @property
    def kv_store(self) -> KVStore | None:
        """The keys and values kept in memory for every conversation (``None`` when off, or on the transformers engine)."""
        return self._cache.store

    @property
    def prompt_cache(self) -> PromptCache | None:
        """The prompt cache on disk, when one is set."""
        return self._cache.disk

    def cache_info(self) -> dict[str, int]:
        """What the KV cache holds: stored blocks and bytes, the working buffer, the budget, blocks evicted so far."""
        store = self._cache.store
        buffer = getattr(self._cache.runner, "buffer_bytes", None)
        info = {"buffer_bytes": int(buffer()) if buffer is not None else 0}
        if store is not None:
            info.update(
                blocks=store.blocks, stored_bytes=store.bytes, budget_bytes=store.budget_bytes, evicted=store.evicted
            )
        return info

    def reset_cache(self) -> None:
        """Drop the keys and values kept in memory (the next call prefills its whole prompt; the disk cache stays)."""
        self._engine.call(self._engine.clear)

    def warm(self, messages: Sequence[MessageLike]) -> GenerationStats:
        """Compute ``messages`` (typically the system prompt with the tools) ahead of the first request.

        Their keys and values go into the cache in memory and, when set, the prompt cache on disk.
        """
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=False)
        stats = GenerationStats(prompt_tokens=len(prompt), finish_reason="length")
        start = time.perf_counter()
        job = self._engine.submit(Job(prompt, Sampler(temperature=0.0), warm_only=True, boundaries=(len(prompt),)))
        for kind, *rest in iter(job.events.get, None):
            if kind == "prefilled":
                stats.reused_tokens, stats.reused_from, stats.prefill_tokens = rest
            elif kind == "end":
                if rest[1] is not None:
                    raise ModelError(f"the local model failed while warming: {rest[1]}") from rest[1]
                break
        stats.prefill_seconds = time.perf_counter() - start
        return stats

    # -- generation -------------------------------------------------------------------------
    def stream(self, messages: Sequence[MessageLike], **params: Any) -> GenerationStream:
        """Text deltas of the reply; their concatenation is the decoded reply, stop id excluded.

        The returned iterator's ``stats`` say what the call did (also ``last_stats``).
        """
        called_at = time.perf_counter()
        p = _params({**self.defaults.model_dump(), **params})
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        self._check_context(len(prompt), p.max_new_tokens)
        return self._stream(prompt, p, called_at, self._system_end(prompt))

    def _system_end(self, prompt: list[int]) -> tuple[int, ...]:
        """The length of the prompt's system turn (shared by every conversation with the same tools), if any:
        it ends at the next role token, which content cannot forge."""
        if self._cache.disk is None:
            return ()
        roles = self._role_ids
        first = next((i for i, token in enumerate(prompt) if token in roles), None)
        if first is None or prompt[first] != self.tokenizer.system_id:
            return ()
        end = next((i for i in range(first + 1, len(prompt)) if prompt[i] in roles), None)
        return () if end is None else (end,)

    def stream_ids(self, prompt_ids: Sequence[int], **params: Any) -> GenerationStream:
        """Continue a raw prompt given as token ids (the server's ``/v1/completions``); same path as ``stream``."""
        p = _params({**self.defaults.model_dump(), **params})
        prompt = [int(i) for i in prompt_ids]
        self._check_context(len(prompt), p.max_new_tokens)
        return self._stream(prompt, p, None, self._system_end(prompt))

    def _check_context(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if prompt_tokens + max_new_tokens > self.context_length:
            raise ContextLengthError(
                f"the prompt has {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}, which exceeds the model's "
                f"context of {self.context_length} tokens; shorten the conversation (drop old turns or long observations) "
                "or lower max_new_tokens",
                prompt_tokens=prompt_tokens,
                max_new_tokens=max_new_tokens,
                context_length=self.context_length,
            )

    def _stream(
        self, prompt: list[int], p: GenerationParams, called_at: float | None = None, boundaries: tuple[int, ...] = ()
    ) -> GenerationStream:
        stats = GenerationStats(prompt_tokens=len(prompt), finish_reason="closed")
        job = self._job(prompt, p, boundaries)
        return GenerationStream(self._generate(job, stats, called_at), stats, job.cancel)

    def _job(self, prompt: list[int], p: GenerationParams, boundaries: tuple[int, ...]) -> Job:
        sampler = Sampler(
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,
            repetition_penalty=p.repetition_penalty,
            seed=p.seed,
            history=prompt,
        )
        return Job(prompt, sampler, self.stop_ids, p.max_new_tokens, boundaries, stop_strings=list(p.stop))

    def _generate(self, job: Job, stats: GenerationStats, called_at: float | None) -> Generator[str, None, None]:
        self.last_stats = stats
        detok = IncrementalDetokenizer(self.tokenizer)
        stops = StopStrings(job.stop_strings)
        start = time.perf_counter()
        called_at = start if called_at is None else called_at
        stats.batch_sizes = job.batch_sizes
        self._engine.submit(job)
        decode_start = start
        ended = False
        try:
            while True:
                kind, *rest = job.events.get()
                ended = kind == "end"
                if kind == "prefilled":
                    stats.reused_tokens, stats.reused_from, stats.prefill_tokens = rest
                elif kind == "token":
                    token, chosen_at = rest
                    if not stats.output_ids:
                        stats.time_to_first_token = chosen_at - called_at
                        stats.prefill_seconds = chosen_at - start
                        decode_start = chosen_at
                    stats.token_times.append(chosen_at - called_at)
                    stats.output_ids.append(token)
                    text = stops.feed(detok.push(token))
                    if text:
                        yield text
                    if stops.stopped:
                        job.cancel("stop")  # the engine lets the sequence go at its next step
                        stats.finish_reason = "stop"
                        break
                else:  # "end"
                    reason, error = rest
                    if error is not None:
                        raise ModelError(f"the local model failed during generation: {error}") from error
                    if not stats.output_ids:
                        stats.time_to_first_token = time.perf_counter() - called_at
                        stats.prefill_seconds = time.perf_counter() - start
                    stats.finish_reason = reason
                    break
            stats.decode_seconds = time.perf_counter() - decode_start
            tail = stops.feed(detok.flush()) if not stops.stopped else ""
            tail += stops.flush()
            if tail:
                yield tail
        finally:
            if not ended:  # closed early, or a stop string: wait for the engine to let it go, so that
                job.cancel()  # the next call finds its keys and values in place
                while job.events.get()[0] != "end":
                    pass


def _params(values: dict[str, Any]) -> GenerationParams:
    try:
        return GenerationParams.of(values)
    except ValidationError as exc:
        raise ValueError(f"invalid generation parameters: {exc}") from None
