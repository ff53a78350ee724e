"""ChatGLM3 on local weights: transformers' native GLM model, streamed, with a prefix cache."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from glm_agent.errors import ContextLengthError, ModelError
from glm_agent.messages import MessageLike
from glm_agent.models._decoding import IncrementalDetokenizer, Sampler, StopStrings
from glm_agent.models._glm_runner import make_runner
from glm_agent.models._prefix_cache import PrefixCache
from glm_agent.models.base import BaseChatModel, GenerationParams

if TYPE_CHECKING:
    import torch

    from glm_agent.chatglm3.tokenizer import ChatGLM3Tokenizer

logger = logging.getLogger(__name__)

__all__ = ["LocalModel", "GenerationStats"]


@dataclass
class GenerationStats:
    """What one call did: how much of the prompt came from the cache, and where the time went."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefill_tokens: int = 0
    output_ids: list[int] = field(default_factory=list)
    time_to_first_token: float = 0.0  # from the call: prompt building, prefill, first choice
    token_times: list[float] = field(default_factory=list)  # when each output id was chosen, from the call
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    finish_reason: str = ""  # "stop" (stop id or stop string), "length", or "closed"


class LocalModel(BaseChatModel):
    """Generates ChatGLM3 replies from a ``GlmForCausalLM`` and a :class:`ChatGLM3Tokenizer`.

    The KV cache of the last prompt and reply is kept: the next call prefills only the tokens
    after the longest common prefix (``prefix_cache=False`` turns this off; greedy output is the
    same either way). One generation runs at a time per instance. Context policy: a prompt that
    does not fit with ``max_new_tokens`` raises :class:`ContextLengthError`; nothing is cut.

    ``engine="auto"`` uses a lean forward over the model's weights with preallocated KV
    buffers; ``"transformers"`` calls the model's own forward. For speed the lean engine
    re-lays out the weights in place (same values and shapes, the model's forward still works:
    q/k/v become views of one matrix, and on CPU tall matrices are stored column-major);
    ``model.save_pretrained`` cannot write such a model, so pass ``relayout=False`` to keep the
    weights as loaded (slower CPU decoding) if you need to save it afterwards.
    """

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
        **defaults: Any,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.context_length = int(context_length or getattr(model.config, "max_position_embeddings", None) or 8192)
        self.defaults = _params(defaults)
        self.stop_ids = frozenset(tokenizer.stop_ids)
        self._cache = PrefixCache(make_runner(model, engine, relayout=relayout), enabled=prefix_cache)
        self._lock = threading.Lock()
        self.last_stats: GenerationStats | None = None

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

    def reset_cache(self) -> None:
        """Drop the kept KV cache (the next call prefills its whole prompt)."""
        with self._lock:
            self._cache.reset()

    # -- generation -------------------------------------------------------------------------
    def stream(self, messages: Sequence[MessageLike], **params: Any) -> Iterator[str]:
        """Text deltas of the reply; their concatenation is the decoded reply, stop id excluded."""
        called_at = time.perf_counter()
        p = _params({**self.defaults.model_dump(), **params})
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        self._check_context(len(prompt), p.max_new_tokens)
        return self._stream(prompt, p, called_at)

    def stream_ids(self, prompt_ids: Sequence[int], **params: Any) -> Iterator[str]:
        """Continue a raw prompt given as token ids (the server's ``/v1/completions``); same path as ``stream``."""
        p = _params({**self.defaults.model_dump(), **params})
        prompt = [int(i) for i in prompt_ids]
        self._check_context(len(prompt), p.max_new_tokens)
        return self._stream(prompt, p)

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

    def _stream(self, prompt: list[int], p: GenerationParams, called_at: float | None = None) -> Iterator[str]:
        with self._lock:
            stats = GenerationStats(prompt_tokens=len(prompt), finish_reason="closed")
            self.last_stats = stats
            detok = IncrementalDetokenizer(self.tokenizer)
            stops = StopStrings(p.stop)
            sampler = Sampler(
                temperature=p.temperature,
                top_p=p.top_p,
                top_k=p.top_k,
                repetition_penalty=p.repetition_penalty,
                seed=p.seed,
                history=prompt,
            )
            cache = self._cache
            feeding: list[int] = []
            start = time.perf_counter()
            called_at = start if called_at is None else called_at
            try:
                feeding = cache.prepare(prompt)
                stats.reused_tokens = len(prompt) - len(feeding)
                stats.prefill_tokens = len(feeding)
                logits = self._forward(feeding)
                cache.extend(feeding)
                feeding = []
                stats.prefill_seconds = time.perf_counter() - start
                decode_start = time.perf_counter()
                while True:
                    token = sampler(logits)
                    stats.token_times.append(time.perf_counter() - called_at)
                    if not stats.output_ids:
                        stats.time_to_first_token = stats.token_times[0]
                    if token in self.stop_ids:
                        stats.finish_reason = "stop"
                        break
                    stats.output_ids.append(token)
                    text = stops.feed(detok.push(token))
                    if text:
                        yield text
                    if stops.stopped:
                        stats.finish_reason = "stop"
                        break
                    if len(stats.output_ids) >= p.max_new_tokens:
                        stats.finish_reason = "length"
                        break
                    feeding = [token]
                    logits = self._forward(feeding)
                    cache.extend(feeding)
                    feeding = []
                stats.decode_seconds = time.perf_counter() - decode_start
                tail = stops.feed(detok.flush()) if not stops.stopped else ""
                tail += stops.flush()
                if tail:
                    yield tail
            finally:
                if feeding:  # a forward pass was interrupted: its cache state is unknown
                    cache.reset()
                else:
                    cache.sync()

    def _forward(self, ids: list[int]) -> torch.Tensor:
        try:
            return self._cache.runner.forward(ids)
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"the local model failed during generation: {exc}") from exc


def _params(values: dict[str, Any]) -> GenerationParams:
    try:
        return GenerationParams.of(values)
    except ValidationError as exc:
        raise ValueError(f"invalid generation parameters: {exc}") from None
