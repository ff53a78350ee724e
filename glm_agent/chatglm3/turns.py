"""A conversation as the turns ChatGLM3 reads: role, metadata line, content, and tokens per turn.

What a prompt inspector shows (``glm-agent web``'s prompt view, logs, notebooks): the exact
text of each ``<|role|>`` turn as :meth:`ChatGLM3Tokenizer.apply_chat_template` encodes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from glm_agent.chatglm3.tokenizer import ChatGLM3Tokenizer, _role_metadata_content
from glm_agent.messages import MessageLike

__all__ = ["PromptTurn", "PromptView", "prompt_view"]

#: ``[gMASK]`` and ``sop`` open every prompt; a bare ``<|assistant|>`` asks for the reply.
PREFIX_TOKENS = 2
GENERATION_PROMPT_TOKENS = 1


@dataclass(frozen=True)
class PromptTurn:
    """One ``<|role|>metadata\\ncontent`` turn; ``tokens`` counts its role token too (None without a tokenizer)."""

    role: str
    metadata: str
    content: str
    tokens: int | None = None

    def header(self) -> str:
        """The turn's first line as the model reads it: ``<|assistant|>get_weather``."""
        return f"<|{self.role}|>{self.metadata}"


@dataclass(frozen=True)
class PromptView:
    """The turns of a prompt and its size against the model's context (``None`` where unknown)."""

    turns: list[PromptTurn]
    total_tokens: int | None
    context_length: int | None = None

    @property
    def tokens_left(self) -> int | None:
        if self.total_tokens is None or self.context_length is None:
            return None
        return self.context_length - self.total_tokens


def prompt_view(
    messages: Sequence[MessageLike],
    tokenizer: ChatGLM3Tokenizer | None = None,
    *,
    context_length: int | None = None,
    add_generation_prompt: bool = True,
) -> PromptView:
    """The turns of ``messages``; with a tokenizer, token counts that add up to ``apply_chat_template``'s length."""
    turns: list[PromptTurn] = []
    for message in messages:
        role, metadata, content = _role_metadata_content(message)
        tokens = len(tokenizer.encode_message(role, metadata, content)) if tokenizer is not None else None
        turns.append(PromptTurn(role, metadata, content, tokens))
    total = None
    if tokenizer is not None:
        total = PREFIX_TOKENS + sum(t.tokens or 0 for t in turns)
        total += GENERATION_PROMPT_TOKENS if add_generation_prompt else 0
    return PromptView(turns, total, context_length)
