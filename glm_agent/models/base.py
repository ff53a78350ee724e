"""The one small protocol every chat backend implements."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from glm_agent._thread_stream import ThreadStream
from glm_agent.messages import MessageLike

__all__ = ["ChatModel", "BaseChatModel", "GenerationParams"]


class GenerationParams(BaseModel):
    """Sampling parameters shared by all backends. ``temperature=0`` means greedy."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(1024, ge=1)
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.8, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, params: GenerationParams | dict[str, Any] | None = None, **overrides: Any) -> GenerationParams:
        base = params.model_dump() if isinstance(params, GenerationParams) else dict(params or {})
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


@runtime_checkable
class ChatModel(Protocol):
    """Streams the raw ChatGLM3 reply text (after the generation prompt, stop token removed)."""

    name: str

    def stream(self, messages: Sequence[MessageLike], **params: Any) -> Iterator[str]: ...

    def astream(self, messages: Sequence[MessageLike], **params: Any) -> AsyncIterator[str]: ...

    def generate(self, messages: Sequence[MessageLike], **params: Any) -> str: ...

    async def agenerate(self, messages: Sequence[MessageLike], **params: Any) -> str: ...


class BaseChatModel:
    """Defaults: ``generate`` joins ``stream``; ``astream`` runs ``stream`` in a worker thread.

    Closing the async iterator (or cancelling its task) closes the sync generator,
    which stops generation at the next token.
    """

    name: str = "model"

    def stream(self, messages: Sequence[MessageLike], **params: Any) -> Iterator[str]:
        raise NotImplementedError

    def stream_ids(self, prompt_ids: Sequence[int], **params: Any) -> Iterator[str]:
        """Continue a raw prompt given as token ids (``/v1/completions``); optional for backends."""
        raise NotImplementedError(f"{type(self).__name__} cannot continue a raw token-id prompt")

    def generate(self, messages: Sequence[MessageLike], **params: Any) -> str:
        return "".join(self.stream(messages, **params))

    async def agenerate(self, messages: Sequence[MessageLike], **params: Any) -> str:
        return "".join([d async for d in self.astream(messages, **params)])

    async def astream(self, messages: Sequence[MessageLike], **params: Any) -> AsyncIterator[str]:
        stream = ThreadStream(lambda: self.stream(messages, **params), name=f"{self.name}-stream")
        try:
            async for delta in stream:
                yield delta
        finally:
            stream.close()
