"""Everything between a request's bytes and its prompt ids, run in a worker thread (never on the event loop).

Parsing, validation, the OpenAI → ChatGLM3 mapping and tokenization all cost time in proportion to the
request; the event loop only awaits the result, so ``/health`` and other clients keep being answered.
Before tokenizing, a cheap bound refuses a prompt sure to exceed the context: a token covers at most
``max_piece_bytes`` bytes of text, so a prompt of more than ``context × max_piece_bytes`` bytes cannot
fit. The tools' indented JSON (which grows with nesting) is rendered only up to that budget.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from glm_agent.chatglm3.openai_format import (
    FormatError,
    ToolChoice,
    chatglm3_tools,
    openai_to_chatglm3,
    resolve_tool_choice,
)
from glm_agent.chatglm3.tokenizer import ChatGLM3Tokenizer
from glm_agent.messages import Message, SystemMessage
from glm_agent.server._errors import APIError
from glm_agent.server._json import parse_json_object
from glm_agent.server._schemas import ChatRequest, CompletionRequest, Unsupported
from glm_agent.server._validation import check_tool_messages, check_tool_schemas, validate_body

__all__ = ["PreparedChat", "PreparedCompletion", "PromptBudget", "prepare_chat", "prepare_completion"]

#: the prompt budget when the context length is unknown (ChatGLM3's longest context, 128k)
UNKNOWN_CONTEXT_TOKENS = 131_072


class PromptBudget:
    """The most bytes a prompt that fits ``context`` tokens can have (tokens ≥ bytes / longest piece)."""

    def __init__(self, tokenizer: ChatGLM3Tokenizer, context: int | None) -> None:
        self.max_piece_bytes = tokenizer.max_piece_bytes
        self.context = context
        self.max_bytes = (context or UNKNOWN_CONTEXT_TOKENS) * self.max_piece_bytes

    def refuse(self, size: int, param: str) -> APIError:
        context = self.context or UNKNOWN_CONTEXT_TOKENS
        return APIError(
            400,
            f"the prompt has more than {size} bytes of text, so more than {size // self.max_piece_bytes} tokens "
            f"(a token covers at most {self.max_piece_bytes} bytes), but the model's context holds {context}; "
            "shorten the messages or the tools",
            code="context_length_exceeded",
            param=param,
        )


def _rendered_size(value: Any, budget: int) -> int:
    """Bytes of ``json.dumps(value, indent=4)``, counted only until they pass ``budget``."""
    size = 0
    for chunk in json.JSONEncoder(indent=4, ensure_ascii=False).iterencode(value):
        size += len(chunk.encode("utf-8"))
        if size > budget:
            break
    return size


def check_prompt_size(messages: Sequence[Message], budget: PromptBudget, param: str) -> None:
    """Refuse (400) messages whose text alone is more than the context can hold, without tokenizing."""
    size = 0
    for message in messages:
        size += len(message.metadata.encode("utf-8")) + len(message.content.encode("utf-8"))
        if isinstance(message, SystemMessage) and message.tools is not None:
            size += _rendered_size(message.tools, budget.max_bytes - size)
        if size > budget.max_bytes:
            raise budget.refuse(size, param)


@dataclass
class PreparedChat:
    body: ChatRequest
    choice: ToolChoice
    messages: list[Message]
    prompt_ids: list[int]


@dataclass
class PreparedCompletion:
    body: CompletionRequest
    prompt_ids: list[int]


def _checked(body: ChatRequest | CompletionRequest) -> None:
    try:
        body.check_supported()
    except Unsupported as exc:
        raise APIError(400, str(exc), param=exc.param) from None


def prepare_chat(raw: bytes, tokenizer: ChatGLM3Tokenizer, budget: PromptBudget) -> PreparedChat:
    """A chat request's body checked, mapped to ChatGLM3 messages and tokenized (or an ``APIError``)."""
    body = validate_body(parse_json_object(raw), ChatRequest)
    _checked(body)
    check_tool_messages(body.messages)
    try:
        tools = chatglm3_tools(body.tools)  # only the request's own: the client runs what it is given
        choice = resolve_tool_choice(tools, body.tool_choice)
        messages = openai_to_chatglm3(body.messages, choice.tools)
    except FormatError as exc:
        raise APIError(400, str(exc), param=exc.param) from None
    check_prompt_size(messages, budget, "messages")  # before the schema check: its work grows with the tools
    check_tool_schemas(body.tools)
    return PreparedChat(body, choice, messages, tokenizer.apply_chat_template(messages))


def prepare_completion(raw: bytes, tokenizer: ChatGLM3Tokenizer, budget: PromptBudget) -> PreparedCompletion:
    """A completion request's body checked and its prompt as ids (or an ``APIError``)."""
    body = validate_body(parse_json_object(raw), CompletionRequest)
    _checked(body)
    if isinstance(body.prompt, str):
        size = len(body.prompt.encode("utf-8"))
        if size > budget.max_bytes:
            raise budget.refuse(size, "prompt")
        return PreparedCompletion(body, [tokenizer.gmask_id, tokenizer.sop_id, *tokenizer.encode(body.prompt)])
    ids = cast(list[int], body.prompt)  # one prompt: _one_prompt unwrapped a batch of one
    bad = [i for i in ids if not 0 <= i < tokenizer.vocab_size]
    if bad:
        raise APIError(
            400, f"token id {bad[0]} is outside the vocabulary (0..{tokenizer.vocab_size - 1})", param="prompt"
        )
    return PreparedCompletion(body, list(ids))
