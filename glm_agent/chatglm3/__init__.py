"""Everything that knows ChatGLM3's bytes: tokenizer, chat template, reply parser, the OpenAI mapping, checkpoints."""

from __future__ import annotations

from typing import Any

from glm_agent.chatglm3.parser import (
    ASSISTANT_TOKEN,
    CallFinished,
    CallNamed,
    Reply,
    ReplyStreamParser,
    ReplyText,
    Segment,
    StreamEvent,
    extract_code,
    parse_reply,
    parse_tool_call,
)
from glm_agent.chatglm3.prompts import (
    CHAT_SYSTEM,
    CODE_SYSTEM_EN,
    CODE_SYSTEM_ZH,
    MNT_DATA,
    TOOLS_SYSTEM,
    build_system_message,
    code_system_prompt,
    strip_upload_headers,
    upload_header,
)
from glm_agent.chatglm3.tokenizer import SPECIAL_TOKENS, ChatGLM3Tokenizer, format_system_content
from glm_agent.chatglm3.turns import PromptTurn, PromptView, prompt_view
from glm_agent.errors import ToolCallParseError

__all__ = [
    "ChatGLM3Tokenizer",
    "SPECIAL_TOKENS",
    "format_system_content",
    "parse_reply",
    "parse_tool_call",
    "extract_code",
    "Reply",
    "Segment",
    "ReplyStreamParser",
    "StreamEvent",
    "ReplyText",
    "CallNamed",
    "CallFinished",
    "ASSISTANT_TOKEN",
    "ToolCallParseError",
    "CHAT_SYSTEM",
    "TOOLS_SYSTEM",
    "CODE_SYSTEM_ZH",
    "CODE_SYSTEM_EN",
    "code_system_prompt",
    "build_system_message",
    "upload_header",
    "strip_upload_headers",
    "MNT_DATA",
    "prompt_view",
    "PromptView",
    "PromptTurn",
    "load_model",
    "convert_checkpoint",
]

_LAZY = {
    "load_model": "glm_agent.chatglm3.checkpoint",
    "convert_checkpoint": "glm_agent.chatglm3.checkpoint",
}


def __getattr__(name: str) -> Any:  # torch-heavy names import on first use
    from glm_agent.chatglm3 import parser

    if name in parser._RENAMED:  # renamed; the old names warn
        return getattr(parser, name)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'glm_agent.chatglm3' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
